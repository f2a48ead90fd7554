"""The high and low priority levels' topics (Kafka adapter): read by every worker, outside
the consumer group.

A high task must start before the tasks already waiting, and a low one after them, yet
Kafka hands each partition to one group member, and kafka-python hands out what it
fetched in the order it fetched it: a high message sent to a busy worker's partition,
or fetched behind a megabyte of normal ones, would wait. So no group owns these levels:
every worker reads all of their partitions with readers of its own (like the thief's,
``stealing``), and the claim in Redis decides who runs each task. A worker looks at the
high level a few times a second while it has free slots, and at the low level as long
as it buffers fewer than ``READ_AHEAD`` low tasks (so it can tell when one has waited
too long). How far the reads are done is kept in Redis (``backend.read_positions``),
recorded only up to a message before which every message was claimed, found taken or
dropped, so a worker that starts reads on from there and no task is passed over.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from kafka import TopicPartition
from kafka.errors import KafkaError

from yadtq.broker.clients import make_reader
from yadtq.config import Config
from yadtq.priority import Priority

logger = logging.getLogger(__name__)

LOOK_INTERVAL = 0.05  # seconds between looks while the worker has free slots
READ_AHEAD = 100
READER_FETCH_WAIT_MS = 1  # an empty fetch comes back at once: a look never waits
RECORD_INTERVAL = 0.5  # seconds between records of how far the reads are done


class OffsetStore(Protocol):
    """Where the queue's reads of the levels are done (``backend.read_positions``)."""

    def read(self, level: Priority) -> dict[int, int]: ...
    def record(self, level: Priority, offsets: dict[int, int]) -> None: ...


class LevelLane:
    """This worker's reader of one level's topic."""

    def __init__(self, config: Config, client_id: str, level: Priority,
                 offsets: OffsetStore) -> None:
        """Raises:
            BrokerUnavailable: no broker answered within the connect timeout.
        """
        self.level = level
        self.topic = level.topic(config.tasks_topic)
        self._offsets = offsets
        self._reader = make_reader(config, client_id=f"{client_id}-{level.value}",
                                   fetch_wait_ms=READER_FETCH_WAIT_MS)
        self._assigned: list[TopicPartition] = []
        self._looked_at = 0.0
        self._done: dict[int, int] = {}  # partition -> next offset, not yet recorded
        self._recorded_at = 0.0

    def look(self, limit: int = READ_AHEAD) -> list[Any]:
        """Up to ``limit`` records sent since the last look (at most every
        ``LOOK_INTERVAL``).

        Raises:
            BackendUnavailable: Redis did not say where to start reading.
        """
        if limit <= 0 or time.monotonic() - self._looked_at < LOOK_INTERVAL:
            return []
        self._looked_at = time.monotonic()
        if not self._assigned and not self._assign():
            return []
        try:
            polled = self._reader.poll(timeout_ms=0, max_records=limit)
        except KafkaError as exc:  # the next look tries again
            logger.warning("reading the %s priority topic failed: %s", self.level.value, exc)
            return []
        return [record for records in polled.values() for record in records]

    def done(self, partition: int, offset: int) -> None:
        """Every message of ``partition`` up to ``offset`` is claimed, taken or dropped."""
        self._done[partition] = offset + 1

    def record(self) -> None:
        """Record in Redis how far the reads are done, at most every ``RECORD_INTERVAL``."""
        if self._done and time.monotonic() - self._recorded_at > RECORD_INTERVAL:
            self._offsets.record(self.level, dict(self._done))
            self._done.clear()
            self._recorded_at = time.monotonic()

    def waiting(self) -> int:
        """How many messages this worker has not read yet (Kafka's end offsets)."""
        if not self._assigned:
            return 0
        try:
            ends = self._reader.end_offsets(self._assigned, timeout_ms=200)
        except KafkaError:
            return 0
        positions = {tp: self._reader.position(tp, timeout_ms=0) for tp in ends}
        return sum(max(0, end - positions[tp]) for tp, end in ends.items()
                   if positions[tp] is not None)

    def close(self) -> None:
        """Record how far the reads are done, and close the reader."""
        self._recorded_at = 0.0
        try:
            self.record()
        finally:
            self._reader.close()

    def _assign(self) -> bool:
        partitions = self._reader.partitions_for_topic(self.topic)
        if not partitions:
            return False  # metadata not in yet: the next look asks again
        start = self._offsets.read(self.level)
        self._assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._reader.assign(self._assigned)
        for tp in self._assigned:
            if tp.partition in start:
                self._reader.seek(tp, start[tp.partition])
            else:
                self._reader.seek_to_beginning(tp)
        return True
