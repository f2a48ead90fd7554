"""The high and low priority levels' topics (Kafka adapter): read by every worker, outside
the consumer group.

A high task must start before the tasks already waiting, and a low one after them, yet
Kafka hands each partition to one group member, and kafka-python hands out what it
fetched in the order it fetched it: a high message sent to a busy worker's partition,
or fetched behind a megabyte of normal ones, would wait. So no group owns these levels:
every worker reads all of their partitions with a reader of its own (like the thief's,
``stealing``), and the claim in Redis decides who runs each task.

Each reader runs on a thread of its own. It reads again at once after a read that
brought messages; after one that brought none it waits for news of tasks sent at its
level (``backend.level_news``: a Redis channel that clients and workers publish to after
sending such tasks), or for a time that doubles while the level stays quiet, up to
``QUIET_WAIT_MAX`` (a read of Kafka costs kafka-python CPU even when nothing comes, and
the embedded broker answers an empty fetch at once, so a waiting fetch would spin). An
unused level so costs the worker's loop nothing. The reader hands what it reads over
through a bounded queue, and stops reading while ``READ_AHEAD`` records wait there. How far the
reads are done is kept in Redis (``backend.read_positions``), recorded only up to a
message before which every message was claimed, found taken or dropped, so a worker that
starts reads on from there and no task is passed over.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Protocol

from kafka import TopicPartition
from kafka.errors import KafkaError

from yadtq.broker.clients import make_reader
from yadtq.config import Config
from yadtq.errors import YadtqError
from yadtq.priority import Priority

logger = logging.getLogger(__name__)

READ_AHEAD = 100  # records read but not yet handed to the worker's loop, at most
FETCH_WAIT_MS = 1  # a fetch comes back at once, empty or not
POLL_MS = 5  # how long a read waits for the fetch's answer
QUIET_WAIT_MIN, QUIET_WAIT_MAX = 0.05, 5.0  # seconds between reads while none brings any
RECORD_INTERVAL = 0.5  # seconds between records of how far the reads are done
COUNT_INTERVAL = 5.0  # seconds between counts of the messages not read yet
RETRY_SECONDS = 0.5  # after a read that failed (Redis or Kafka away)
STOP_CHECK = 1.0  # seconds; how long a stopping worker may wait for a reader it could not wake


class OffsetStore(Protocol):
    """Where the queue's reads of the levels are done (``backend.read_positions``)."""

    def read(self, level: Priority) -> dict[int, int]: ...
    def record(self, level: Priority, offsets: dict[int, int]) -> None: ...


class Subscription(Protocol):
    """News of tasks sent at one level (``backend.level_news``)."""

    def wait(self, timeout: float) -> bool: ...
    def wake(self) -> None: ...
    def close(self) -> None: ...


class NewsSource(Protocol):
    def subscribe(self, level: Priority) -> Subscription: ...


