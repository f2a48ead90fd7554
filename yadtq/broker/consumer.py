"""The worker's side of the tasks topic (Kafka adapter): take, mark claimed, commit.

A :class:`TaskConsumer` is one member of the queue's consumer group, which reads
the normal priority level's topic (``yadtq.priority``); the high and low levels' are
read by every worker outside the group (``level_lanes``). It polls up to 100 messages
ahead into a local buffer (``read_ahead``: highest level first, no level starved).
With every slot busy it pauses its partitions and polls only to stay in the group. It
commits, every half second, the offsets of what the worker marked claimed (never of
what is only buffered), and it reads other members' partitions of the normal level for
the worker to steal from (``yadtq.broker.stealing``).
The worker sees only :class:`Delivery` objects and partition numbers, so
another consumer model (Kafka share groups, KIP-932) can be another class with
the same methods.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from yadtq.broker.clients import make_consumer, partition_count
from yadtq.broker.delivery import Delivery, decode
from yadtq.broker.group_leaving import close_consumer
from yadtq.broker.level_lanes import LevelLane, NewsSource, OffsetStore
from yadtq.broker.read_ahead import ReadAhead
from yadtq.broker.stealing import Stealer
from yadtq.config import Config
from yadtq.errors import YadtqError
from yadtq.priority import LEVELS, Priority, level_of_topic

logger = logging.getLogger(__name__)

READ_AHEAD = 100  # messages polled ahead: one poll feeds many claims, oldest first
POLL_MS = 20  # a poll returns as soon as records arrive; this is how long it looks when none do
LOW_ONLY_POLL_MS = 10  # with only low tasks buffered, how long to look for normal ones
JOIN_POLL_MS = 200  # a group join completes over polls this long
POLL_RETRY_SECONDS = 0.5  # after a poll that failed
GROUP_POLL_INTERVAL = 0.1  # seconds; with every slot busy, a poll only serves the group
COMMIT_INTERVAL = 0.5  # seconds; a claim, not the offset, is what keeps a task from running twice
COUNT_INTERVAL = 5.0  # seconds between counts of what waits at each level (for heartbeats)
COUNT_TIMEOUT_MS = 200  # a count Kafka does not answer at once is skipped
STEAL_BACKOFF_MIN, STEAL_BACKOFF_MAX = 0.05, 5.0  # seconds between looks that find nothing
VIEW_REFRESH = 0.25  # seconds; while slots are busy, how often to look at others' partitions
VIEW_MAX_AGE = 0.5  # seconds; a take that shows them never goes by an older look
BATCH_ARRIVAL = 0.2  # seconds after a batch's ring its messages may still be on their way


class TaskConsumer:
    """One worker's membership of the queue's consumer group, used from one thread.

    The worker calls :meth:`take` when it has free slots, :meth:`hold` when it
    has none, :meth:`claimed` for what it claimed in Redis, and :meth:`commit`
    once a loop. ``on_assignment`` is called from that thread after a poll
    that brought a new assignment (never from kafka-python's callbacks, in which
    nothing may block).
    """

    def __init__(
        self,
        config: Config,
        *,
        client_id: str,
        on_assignment: Callable[[], None],
        claimed_up_to: Callable[[], dict[int, int]] | None,
        level_offsets: OffsetStore | None,
        level_news: NewsSource | None = None,
        stopping: threading.Event,
    ) -> None:
        """``claimed_up_to``: each partition's next unclaimed offset (from Redis), for
        stealing; None turns stealing off. ``level_offsets``: where the queue's reads of
        the high and low levels are done, ``level_news`` where news of their tasks comes;
        None leaves those levels unread.
        ``stopping`` cuts a retry's wait short.

        Raises:
            BrokerUnavailable: no broker answered within the connect timeout.
        """
        self.config = config
        self._name = client_id
        self._on_assignment = on_assignment
        self._stopping = stopping
        self.partitions: list[int] = []  # this member's partitions of the tasks topic
        self.topic_partitions = 0  # how many the topic has
        self._assignment_news = False  # set in kafka-python's callback, reported after the poll
        self._buffer = ReadAhead(config.tasks_topic, config.priority_starvation * 1000)
        self._paused = False
        self._polled_at = 0.0
        self._drained = False  # the last poll brought less than it could: Kafka had no more
        self._awaited: set[int] = set()  # partitions yet to deliver a rung batch's messages
        self._batch_rung_at = float("-inf")  # monotonic: the last batch's ring
        self._claimed_through: dict[TopicPartition, int] = {}  # next offset to commit
        self._commit_due = False
        self._last_commit = 0.0
        # Tasks waiting for this worker at each level: buffered, or in Kafka after what
        # it fetched (read by the heartbeat thread; replaced whole, never changed).
        self.waiting: dict[str, int] = {}
        self._counted_at = 0.0
        self._consumer = make_consumer(config, client_id=client_id,
                                       on_assign=self._on_assign, on_revoke=self._on_revoke)
        # The high and low levels' readers, by topic (``level_lanes``).
        self._lanes = {} if level_offsets is None or level_news is None else {
            lane.topic: lane for lane in (
                LevelLane(config, client_id, level, level_offsets, level_news)
                for level in (Priority.HIGH, Priority.LOW))}
        self._stealer = None if claimed_up_to is None else Stealer(config, client_id,
                                                                   claimed_up_to)
        self._steal_backoff = 0.0
        self._next_steal_at = 0.0
        self._viewed_at = 0.0  # when others' partitions were last looked at (0: not shown)
        self._seen: dict[tuple[int, int], Delivery] = {}  # the last look's, decoded once
        # partition -> offset below which the view shows nothing: what this worker's
        # claims passed over there is claimed already, though its owner may not know yet
        self._passed: dict[int, int] = {}
        self._taken: dict[str, int] = {}  # topic -> deliveries taken, not claimed or given back
        self._out_foreign: set[tuple[int, int]] = set()  # others' taken so, by place

    # --- taking ------------------------------------------------------------

    def take(self, count: int, wait: bool = True, everywhere: bool = False,
             one_level: bool = False) -> list[Delivery]:
        """Up to ``count`` deliveries, the next to run first; looks at the high level,
        and polls the group's topics when nothing is buffered.

        ``wait``: let the poll wait a moment for messages to arrive (False when
        the caller expects them already there). While the group is forming the
        poll is longer: a join completes only over polls. ``everywhere``: take from
        what waits in other members' partitions too (``foreign`` deliveries, which
        the worker claims but does not mark claimed), the oldest first. ``one_level``:
        only of the first one's priority level.
        """
        self._resume()
        if self._lanes and self.partitions:
            self._look_at_levels()
        if not self._buffer:
            # No waiting for ours while others' wait to be taken.
            wait = wait and not (everywhere and self._buffer.shows_foreign())
            self._poll(POLL_MS if wait else 0) if self.partitions else self._poll(JOIN_POLL_MS)
        elif self.awaiting and (room := READ_AHEAD - self._buffer.waiting().get(
                Priority.NORMAL.rank, 0)) > 0:
            self._poll(0, room)  # what the rest of a rung batch's partitions have, up to
            # the read-ahead: what it leaves in Kafka stays for a worker that joins
        elif not self._buffer.holds(Priority.NORMAL.rank):
            # Only low tasks here: a normal one Kafka has goes first, so ask it (briefly).
            self._poll(LOW_ONLY_POLL_MS)
        if not everywhere:
            if self._viewed_at:
                self._forget_view()
        elif time.monotonic() - self._viewed_at > VIEW_MAX_AGE:
            # Back from idle: with tasks of its own the worker starts on them at once (the
            # next wait for a slot looks around); with none, what waits elsewhere is all.
            self._look_around() if not self._buffer else self._forget_view()
        taken = self._buffer.take(count, one_level=one_level)
        self._out(taken, 1)
        return taken

    @property
    def drained(self) -> bool:
        """The last poll brought fewer messages than it could take: what Kafka had for
        this worker's partitions is all read (more comes with a doorbell's ring)."""
        return self._drained

    @property
    def since_poll(self) -> float:
        """Seconds since Kafka was last polled."""
        return time.monotonic() - self._polled_at

    def expect_batch(self) -> None:
        """A batch's ring: its messages are on their way to this worker's partitions.

        Until each of them has delivered (at most ``BATCH_ARRIVAL``), a take polls though
        tasks are buffered, and :meth:`hold` leaves the partitions fetching. Apache Kafka
        answers a waiting fetch as soon as one of them has messages; the buffer's tasks
        then ran first while older ones waited in the others (issue 24: a worker ran one
        partition's twenty tasks in 550 ms while the twenty oldest started late).
        """
        self._awaited = set(self.partitions)
        self._batch_rung_at = time.monotonic()

    @property
    def batch_arriving(self) -> bool:
        """A batch rang less than ``BATCH_ARRIVAL`` ago: its messages may be on their way."""
        return time.monotonic() < self._batch_rung_at + BATCH_ARRIVAL

    @property
    def awaiting(self) -> bool:
        """Some partition of this worker's has not yet delivered a rung batch's messages."""
        return bool(self._awaited) and self.batch_arriving

    def hold(self, look_around: bool = False) -> None:
        """Every slot is busy: pause the partitions and poll only to stay in the group
        (unless a rung batch is still on its way: :meth:`expect_batch`); ``look_around``:
        meanwhile keep the view of others' partitions fresh."""
        if look_around and time.monotonic() - self._viewed_at > VIEW_REFRESH:
            self._look_around()
        if self.awaiting:
            return  # the next take polls for the rest
        if not self._paused:
            self._consumer.pause(*self._consumer.assignment())
            self._paused = True
        if self.since_poll > GROUP_POLL_INTERVAL:
            self._poll(0)  # takes part in a rebalance; paused partitions return nothing

    def claimed(self, deliveries: Iterable[Delivery]) -> None:
        """Mark deliveries as claimed in Redis (or dead-lettered): their offsets may be
        committed. Foreign ones are their owners' to commit; looks at others'
        partitions no longer fetch them, nor what came before them."""
        deliveries = list(deliveries)
        self._out(deliveries, -1)
        for delivery in deliveries:
            if delivery.foreign:
                self._passed[delivery.partition] = max(
                    self._passed.get(delivery.partition, 0), delivery.offset + 1)
                continue
            lane = self._lanes.get(delivery.topic)
            if lane is not None:
                lane.done(delivery.partition, delivery.offset)
                continue
            self._claimed_through[TopicPartition(delivery.topic, delivery.partition)] = \
                delivery.offset + 1
            self._commit_due = True

    def give_back(self, deliveries: list[Delivery]) -> None:
        """Deliveries taken but not claimed: they go next again."""
        self._out(deliveries, -1)
        self._buffer.give_back(deliveries)

    def _out(self, deliveries: list[Delivery], change: int) -> None:
        """Count this worker's deliveries taken and not yet claimed or given back: they
        still wait (a slot may claim them later, ``yadtq.worker.next_up``); others' are
        kept out of the view meanwhile (the next look would show them twice)."""
        for delivery in deliveries:
            if delivery.foreign and change > 0:
                self._out_foreign.add((delivery.partition, delivery.offset))
            elif delivery.foreign:
                self._out_foreign.discard((delivery.partition, delivery.offset))
            else:
                self._taken[delivery.topic] = self._taken.get(delivery.topic, 0) + change

    def commit(self, now: bool = False) -> None:
        """Commit what was claimed, at most every ``COMMIT_INTERVAL`` unless ``now``.

        Only claimed deliveries count, not buffered ones: a worker that dies
        with messages in its buffer leaves them to the partition's next owner.
        """
        if time.monotonic() - self._counted_at > COUNT_INTERVAL:
            self._count_waiting()
        for lane in self._lanes.values():
            lane.record()
        if not self._commit_due:
            return
        if not now and time.monotonic() - self._last_commit < COMMIT_INTERVAL:
            return
        offsets = {tp: OffsetAndMetadata(offset, "", -1)
                   for tp, offset in self._claimed_through.items()
                   if tp.partition in self.partitions}
        self._commit_due = False
        if not offsets:
            return
        self._last_commit = time.monotonic()
        try:
            if now:
                self._consumer.commit(offsets)
            else:
                self._consumer.commit_async(offsets, callback=self._on_commit)
        except (CommitFailedError, KafkaError) as exc:
            self._on_commit(None, exc)

    # --- stealing ----------------------------------------------------------

    def steal(self, oldest_first: bool = False) -> list[Delivery] | None:
        """Task messages waiting in other members' partitions, best to steal first
        (``oldest_first``: the oldest, else the newest of the longest wait lists).

        None when not looking: stealing is off, the group is forming, or it is
        the backoff after looks whose messages the worker could not claim
        (:meth:`stole`, which the worker calls after every look).

        Raises:
            BackendUnavailable: Redis did not say how far the partitions are claimed.
        """
        if self._stealer is None or not self.partitions:
            return None
        if time.monotonic() < self._next_steal_at:
            return None
        deliveries = [delivery for delivery in map(self._decode, self._stealer.take(
            set(self.partitions), self.topic_partitions, oldest_first, self._passed))
            if delivery.message is not None]
        if oldest_first:
            deliveries.sort(key=lambda delivery: delivery.order)
        return deliveries

    def steal_due_in(self) -> float | None:
        """Seconds until stealing may look again (0: now); None while it does not look."""
        if self._stealer is None or not self.partitions:
            return None
        return max(0.0, self._next_steal_at - time.monotonic())

    def stole(self, started: int) -> None:
        """Report how many stolen tasks the worker started: none makes the next look
        wait longer (up to 5 s), so an idle worker mostly sleeps on its doorbells."""
        if started:
            self._steal_backoff = 0.0
        else:
            self._steal_backoff = min(max(2 * self._steal_backoff, STEAL_BACKOFF_MIN),
                                      STEAL_BACKOFF_MAX)
        self._next_steal_at = time.monotonic() + self._steal_backoff

    def _look_around(self) -> None:
        """Show the buffer what waits in other members' partitions now (one fetch)."""
        if self._stealer is None or not self.partitions:
            return
        try:
            waiting = self._stealer.look(set(self.partitions), self.topic_partitions,
                                         self._passed)
        except YadtqError as exc:  # Redis did not say how far they are claimed: the
            # maintenance thread warns of Redis being away, once; their owners run them
            logger.debug("Worker %s: cannot look at other partitions: %s", self._name, exc)
            waiting = []
        # A fetch may bring some partitions and not others: the others' last look stays
        # (less what this worker's claims passed over), or their oldest tasks would wait
        # for their owners alone.
        fetched = {records[0].partition for records in waiting if records}
        seen, self._seen = self._seen, {
            (partition, offset): delivery for (partition, offset), delivery
            in self._seen.items() if partition not in fetched
            and partition not in self.partitions and offset >= self._passed.get(partition, 0)}
        for record in (record for records in waiting for record in records):
            where = record.partition, record.offset
            self._seen[where] = seen.get(where) or decode(record, self.config, foreign=True)
        self._buffer.show_foreign(sorted((d for where, d in self._seen.items()
                                          if d.message is not None
                                          and where not in self._out_foreign),
                                         key=lambda d: (d.partition, d.offset)))
        self._viewed_at = time.monotonic()

    def _forget_view(self) -> None:
        self._buffer.forget_foreign()
        self._seen, self._viewed_at = {}, 0.0

    def busy(self) -> None:
        """The worker started tasks of its own: steal at once when it is idle again."""
        self._next_steal_at = self._steal_backoff = 0.0

    # --- leaving -----------------------------------------------------------

    def close(self) -> None:
        """Commit what was claimed and leave the group (its partitions move on at once, but
        see ``group_leaving`` for Tansu)."""
        self.commit(now=True)
        try:
            close_consumer(self._consumer, self._name)
        except KafkaError as exc:
            logger.warning("Worker %s: leaving the group failed: %s", self._name, exc)
        if self._stealer is not None:
            self._stealer.close()
        for lane in self._lanes.values():
            try:
                lane.close()
            except YadtqError as exc:  # Redis away: the next worker reads some again
                logger.warning("Worker %s: could not record the %s level's reads: %s",
                               self._name, lane.level.value, exc)

    # --- inside ------------------------------------------------------------

    def _decode(self, record: Any) -> Delivery:
        return decode(record, self.config)

    def _poll(self, timeout_ms: int, max_records: int | None = None) -> None:
        max_records = READ_AHEAD if max_records is None else max_records
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:  # a failed rebalance or fetch: the next poll retries it
            logger.warning("Worker %s: polling Kafka failed (%s); retrying", self._name, exc)
            self._stopping.wait(POLL_RETRY_SECONDS)
            return
        self._polled_at = time.monotonic()
        if self._assignment_news:
            self._report_assignment()
        self._drained = sum(map(len, polled.values())) < max_records
        if self._awaited:
            self._awaited.difference_update(tp.partition for tp, records in polled.items()
                                            if records)
        for partition, records in polled.items():
            self._buffer.add(partition.topic, partition.partition,
                             [self._decode(r) for r in records])

    def _look_at_levels(self) -> None:
        """Buffer what the high and low levels' readers brought, up to ``READ_AHEAD``
        tasks a level. An undecodable message is dead-lettered by the worker whose
        partition of the normal level has its number; the others drop it (every worker
        reads it)."""
        buffered = self._buffer.waiting()
        for lane in self._lanes.values():
            for record in lane.take(READ_AHEAD - buffered.get(lane.level.rank, 0)):
                delivery = self._decode(record)
                if delivery.message is None and delivery.partition not in self.partitions:
                    lane.done(delivery.partition, delivery.offset)
                else:
                    self._buffer.add(delivery.topic, delivery.partition, [delivery])

    def _count_waiting(self) -> None:
        """Count what waits at each level: buffered here, or in this worker's partitions
        beyond its position (their end offsets, asked of Kafka: a busy worker does not
        fetch, so its last fetch is no guide)."""
        self._counted_at = time.monotonic()
        by_rank = self._buffer.waiting()
        for topic, taken in self._taken.items():
            rank = level_of_topic(topic, self.config.tasks_topic).rank
            by_rank[rank] = by_rank.get(rank, 0) + taken
        assigned = list(self._consumer.assignment())
        try:
            ends = self._consumer.end_offsets(assigned, timeout_ms=COUNT_TIMEOUT_MS) \
                if assigned else {}
        except KafkaError:  # the next count asks again
            return
        for tp, end in ends.items():
            position = self._consumer.position(tp, timeout_ms=0)  # None until first fetched
            if position is not None:
                rank = level_of_topic(tp.topic, self.config.tasks_topic).rank
                by_rank[rank] = by_rank.get(rank, 0) + max(0, end - position)
        for lane in self._lanes.values():
            rank = lane.level.rank
            by_rank[rank] = by_rank.get(rank, 0) + lane.unread
        self.waiting = {level.value: by_rank.get(level.rank, 0) for level in LEVELS}

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            # Not just what was paused then: kafka-python keeps a kept partition paused
            # across a rebalance.
            self._consumer.resume(*self._consumer.paused())

    def _on_commit(self, _offsets: Any, result: Any) -> None:
        if isinstance(result, Exception):
            # A redelivered copy of a claimed task will be skipped.
            logger.warning("Worker %s: offset commit failed (%s); claims still hold",
                           self._name, result)

    # kafka-python calls these two from its network thread, in the middle of a poll:
    # they only note the new assignment. The read-ahead buffer is kept: a message in it
    # from a partition now someone else's is still claimed at most once, and kafka-python
    # keeps its position in a partition this worker keeps, so dropping it would skip it.

    def _on_assign(self, assigned: set[Any]) -> None:
        # The same partition numbers of every level's topic (the range assignor).
        self.partitions = sorted({tp.partition for tp in assigned})
        self._assignment_news = True

    def _on_revoke(self, _revoked: set[Any]) -> None:
        self.partitions = []

    def _report_assignment(self) -> None:
        """Log a new assignment and learn the topic's partition count (after the poll)."""
        self._assignment_news = False
        self._forget_view()  # what was foreign may be this worker's now
        total = partition_count(self._consumer, self.config.tasks_topic)
        self.topic_partitions = total
        if not total:
            logger.info("Worker %s: %s has no partitions in this worker's metadata yet; the "
                        "group rebalances once it has", self._name, self.config.tasks_topic)
        elif not self.partitions:
            logger.warning(
                "Worker %s: got no partitions of %s: the group has more members than its %d "
                "partitions, so this worker idles; create the topic with more partitions",
                self._name, self.config.tasks_topic, total,
            )
        else:
            logger.info("Worker %s: assigned partitions %s of %d", self._name,
                        self.partitions, total)
        self._on_assignment()
