"""Tasks that run later (adapter layer): the scheduled set and its moves.

A task submitted with a countdown or an ETA is written ``scheduled`` with its due time
(``enqueue.lua``, on Redis's clock) and put in the queue's scheduled set; nothing is
on Kafka for it, so no worker holds it and no delay can be redelivered early. Every
worker's maintenance takes what is due (``take_due.lua``, judged on Redis's clock,
each taken entry held rather than removed), moves it ``scheduled -> queued``
(``release.lua``), produces it and only then forgets the entry: a worker that dies
in between leaves the entry to be taken again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis

from yadtq.backend.keys import Keys
from yadtq.backend.records import PAYLOAD_FIELDS, message_from_payload, payload, text
from yadtq.backend.redis_errors import at_the_edge
from yadtq.backend.scripts import ReleaseCall, ReleaseTask, Scripts, TakeDueCall
from yadtq.config import Config
from yadtq.protocol import TaskMessage

HOLD = 30.0  # seconds a taken entry waits before another worker may take it again


@at_the_edge
class ScheduledTasks:
    """The queue's scheduled set: take what is due, release it to the queue, forget it."""

    def __init__(self, config: Config, client: redis.Redis, scripts: Scripts, keys: Keys
                 ) -> None:
        self.config = config
        self.redis = client
        self._scripts = scripts
        self._keys = keys

    def take_due(self, now: float | None = None, limit: int = 100) -> list[str]:
        """Ids of scheduled tasks now due, held for this caller to produce. ``now`` None
        judges by Redis's clock, the one clock every worker shares (tests pass one)."""
        taken, _ = self._scripts.run(TakeDueCall("scheduled", now, HOLD, limit))[0]
        return taken

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

    def sent(self, task_ids: Sequence[str]) -> None:
        """Forget entries once their tasks are on the topic (or no longer wait)."""
        if task_ids:
            self.redis.zrem(self._keys.scheduled, *task_ids)

    def due_at(self, task_ids: Sequence[str]) -> list[float | None]:
        """When each task is (or was) due, from the scheduled set; None if not in it."""
        return self.redis.zmscore(self._keys.scheduled, list(task_ids)) if task_ids else []
