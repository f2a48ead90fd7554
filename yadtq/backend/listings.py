"""Bounded reads for views of a queue (adapter layer): a page of a batch, a few fields of
some tasks, several batches' counters, the tasks the workers hold.

A view that refreshes every second must cost a handful of commands however large a
batch grows, so each read here names how much it reads (a page, a list of ids) and
sends it in one pipelined round trip; none reads a whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from yadtq.backend.parts import BackendPart
from yadtq.backend.records import text
from yadtq.backend.redis_errors import at_the_edge

ROW_FIELDS = ("status", "task", "index", "attempt", "worker", "error_type", "error",
              "queued_at", "started_at", "finished_at", "batch", "workflow")


@at_the_edge
class Listings(BackendPart):
    """Paged and bounded reads, each one round trip, for views that refresh often."""

    def batch_page(self, batch_id: str, start: int, count: int) -> tuple[int, list[str]]:
        """How many tasks the batch lists, and the ids of ``count`` of them from ``start``."""
        return self._page(self._keys.batch_tasks(batch_id), start, count)

    def workflow_page(self, workflow_id: str, start: int, count: int) -> tuple[int, list[str]]:
        """How many tasks the workflow lists, and the ids of ``count`` of them from ``start``."""
        return self._page(self._keys.workflow_tasks(workflow_id), start, count)

    def _page(self, key: str, start: int, count: int) -> tuple[int, list[str]]:
        with self.redis.pipeline(transaction=False) as pipe:
            length, ids = pipe.llen(key).lrange(key, start, start + count - 1).execute()
        return int(length), [text(i) for i in ids]

    def task_rows(self, task_ids: Sequence[str], fields: Sequence[str] = ROW_FIELDS
                  ) -> list[dict[str, str] | None]:
        """``fields`` of each task ("" where unset; None for a task with no record)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hmget(self._keys.task(task_id), *fields)
            found = pipe.execute()
        return [None if all(v is None for v in values)
                else dict(zip(fields, map(text, values), strict=True)) for values in found]

    def batches(self, batch_ids: Sequence[str]) -> list[dict[str, float] | None]:
        """Each batch's counters and ``created_at`` (None for one Redis no longer holds)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in batch_ids:
                pipe.hgetall(self._keys.batch(batch_id))
            found = pipe.execute()
        return [{text(k): float(v) for k, v in raw.items()} if raw else None for raw in found]

    def held(self, limit: int) -> list[tuple[str, str, str]]:
        """(task id, worker, task name) of up to ``limit`` tasks under a lease, soonest
        expiry first: what the workers run now."""
        ids = [text(i) for i in self.redis.zrange(self._keys.leases, 0, limit - 1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hmget(self._keys.task(task_id), "worker", "task")
            found = pipe.execute()
        return [(task_id, text(worker), text(task))
                for task_id, (worker, task) in zip(ids, found, strict=True)]
