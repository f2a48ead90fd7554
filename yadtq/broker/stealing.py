"""Work stealing's reads (Kafka adapter): tasks waiting in other workers' partitions.

Kafka gives whole partitions to workers, so with long-tail tasks one worker can
sit on a backlog while the others idle. An idle worker therefore reads ahead in
the other partitions with a separate, group-less consumer: from the offset up
to which each partition's owner has claimed (recorded in Redis with every
claim; the group's committed offsets are not asked of the broker, because an
offset fetch from outside the group upsets the embedded broker's rebalances)
it fetches what is waiting and offers the newest messages of the longest wait
lists first, the ones their owners would reach last.
The worker claims them through the same atomic Redis claim as its own, so
each task still runs once; when the owner reaches a stolen message, its claim
finds the task taken and skips it. The stealer never commits an offset. While tasks
are long, the same look shows the worker what waits elsewhere, so that a free slot
takes the queue's oldest task (``read_ahead``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError

from yadtq.broker.clients import make_reader
from yadtq.config import Config

logger = logging.getLogger(__name__)

READ_AHEAD = 200
READER_FETCH_WAIT_MS = 1  # the embedded broker answers an empty fetch after about this long
READ_TIMEOUT_MS = 5  # waiting messages come back at once; this only bounds an empty look


class Stealer:
    """Finds messages waiting in partitions this worker does not own."""

    def __init__(
        self, config: Config, client_id: str, claimed_up_to: Callable[[], dict[int, int]]
    ) -> None:
        self.config = config
        self._claimed_up_to = claimed_up_to
        # A look must be short: while it lasts, the thief does not hear its doorbells.
        self._reader = make_reader(config, client_id=f"{client_id}-stealer",
                                          fetch_wait_ms=READER_FETCH_WAIT_MS)

    def take(self, own: set[int], total: int, oldest_first: bool = False,
             passed: dict[int, int] | None = None) -> list[Any]:
        """Records waiting in foreign partitions, best to steal first.

        One fetch covers every foreign partition. The longest wait list comes
        first (ties in random order, so that two thieves seldom pick the same
        one), newest record first within each list: what its owner would reach
        last. ``oldest_first`` (while tasks are long): each partition's in offset order,
        for the caller to sort by when they were submitted, as the owners take theirs.
        ``passed``: as for :meth:`look`.
        """
        waiting = self.look(own, total, passed)
        if oldest_first:  # each partition's in offset order: the caller sorts them decoded
            return [record for records in waiting for record in records]
        random.shuffle(waiting)
        waiting.sort(key=len, reverse=True)
        return [record for records in waiting for record in reversed(records)]

    def look(self, own: set[int], total: int, passed: dict[int, int] | None = None
             ) -> list[list[Any]]:
        """Each foreign partition's records not yet claimed by its owner, in offset order
        (one fetch; none if it fails); ``passed``: where this worker's claims found them
        claimed already, further than their owners recorded (the look starts there).

        Raises:
            BackendUnavailable: Redis did not say how far the partitions are claimed.
        """
        foreign = [p for p in range(total) if p not in own]
        if not foreign:
            return []
        committed = self._claimed_up_to()
        for partition, offset in (passed or {}).items():
            committed[partition] = max(committed.get(partition, 0), offset)
        partitions = [TopicPartition(self.config.tasks_topic, p) for p in foreign]
        self._reader.assign(partitions)
        for partition in partitions:
            self._reader.seek(partition, committed.get(partition.partition, 0))
        try:
            fetched = self._reader.poll(timeout_ms=READ_TIMEOUT_MS,
                                        max_records=READ_AHEAD)
        except KafkaError as exc:
            logger.debug("stealer: read-ahead failed: %s", exc)
            return []
        return [[r for r in records if r.offset >= committed.get(partition.partition, 0)]
                for partition, records in fetched.items()]

    def close(self) -> None:
        """Close the reader."""
        self._reader.close()
