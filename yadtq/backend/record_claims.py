"""Claims of a batch's first tasks straight from their records (adapter layer, a part of
the backend).

A client rings the doorbells with a batch's id as soon as its first records are written,
before Kafka has taken the messages (``Client.map``): the woken workers claim the batch's
first queued tasks from their records, in submission order, rather than wait for the
messages to be produced, acknowledged and fetched (the first start came 15-45 ms into a
map on Tansu, up to 110 ms on Apache Kafka). Their Kafka messages, read later, are copies
whose claim skips them. A task whose limits need its message's arguments, or that this
worker does not serve, is left queued for its message.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis

from yadtq.backend.limit_store import limited_names
from yadtq.backend.moves import Claim
from yadtq.backend.parts import BackendPart
from yadtq.backend.records import (
    PAYLOAD_FIELDS,
    RECORD_SIG,
    message_from_payload,
    payload,
    record_signed,
    text,
)
from yadtq.backend.scripts import ClaimCall, ClaimTask
from yadtq.protocol import TaskMessage

BATCH_RING_PREFIX = "b-"  # a ring naming a batch: its id (task ids are bare hex)


class RecordClaims(BackendPart):
    """Claims of tasks read from their records rather than their messages."""

    def batch_head(
        self, batch_id: str, worker_id: str, served: Sequence[str], count: int,
        looked_past: int, now: float | None = None,
    ) -> list[tuple[TaskMessage, Claim, bool]]:
        """Claim up to ``count`` of the batch's first ``count + looked_past`` tasks that are
        still queued and served here (two round trips).

        Returns, for each task claimed, its message rebuilt from its record, the claim, and
        whether the record was written by a holder of the secret (``record_signed``).
        """
        ids = [text(i) for i in self.redis.lrange(self._keys.batch_tasks(batch_id), 0,
                                                   count + looked_past - 1)]
        if not ids or count < 1:
            return []
        now = time.time() if now is None else now
        call = ClaimCall(worker_id, now + self.config.lease_seconds, now, count,
                         [ClaimTask(task_id, batch_id) for task_id in ids], served,
                         need_message=limited_names())

        def read_records(pipe: redis.client.Pipeline) -> None:  # in the claim's round trip
            for task_id in ids:
                pipe.hmget(self._keys.task(task_id), *PAYLOAD_FIELDS, RECORD_SIG)

        replies, records = self._scripts.run(call, also=read_records)
        claimed = []
        for task_id, reply, values in zip(ids, replies, records, strict=True):
            claim = Claim.of(task_id, reply)
            if claim.attempt is not None:
                fields = {**payload(values[:-1]), RECORD_SIG: text(values[-1])}
                claimed.append((message_from_payload(task_id, claim.attempt, fields), claim,
                                record_signed(self.config.secret, task_id, fields)))
        return claimed
