"""The queue's counters, as the scripts keep them (adapter layer, beside the backend).

``lua/lib/stats.lua`` moves them in the same step as the task states they count, so they
add up with the records, never reset when a worker restarts, and cost one read to report:
``q.stats()``, ``yadtq stats``, the metrics (``yadtq.metrics``) and the dashboard read
them here instead of scanning records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import redis

from yadtq.backend.keys import Keys
from yadtq.backend.records import text
from yadtq.status import COUNTERS, FINISHED

RECENT_BATCHES_KEPT = 1000  # the batches index keeps the newest this many


@dataclass(frozen=True)
class QueueStats:
    """A queue's counters at one moment.

    ``statuses`` has every status: for those a task leaves (blocked, scheduled, queued,
    processing) how many tasks are in it now; for the final ones how many outcomes were
    reached so far (a workflow's ``retry()`` runs a failed task again, its failure stays
    counted). ``outcomes`` splits the final ones by task name.
    """

    queue: str
    submitted: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)  # (task, status)
    retries: int = 0  # attempts that failed and were queued to run again
    requeued: int = 0  # queued again after an expired lease, a dead worker, a hand-back
    dead_lettered: int = 0  # ended because workers refused their message

    @property
    def finished(self) -> int:
        """Tasks that reached a final outcome."""
        return sum(self.statuses.get(status, 0) for status in FINISHED)


def parse_queue_stats(queue: str, fields: Mapping[bytes | str, bytes | str]) -> QueueStats:
    """The counters from the ``stats:<queue>`` hash's fields (see ``lua/lib/stats.lua``)."""
    statuses = dict.fromkeys(COUNTERS, 0)
    outcomes: dict[tuple[str, str], int] = {}
    plain: dict[str, int] = {}
    for raw_name, raw_value in fields.items():
        name = text(raw_name)
        value = int(raw_value)
        kind, _, rest = name.partition(":")
        if kind == "now":
            statuses[rest] = value
        elif kind == "done":
            status, _, task = rest.partition(":")
            outcomes[(task, status)] = value
            statuses[status] = statuses.get(status, 0) + value
        else:
            plain[name] = value
    return QueueStats(queue=queue, submitted=plain.get("submitted", 0), statuses=statuses,
                      outcomes=outcomes, retries=plain.get("retried", 0),
                      requeued=plain.get("requeued", 0),
                      dead_lettered=plain.get("dead_lettered", 0))


def read_queue_stats(client: redis.Redis, keys: Keys) -> QueueStats:
    """The queue's counters: one HGETALL."""
    return parse_queue_stats(keys.queue, client.hgetall(keys.stats))


def note_batch(pipe: redis.client.Pipeline, keys: Keys, batch_id: str, created_at: float
               ) -> None:
    """List a new batch in the queue's index of recent batches (newest kept)."""
    pipe.zadd(keys.batches, {batch_id: created_at})
    pipe.zremrangebyrank(keys.batches, 0, -RECENT_BATCHES_KEPT - 1)


def recent_batches(client: redis.Redis, keys: Keys, limit: int) -> list[tuple[str, float]]:
    """The newest ``limit`` batches still in Redis, newest first: (id, created at).

    Batches whose counters expired are dropped from the index as they are found.
    """
    listed = client.zrevrange(keys.batches, 0, max(limit, 1) - 1, withscores=True)
    with client.pipeline(transaction=False) as pipe:
        for batch_id, _ in listed:
            pipe.exists(keys.batch(text(batch_id)))
        alive = pipe.execute()
    gone = [batch_id for (batch_id, _), exists in zip(listed, alive, strict=True) if not exists]
    if gone:
        client.zrem(keys.batches, *gone)
    return [(text(batch_id), float(created)) for (batch_id, created), exists
            in zip(listed, alive, strict=True) if exists]
