"""Every Redis key, channel and connection name yadtq uses (adapter layer), built here.

Keys built by hand in several modules drift apart; here each is a method of
:class:`Keys`, under the configurable prefix (DESIGN.md, "Redis schema").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NOT_IN_A_CONNECTION_NAME = re.compile(r"[^\w.:@/-]")  # Redis refuses spaces and newlines
NO_BATCH = "-"  # the batch id in the batch keys of a task in no batch (the scripts leave them)


@dataclass(frozen=True)
class Keys:
    """Every Redis key and channel of one queue, under one prefix."""

    prefix: str
    queue: str

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def task_history(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}:attempts"

    def batch_tasks(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:tasks"

    def children(self, task_id: str) -> str:
        """The tasks waiting on this one: child id -> "1" if it runs even if this fails."""
        return f"{self.prefix}:task:{task_id}:children"

    def workflow(self, workflow_id: str) -> str:
        return f"{self.prefix}:workflow:{workflow_id}"

    def workflow_tasks(self, workflow_id: str) -> str:
        return f"{self.prefix}:workflow:{workflow_id}:tasks"

    @property
    def workflows(self) -> str:
        """The queue's workflows by when they began (for ``Client.workflows()``)."""
        return f"{self.prefix}:workflows:{self.queue}"

    @property
    def blocked(self) -> str:
        """Tasks waiting on parents, by when they began to wait."""
        return f"{self.prefix}:blocked:{self.queue}"

    @property
    def unblocked(self) -> str:
        """Tasks whose parents all finished, queued, to be produced (a due set)."""
        return f"{self.prefix}:unblocked:{self.queue}"

    @property
    def settling(self) -> str:
        """Finished tasks whose children have not all heard of it yet (wide fan-outs)."""
        return f"{self.prefix}:settling:{self.queue}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{self.queue}:{worker_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers:{self.queue}"

    @property
    def leases(self) -> str:
        return f"{self.prefix}:leases:{self.queue}"

    @property
    def claimed_offsets(self) -> str:
        return f"{self.prefix}:claimed-offsets:{self.queue}"

    def level_news(self, level: str) -> str:
        """Channel: tasks were just sent at a priority level (``backend.level_news``)."""
        return f"{self.prefix}:level-news:{self.queue}:{level}"

    def level_offsets(self, level: str) -> str:
        """Hash: partition of a priority level's topic → next offset to read."""
        return f"{self.prefix}:level-offsets:{self.queue}:{level}"

    @property
    def stats(self) -> str:
        """Hash: the queue's counters, moved by the scripts (``lua/lib/stats.lua``)."""
        return f"{self.prefix}:stats:{self.queue}"

    @property
    def batches(self) -> str:
        """Sorted set: the queue's recent batches, id -> created at (``queue_stats``)."""
        return f"{self.prefix}:batches:{self.queue}"

    @property
    def retries(self) -> str:
        return f"{self.prefix}:retries:{self.queue}"

    @property
    def unsent(self) -> str:
        """Lone tasks whose client may not produce them (a due set: due when it is late)."""
        return f"{self.prefix}:unsent:{self.queue}"

    @property
    def scheduled(self) -> str:
        return f"{self.prefix}:scheduled:{self.queue}"

    @property
    def limits(self) -> str:
        """Set: the queue's rate and concurrency limits in use (``lua/lib/limits.lua``)."""
        return f"{self.prefix}:limits:{self.queue}"

    @property
    def limit_base(self) -> str:
        """What each limit's keys start with (``lua/lib/limits.lua`` adds the rest)."""
        return f"{self.prefix}:limit:{self.queue}:"

    @property
    def schedules(self) -> str:
        """Sorted set: each live schedule's name, scored by its next occurrence."""
        return f"{self.prefix}:schedules:{self.queue}"

    def schedule(self, name: str) -> str:
        return f"{self.prefix}:schedule:{self.queue}:{name}"

    def schedule_history(self, name: str) -> str:
        return f"{self.prefix}:schedule-history:{self.queue}:{name}"

    def outbox(self, call_id: str) -> str:
        """List: one script call's events until a replica has its writes
        (``durability``, ``lua/lib/events.lua``)."""
        return f"{self.prefix}:outbox:{self.queue}:{call_id}"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events:{self.queue}"

    def doorbell(self, partition: int) -> str:
        return f"{self.prefix}:doorbell:{self.queue}:{partition}"

    def blob(self, sha256: str) -> str:
        return f"{self.prefix}:blob:{sha256}"

    def connection(self, worker_id: str) -> str:
        """The name a worker gives its Redis connections (CLIENT SETNAME): while Redis
        lists one, the worker's process is alive."""
        return _NOT_IN_A_CONNECTION_NAME.sub(
            "_", f"yadtq-worker:{self.prefix}:{self.queue}:{worker_id}")
