"""Tasks nothing will ever run (adapter layer): their records are ended, not left queued.

A client whose messages Kafka did not take, and a worker that refuses a message (unsigned,
forged, invalid) and dead-letters it, both end the tasks' records through
``fail_queued.lua``, so no record waits ``queued`` for a message that will never come, and
their waiters learn why at once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis

from yadtq.backend.parts import PIPELINE_CHUNK, BackendPart
from yadtq.backend.records import PAYLOAD_FIELDS, RECORD_SIG, payload, record_signed, text
from yadtq.backend.redis_errors import at_the_edge
from yadtq.backend.scripts import FailQueuedCall, FailQueuedTask
from yadtq.protocol import TaskMessage
from yadtq.status import TaskStatus


@at_the_edge
class Unrunnable(BackendPart):
    """Ends the records of tasks whose messages never reached, or were refused by, workers."""

    def fail_undelivered(
        self,
        messages: Sequence[TaskMessage],
        error: str,
        batch_id: str | None = None,
        unwritten: int = 0,
    ) -> int:
        """Fail the still-queued tasks of a submit or map whose messages Kafka did not take.

        Nothing would ever run them. ``unwritten`` counts a batch's tasks that never
        got a record (the chunks after the failed one): they leave its counters, so
        the batch still adds up. Returns how many tasks were failed.
        """
        failed = 0
        first = True
        chunks = [messages[start:start + PIPELINE_CHUNK]
                  for start in range(0, len(messages), PIPELINE_CHUNK)] or [[]]
        for chunk in chunks:
            call = FailQueuedCall(time.time(), self.config.result_ttl, "BrokerUnavailable",
                                  error, "undelivered",
                                  [FailQueuedTask(m.id, m.batch) for m in chunk])
            shrink = None
            if first and batch_id is not None and unwritten:
                def shrink(pipe: redis.client.Pipeline) -> None:
                    pipe.hincrby(self._keys.batch(batch_id), "total", -unwritten)
                    pipe.hincrby(self._keys.batch(batch_id), "queued", -unwritten)
            first = False
            count, _ = self._scripts.run(call, also=shrink)
            failed += count
        return failed

    def fail_refused(self, task_id: str, task: str | None, error_type: str, reason: str, *,
                     authentic: bool, now: float | None = None) -> bool:
        """End the record of a task whose message a worker refused (dead-lettered), so
        its waiters learn why at once. Returns True if it was ended.

        Only a queued record ends, and one written by a holder of the secret only when
        the refused message was signed with it too (``authentic``): an unsigned or
        forged copy of a good task leaves the task to its good message. A task with no
        record (a plain message) gets a failed one.
        """
        status, batch, *values = self.redis.hmget(self._keys.task(task_id), "status", "batch",
                                                  *PAYLOAD_FIELDS, RECORD_SIG)
        if status is not None:
            fields = {**payload(values[:-1]), RECORD_SIG: text(values[-1])}
            if text(status) != TaskStatus.QUEUED.value or (
                    not authentic and record_signed(self.config.secret, task_id, fields)):
                return False
        now = time.time() if now is None else now
        call = FailQueuedCall(now, self.config.result_ttl, error_type, reason, "refused",
                              [FailQueuedTask(task_id, text(batch) or None, task or "?")])
        failed, _ = self._scripts.run(call)
        return failed > 0
