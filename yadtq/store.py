"""The task store (core layer): what futures and batches may ask of Redis, and nothing more.

The client builds one :class:`RedisTaskStore` over its backend and hands it to
every :class:`~yadtq.futures.TaskFuture` and :class:`~yadtq.batch.TaskBatch` it
makes. Handles hold this, not the client, so the dependency runs one way: the
client makes handles, handles read the store, and nothing in them reaches back
into the client (its producer, its event listener, its lifecycle).
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from yadtq import shipping
from yadtq.backend import RedisBackend
from yadtq.errors import TaskNotFound, YadtqError
from yadtq.routing import liveness


class RedisTaskStore:
    """One queue's tasks in Redis, as a :class:`~yadtq.futures.TaskStore` for its handles."""

    def __init__(self, backend: RedisBackend,
                 workflows: Callable[[str], Any] | None = None) -> None:
        """``workflows(id)``: the client's handle on a workflow (``Client.get_workflow``)."""
        self.backend = backend
        self._workflows = workflows

    def workflow(self, workflow_id: str) -> Any:
        """A handle on workflow ``workflow_id`` (see ``Client.get_workflow``)."""
        if self._workflows is None:
            raise RuntimeError("this store was made without a client to open workflows")
        return self._workflows(workflow_id)

    def task_record(self, task_id: str) -> dict[str, Any]:
        """The task's record from Redis, decoded.

        Raises:
            TaskNotFound: Redis holds no record for ``task_id``.
        """
        record = self.backend.task_record(task_id)
        if record is None:
            config = self.backend.config
            raise TaskNotFound(
                f"no task {task_id!r} in Redis at {config.redis_address} (prefix "
                f"{config.key_prefix!r}): it never existed, or it finished more than "
                f"{config.result_ttl:.0f} s ago and expired"
            )
        return record

    def task_records(self, task_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The tasks' records in order, None for a missing one."""
        return self.backend.task_records(task_ids)

    def batch_counts(self, batch_id: str) -> dict[str, int]:
        """The batch counters: total and one per status."""
        return self.backend.batch_counts(batch_id)

    def load_result(self, task_id: str, value: Any, leave_large: bool = False) -> Any:
        """A result as stored, made the value the task returned (pickled ones checked and
        loaded, fetching a large one from Redis unless ``leave_large``: see
        :func:`yadtq.shipping.load_result`).

        Raises:
            UntrustedCode: a pickled result this client's secret does not vouch for, or
                one that expired.
        """
        return shipping.load_result(task_id, value, self.backend.config.secret,
                                    self.backend.blob, leave_large)

    def cancel(self, task_id: str, batch_id: str | None) -> bool:
        """Cancel an unfinished task of batch ``batch_id``; False if it had already finished."""
        return self.backend.cancel(task_id, batch_id,
                                   requested_by=f"client on {socket.gethostname()}") is not None

    def no_worker_hint(self) -> str:
        """The hint of :func:`no_worker_hint` for this store's queue."""
        return no_worker_hint(self.backend)


def no_worker_hint(backend: RedisBackend) -> str:
    """The likely reason a wait timed out, when it is that no live worker serves the queue.

    Asked only once a wait has timed out, so waiting costs nothing; when Redis cannot
    say, it adds nothing rather than hide the timeout behind another error.
    """
    now = time.time()
    try:
        statuses = Counter(liveness(record, now) for record in backend.workers())
    except YadtqError:
        return ""
    if statuses["alive"]:
        return ""
    queue = backend.config.queue
    seen = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    return (f"; no live worker serves queue {queue!r} ({seen or 'none has sent a heartbeat'}): "
            f"start one with `python -m worker_node --queue {queue}` and the same YADTQ_* "
            "settings as this client")
