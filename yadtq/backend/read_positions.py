"""How far the queue's topics are read (adapter layer), for readers outside the group.

The normal level's partitions are read by their owner in the consumer group, which
records with every claim how far it has claimed (``RedisBackend.claim_many``), so a
thief reads on from there (``broker.stealing``).

Every worker reads every partition of the high and low levels' topics
(``broker.level_lanes``), so no consumer group commits those reads: a worker records
here, per partition, the offset before which it claimed (or found claimed, or dropped)
every message, and a worker that starts reads on from there. Going back is harmless (a
claim skips a task already taken); going past an unclaimed message cannot happen, as a
worker records an offset only once all before it are done.
"""

from __future__ import annotations

from yadtq.backend.parts import BackendPart
from yadtq.backend.redis_errors import at_the_edge
from yadtq.priority import Priority


@at_the_edge
class ReadPositions(BackendPart):
    """Per topic: partition → the next offset not yet done."""

    def claimed(self) -> dict[int, int]:
        """The normal level's partitions → the offset up to which their owners claimed."""
        raw = self.redis.hgetall(self._keys.claimed_offsets)
        return {int(k): int(v) for k, v in raw.items()}

    def read(self, level: Priority) -> dict[int, int]:
        """Each partition's next offset to read (absent: from the start)."""
        raw = self.redis.hgetall(self._keys.level_offsets(level.value))
        return {int(k): int(v) for k, v in raw.items()}

    def record(self, level: Priority, offsets: dict[int, int]) -> None:
        """Record how far each partition is done (kept as long as the queue's topics)."""
        if offsets:
            self.redis.hset(self._keys.level_offsets(level.value), mapping=offsets)