class LevelLane:
    """This worker's reader of one level's topic, on a thread of its own."""

    def __init__(self, config: Config, client_id: str, level: Priority,
                 offsets: OffsetStore, news: NewsSource) -> None:
        """Raises:
            BrokerUnavailable: no broker answered within the connect timeout.
        """
        self.level = level
        self.topic = level.topic(config.tasks_topic)
        self._backlog = 0  # messages on the topic past the reads, as last counted
        self._name = client_id
        self._offsets = offsets
        self._news = news
        self._reader = make_reader(config, client_id=f"{client_id}-{level.value}",
                                   fetch_wait_ms=FETCH_WAIT_MS)
        self._records: queue.Queue[Any] = queue.Queue(READ_AHEAD)
        self._stop = threading.Event()
        self._subscription: Subscription | None = None  # the reader's, while it has one
        self._done: dict[int, int] = {}  # partition -> next offset, not yet recorded
        self._recorded_at = 0.0
        self._thread = threading.Thread(target=self._read, name=f"yadtq-{level.value}-lane",
                                        daemon=True)
        self._thread.start()

    @property
    def unread(self) -> int:
        """Messages of the level not handed to the worker's loop yet (for heartbeats): those
        read and waiting for it, counted now, and those not read yet, as last counted."""
        return self._backlog + self._records.qsize()

    def take(self, limit: int) -> list[Any]:
        """Up to ``limit`` of the records read, in order (never waits)."""
        taken: list[Any] = []
        while len(taken) < limit:
            try:
                taken.append(self._records.get_nowait())
            except queue.Empty:
                break
        return taken

    def done(self, partition: int, offset: int) -> None:
        """Every message of ``partition`` up to ``offset`` is claimed, taken or dropped."""
        self._done[partition] = offset + 1

    def record(self) -> None:
        """Record in Redis how far the reads are done, at most every ``RECORD_INTERVAL``."""
        if self._done and time.monotonic() - self._recorded_at > RECORD_INTERVAL:
            self._offsets.record(self.level, dict(self._done))
            self._done.clear()
            self._recorded_at = time.monotonic()

    def close(self) -> None:
        """Stop reading, record how far the reads are done, and close the reader."""
        self._stop.set()
        subscription = self._subscription
        if subscription is not None:
            subscription.wake()
        self._thread.join(2.0)
        self._recorded_at = 0.0
        try:
            self.record()
        finally:
            self._reader.close()

    # --- the reader's thread: the only one that touches the reader ----------------

    def _read(self) -> None:
        assigned: list[TopicPartition] = []
        counted_at = 0.0
        quiet = QUIET_WAIT_MIN
        subscription = None
        while not self._stop.is_set():
            try:
                if subscription is None:
                    subscription = self._subscription = self._news.subscribe(self.level)
                if not assigned:
                    assigned = self._assign()
                    continue
                if time.monotonic() - counted_at > COUNT_INTERVAL:
                    counted_at = time.monotonic()
                    self._backlog = self._count(assigned)
                read = self._reader.poll(timeout_ms=POLL_MS)
                for records in read.values():
                    self._backlog = max(0, self._backlog - len(records))
                    for record in records:
                        self._hand_over(record)
                if read or self._news_within(subscription, quiet):
                    quiet = QUIET_WAIT_MIN
                else:
                    quiet = min(2 * quiet, QUIET_WAIT_MAX)
            except (KafkaError, YadtqError) as exc:  # the next round tries again
                if subscription is not None:
                    subscription.close()
                    subscription = None
                logger.warning("Worker %s: reading the %s level failed: %s", self._name,
                               self.level.value, exc)
                self._stop.wait(RETRY_SECONDS)
        if subscription is not None:
            subscription.close()

    def _news_within(self, subscription: Subscription, seconds: float) -> bool:
        """Wait up to ``seconds`` for news of the level, in waits of ``STOP_CHECK`` at most
        (a stopping worker wakes its readers, :meth:`close`); True if news came."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if subscription.wait(min(left, STOP_CHECK)):
                return True
        return False

    def _hand_over(self, record: Any) -> None:
        while not self._stop.is_set():
            try:
                self._records.put(record, timeout=0.5)
                return
            except queue.Full:  # the worker's loop takes them as it has room
                continue

    def _assign(self) -> list[TopicPartition]:
        partitions = self._reader.partitions_for_topic(self.topic)
        if not partitions:
            self._stop.wait(RETRY_SECONDS)  # metadata not in yet
            return []
        start = self._offsets.read(self.level)
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._reader.assign(assigned)
        for tp in assigned:
            if tp.partition in start:
                self._reader.seek(tp, start[tp.partition])
            else:
                self._reader.seek_to_beginning(tp)
        return assigned

    def _count(self, assigned: list[TopicPartition]) -> int:
        ends = self._reader.end_offsets(assigned, timeout_ms=1000)
        positions = {tp: self._reader.position(tp, timeout_ms=0) for tp in ends}
        return sum(max(0, end - positions[tp]) for tp, end in ends.items()
                   if positions[tp] is not None)
