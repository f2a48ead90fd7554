"""Putting back what a Redis failover broke (adapter layer, a part of the backend).

A failover keeps what the promoted replica had: writes the old primary took but had not
passed on are gone. Each script's writes go or stay together, so records, queue counters
and leases still agree; what can break is what spans several writes: a batch's counters
(written beside its tasks), and a claim whose Kafka offset its worker had already
committed (the task is ``queued`` again, and no message will bring it to a worker). One
worker repairs both once per new server (``worker/failover_repair.py``); the default
durability needs it, ``replicated`` makes it a no-op.
"""

from __future__ import annotations

from yadtq.backend.due_sets import Retries
from yadtq.backend.failover_calls import RecountBatchCall
from yadtq.backend.parts import PIPELINE_CHUNK, BackendPart, chunks
from yadtq.backend.queue_stats import RECENT_BATCHES_KEPT
from yadtq.backend.records import text
from yadtq.backend.redis_errors import at_the_edge
from yadtq.protocol import TaskMessage
from yadtq.status import TaskStatus

REPAIR_HOLD = 300  # seconds one worker holds a server's repair (the others skip it)


@at_the_edge
class Failover(BackendPart):
    """The server's identity, and the repairs a new one needs."""

    def run_id(self) -> str:
        """The server's run id: a new one means a restart or a failover."""
        return str(self.redis.info("server").get("run_id", ""))

    def claim_repair(self, run_id: str, worker: str) -> bool:
        """True for the one worker that repairs after the server ``run_id`` took over."""
        key = f"{self._keys.prefix}:repair:{self._keys.queue}:{run_id}"
        return bool(self.redis.set(key, worker, nx=True, ex=REPAIR_HOLD))

    def recount_batches(self) -> int:
        """Set the recent batches' counters from their records; returns how many changed."""
        listed = self.redis.zrevrange(self._keys.batches, 0, RECENT_BATCHES_KEPT - 1)
        changed = 0
        for batch_id in listed:
            changed += self._scripts.run(RecountBatchCall(text(batch_id)))[0] > 0
        return changed

    def stranded(self) -> list[TaskMessage]:
        """The messages of queued tasks no worker holds and no due set will produce: each
        may be one whose claim the failover lost after its offset was committed. Some may
        still have their message in Kafka; the copy sent again is then skipped by claim."""
        queued: list[str] = []
        for _, keys in chunks(self.redis.scan_iter(f"{self._keys.prefix}:task:*",
                                                   count=PIPELINE_CHUNK)):
            ids = [name[len(self._keys.prefix) + 6:] for name in map(text, keys)
                   if name.count(":") == self._keys.prefix.count(":") + 2]
            with self.redis.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hget(self._keys.task(task_id), "status")
                    pipe.zscore(self._keys.leases, task_id)
                    pipe.zscore(self._keys.retries, task_id)
                    pipe.zscore(self._keys.unblocked, task_id)
                    pipe.zscore(self._keys.unsent, task_id)
                replies = pipe.execute()
            queued += [task_id for i, task_id in enumerate(ids)
                       if text(replies[5 * i]) == TaskStatus.QUEUED.value
                       and all(reply is None for reply in replies[5 * i + 1:5 * i + 5])]
        return Retries(self.config, self.redis, self._scripts, self._keys).messages(queued)
