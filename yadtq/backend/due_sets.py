"""Tasks waiting in Redis for their time (adapter layer): retries and scheduled tasks.

Both wait in a sorted set of the queue, scored by when they are due, and leave it the same
way: any worker takes what is due (``take_due.lua``, each taken entry held rather than
removed), produces it, and only then forgets the entry, so a worker that dies in between
leaves it to be taken again.

- ``retries:<queue>``: failed attempts waiting out their backoff, already ``queued``.
- ``unblocked:<queue>``: tasks whose parents all finished (workflows), already ``queued``;
  the worker whose outcome readied them holds them while it produces them itself.
- ``unsent:<queue>``: lone tasks, already ``queued``, whose client waits a moment for a
  worker to claim one from its record before it produces its message (``yadtq.waking``);
  claimed meanwhile, it needs none. Due ``UNSENT_GRACE`` after it was written, on Redis's
  clock: only a client that died in that moment leaves one for a worker to produce.
- ``scheduled:<queue>``: tasks submitted with a countdown or an ETA, written ``scheduled``
  with their due time on Redis's clock (``enqueue.lua``). Nothing is on Kafka for them, so
  no worker holds one and no delay can be redelivered early; a due one is moved
  ``scheduled -> queued`` (``release.lua``) before it is produced.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from yadtq.backend.due_scripts import (
    ForgetSentCall,
    ProduceUnsentCall,
    ReleaseCall,
    ReleaseTask,
    TakeDueCall,
)
from yadtq.backend.parts import BackendPart
from yadtq.backend.records import PAYLOAD_FIELDS, message_from_payload, payload, text
from yadtq.backend.redis_errors import at_the_edge
from yadtq.protocol import TaskMessage
from yadtq.status import TaskStatus

HOLD = 30.0  # seconds a taken entry waits before another worker may take it again
UNSENT_GRACE = 10.0  # seconds a lone task's client has to produce it before a worker does


@at_the_edge
class _DueSet(BackendPart):
    """One of the queue's due sets: take what is due, forget what was sent."""

    due_set = ""  # the Keys property naming the set


    def take_due(self, now: float | None = None, limit: int = 100) -> list[str]:
        """Ids now due, held for this caller to produce. ``now`` None judges by Redis's
        clock, the one clock every worker shares."""
        (taken, _), _ = self._scripts.run(TakeDueCall(self.due_set, now, HOLD, limit))
        return taken

    def sent(self, task_ids: Sequence[str]) -> None:
        """Forget entries once their tasks are on the topic (or no longer wait)."""
        if task_ids:
            self.redis.zrem(getattr(self._keys, self.due_set), *task_ids)


@at_the_edge
class Retries(_DueSet):
    """Failed attempts waiting out their backoff (due times on the worker's clock)."""

    due_set = "retries"

    def messages(self, task_ids: Sequence[str]) -> list[TaskMessage]:
        """The messages to produce for these tasks, in one round trip; none of those that no
        longer wait (cancelled meanwhile, or produced by another worker and claimed)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hmget(self._keys.task(task_id), "status", "attempt", *PAYLOAD_FIELDS)
            records = pipe.execute()
        return [message_from_payload(task_id, int(attempt), payload(values))
                for task_id, (status, attempt, *values) in zip(task_ids, records, strict=True)
                if text(status) == TaskStatus.QUEUED.value]

    def message(self, task_id: str) -> TaskMessage | None:
        """The message to produce for one task, or None if it no longer waits."""
        found = self.messages([task_id])
        return found[0] if found else None


@at_the_edge
class Unblocked(Retries):
    """Tasks whose parents all finished, queued and waiting to be produced (read back as
    retries are)."""

    due_set = "unblocked"


@at_the_edge
class Unsent(Retries):
    """Lone tasks whose client may not produce them, due on Redis's clock if it does not."""

    due_set = "unsent"

    def producing(self, task_id: str) -> bool:
        """Forget the guard of a lone task its client is about to produce; False when it
        no longer waits (claimed from its record meanwhile): then it needs no message."""
        produce, _ = self._scripts.run(ProduceUnsentCall(task_id))
        return produce


@at_the_edge
class ScheduledTasks(_DueSet):
    """Tasks submitted to run later, due on Redis's clock."""

    due_set = "scheduled"

    def sent(self, task_ids: Sequence[str]) -> None:
        """Forget entries once their tasks are on the topic, but not of those that wait
        again: claimed meanwhile over a limit, and put back due anew (``forget_sent.lua``)."""
        if task_ids:
            self._scripts.run(ForgetSentCall(task_ids))

    def release(self, task_ids: Sequence[str], worker_id: str, now: float | None = None
                ) -> list[TaskMessage]:
        """Move due tasks ``scheduled -> queued``; returns the messages to produce (also of
        tasks a worker released before it died), none of cancelled ones."""
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hmget(self._keys.task(task_id), "attempt", "batch", *PAYLOAD_FIELDS)
            records = pipe.execute()
        found = [(task_id, record) for task_id, record in zip(task_ids, records, strict=True)
                 if record[0] is not None]
        if not found:
            return []
        call = ReleaseCall(time.time() if now is None else now, worker_id,
                           [ReleaseTask(task_id, text(record[1]) or None)
                            for task_id, record in found])
        verdicts, _ = self._scripts.run(call)
        return [message_from_payload(task_id, int(record[0]), payload(record[2:]))
                for (task_id, record), produce in zip(found, verdicts, strict=True) if produce]

    def due_at(self, task_ids: Sequence[str]) -> list[float | None]:
        """When each task is due, from the scheduled set; None if not (or no longer) in it."""
        return self.redis.zmscore(self._keys.scheduled, list(task_ids)) if task_ids else []
