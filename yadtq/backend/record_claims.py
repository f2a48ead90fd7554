"""Claims of tasks straight from their records (adapter layer, a part of the backend).

A doorbell's ring can name what it rings for, so that the woken worker claims it from
its Redis record rather than wait for its Kafka message to be produced, acknowledged and
fetched: a lone task (``Client.submit``), or a batch, whose first queued tasks are then
claimed in submission order (``Client.map`` rings with the batch's id as soon as its
first records are written; the first start came 15-45 ms into a map on Tansu, up to
110 ms on Apache Kafka). Their Kafka messages, read later, are copies whose claim skips
them; a lone task claimed while its client still waited for a claim has none
(``Client.submit``, the unsent set). A task whose limits need its message's arguments,
or that this worker does not serve, is left queued for its message.
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

    def named(self, task_id: str, worker_id: str, served: Sequence[str],
              now: float | None = None) -> tuple[TaskMessage | None, Claim, bool, bool]:
        """Claim a lone task by id: one round trip.

        Returns its message (None unless claimed), the claim, whether the record was
        written by a holder of the secret (``record_signed``), which is all a worker that
        requires signatures has to go by (no message was read), and whether its message
        was produced (or will be): a copy to drop when read.
        """
        [claimed] = self._claim([task_id], None, worker_id, served, 1, now)
        return claimed

    def batch_head(
        self, batch_id: str, worker_id: str, served: Sequence[str], count: int,
        looked_past: int, now: float | None = None,
    ) -> list[tuple[TaskMessage, Claim, bool]]:
        """Claim up to ``count`` of the batch's first ``count + looked_past`` tasks that are
        still queued and served here (two round trips): for each claimed, as ``named``."""
        ids = [text(i) for i in self.redis.lrange(self._keys.batch_tasks(batch_id), 0,
                                                   count + looked_past - 1)]
        if not ids or count < 1:
            return []
        return [(message, claim, signed) for message, claim, signed, _
                in self._claim(ids, batch_id, worker_id, served, count, now)
                if message is not None]

    def _claim(
        self, ids: list[str], batch_id: str | None, worker_id: str, served: Sequence[str],
        limit: int, now: float | None,
    ) -> list[tuple[TaskMessage | None, Claim, bool, bool]]:
        """Claim the first ``limit`` of ``ids`` still queued, reading their records in the
        claim's round trip: for each id, its message if claimed, the claim, whether its
        record is signed, and whether its message was produced (not ``unsent``)."""
        now = time.time() if now is None else now
        call = ClaimCall(worker_id, now + self.config.lease_seconds, now, limit,
                         [ClaimTask(task_id, batch_id) for task_id in ids], served,
                         need_message=limited_names())

        def read_records(pipe: redis.client.Pipeline) -> None:
            for task_id in ids:
                pipe.hmget(self._keys.task(task_id), *PAYLOAD_FIELDS, RECORD_SIG, "unsent")

        replies, records = self._scripts.run(call, also=read_records)
        claims = []
        for task_id, reply, values in zip(ids, replies, records, strict=True):
            claim = Claim.of(task_id, reply)
            if claim.attempt is None:
                claims.append((None, claim, False, True))
                continue
            *values, sig, unsent = values  # read before the claim, which forgets `unsent`
            fields = {**payload(values), RECORD_SIG: text(sig)}
            claims.append((message_from_payload(task_id, claim.attempt, fields), claim,
                           record_signed(self.config.secret, task_id, fields), unsent is None))
        return claims
