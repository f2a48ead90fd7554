"""The worker's read-ahead buffer (Kafka adapter): which polled task goes next.

Deliveries wait here, decoded once, until the worker has slots for them. Each
partition's deliveries leave in offset order, so committing up to the last one taken
never skips one. Otherwise the next to go is:

- the highest priority level's (``yadtq.priority``), and within a level the partition
  whose next task was submitted first (``Delivery.order``): tasks run in the order they
  were submitted, not one partition after another;
- except that no level starves: while a task of a level below the highest has waited
  (since Kafka received it) longer than the starvation bound, at least one pick in
  ``STARVED_SHARE`` goes to such a task, the lowest level's oldest first. A share, not
  every pick: a 100,000-task low map, all of it past the bound, must not take every slot
  from normal and high work.

While the worker's tasks are long, the buffer also shows what waits in the other
workers' partitions (a fresh look now and then, ``yadtq.broker.stealing``), mixed
into the same order: a free slot then takes the queue's oldest task, whoever's
partition holds it, as one shared queue would. Those are not counted as this
worker's (its heartbeat's waiting counts, :meth:`holds`); the claim decides who runs
them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from yadtq.broker.delivery import Delivery
from yadtq.priority import level_of_topic

STARVED_SHARE = 4  # at least one pick in this many goes to a starved task, if any


class ReadAhead:
    """Polled deliveries not yet taken, the next to run first."""

    def __init__(self, tasks_topic: str, starvation_ms: float) -> None:
        self._tasks_topic = tasks_topic
        self._starvation_ms = starvation_ms
        # (rank, topic, partition, foreign): one partition's deliveries, in offset order
        self._queues: dict[tuple[int, str, int, bool], deque[Delivery]] = {}
        self._counts: dict[int, int] = {}  # rank -> deliveries buffered at that level
        self._since_starved_pick = 0  # picks since a starved task was last picked

    def add(self, topic: str, partition: int, deliveries: list[Delivery]) -> None:
        if deliveries:
            rank = level_of_topic(topic, self._tasks_topic).rank
            self._queues.setdefault((rank, topic, partition, False), deque()).extend(deliveries)
            self._counts[rank] = self._counts.get(rank, 0) + len(deliveries)

    def show_foreign(self, deliveries: Iterable[Delivery]) -> None:
        """Replace what is shown of other workers' partitions by a fresh look (each
        partition's deliveries in offset order)."""
        self.forget_foreign()
        for delivery in deliveries:
            self._queues.setdefault(self._key(delivery), deque()).append(delivery)

    def forget_foreign(self) -> None:
        """Show nothing of other workers' partitions (tasks turned short, or the
        partitions moved)."""
        for key in [k for k in self._queues if k[3]]:
            del self._queues[key]

    def give_back(self, deliveries: list[Delivery]) -> None:
        """Put taken deliveries that were not claimed back in front, in their order."""
        for delivery in reversed(deliveries):
            key = self._key(delivery)
            self._queues.setdefault(key, deque()).appendleft(delivery)
            if not delivery.foreign:
                self._counts[key[0]] = self._counts.get(key[0], 0) + 1

    def take(self, count: int, now_ms: float | None = None, one_level: bool = False
             ) -> list[Delivery]:
        """Up to ``count`` deliveries, the next to run first; ``one_level``: only of the
        first one's level (the rest may have to wait for another level's, still in Kafka)."""
        now_ms = time.time() * 1000 if now_ms is None else now_ms
        starved_before = now_ms - self._starvation_ms
        taken: list[Delivery] = []
        level = None  # the rank of what was taken
        while len(taken) < count and self._queues:
            starved = None
            if self._since_starved_pick >= STARVED_SHARE - 1:
                starved = self._starved(starved_before)
            first = starved or min(self._queues,
                                   key=lambda k: (k[0], self._queues[k][0].order))
            if one_level and taken and first[0] != level:
                break
            level = first[0]
            self._since_starved_pick = 0 if starved else self._since_starved_pick + 1
            waiting = self._queues[first]
            taken.append(waiting.popleft())
            if not first[3]:
                self._counts[first[0]] -= 1
            if not waiting:
                del self._queues[first]
        return taken

    def _key(self, delivery: Delivery) -> tuple[int, str, int, bool]:
        rank = level_of_topic(delivery.topic, self._tasks_topic).rank
        return rank, delivery.topic, delivery.partition, delivery.foreign

    def _starved(self, starved_before: float) -> tuple[int, str, int, bool] | None:
        """The queue whose head is the oldest starved task of the lowest level, if any."""
        starved = [k for k, queue in self._queues.items()
                   if k[0] > 0 and queue[0].timestamp < starved_before]
        return min(starved, key=lambda k: (-k[0], self._queues[k][0].order), default=None)

    def shows_foreign(self) -> bool:
        """True if tasks waiting in other workers' partitions are shown."""
        return any(key[3] for key in self._queues)

    def holds(self, rank: int) -> bool:
        """True if a delivery of this level's rank or a higher one is buffered."""
        return any(count for r, count in self._counts.items() if r <= rank)

    def waiting(self) -> dict[int, int]:
        """How many deliveries are buffered at each level's rank."""
        return dict(self._counts)

    def __len__(self) -> int:
        return sum(self._counts.values())
