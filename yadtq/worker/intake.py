"""What the worker's loop takes from Kafka to claim, and how it settles it (worker runtime).

The loop takes deliveries from the consumer (its own partitions', and while tasks are
long others' too, the oldest first: ``oldest_first``), accepts them (undecodable ones
dead-lettered, ones another worker serves handed on) and claims the candidates left.
Once the claim is known, what its limit left queued goes back to the read-ahead, in
order, and the rest is marked claimed: this worker's offsets may then be committed,
and others' partitions are no longer shown below what was passed over. A claim may be
the loop's own, or a slot's (``next_up``); either way only the loop's thread settles,
as only it talks to the consumer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from yadtq.backend import Claim
from yadtq.broker import Delivery, TaskConsumer
from yadtq.protocol import TaskMessage
from yadtq.worker import oldest_first
from yadtq.worker.rung_copies import RungCopies
from yadtq.worker.worker_metrics import NoMetrics, WorkerMetrics


@dataclass(frozen=True)
class Taken:
    """Deliveries the loop took, and what of them to claim."""

    deliveries: list[Delivery]  # in the order taken, others' partitions' (foreign) too
    tasks: list[TaskMessage]  # the candidates, in order
    offsets: dict[int, int]  # how far each partition is claimed, for thieves

    def untouched(self, claims: list[Claim] | None) -> list[Delivery]:
        """The deliveries whose tasks stay queued (every candidate's if nothing was
        claimed), in order: they go back to the read-ahead."""
        return self.split(claims)[2].deliveries

    def split(self, claims: list[Claim] | None) -> tuple[Taken, list[Claim], Taken]:
        """What a claim used (its deliveries, candidates and their claims), and the
        candidates it left untouched (all of them if nothing was claimed), still queued,
        in order."""
        if claims is None:
            left, used = {id(task) for task in self.tasks}, []
        else:
            left = {id(task) for task, claim in zip(self.tasks, claims, strict=True)
                    if claim.untouched}
            used = [(task, claim) for task, claim in zip(self.tasks, claims, strict=True)
                    if id(task) not in left]
        return (Taken([d for d in self.deliveries if id(d.message) not in left],
                      [task for task, _ in used], self.offsets),
                [claim for _, claim in used],
                Taken([d for d in self.deliveries if id(d.message) in left],
                      [task for task in self.tasks if id(task) in left], self.offsets))


class Intake:
    """The loop's side of the consumer: take candidates, settle claims (one thread)."""

    def __init__(
        self,
        consumer: TaskConsumer,
        *,
        tasks_topic: str,
        served: frozenset[str],
        dead_letter: Callable[..., None],
        refused: Callable[[Delivery], None],
        flushed: Callable[[str], bool],
        unserved: Callable[[list[TaskMessage]], list[TaskMessage]],
        rung_copies: RungCopies,
        metrics: WorkerMetrics | NoMetrics,
    ) -> None:
        """``dead_letter(reason, delivery=)`` sends an undecodable delivery to the dead
        letters, ``refused(delivery)`` ends its record; ``flushed(what)``: False if Kafka
        did not take what was sent (the worker then stops); ``unserved(messages)``: the
        ones not handed on to a worker that serves them."""
        self._consumer = consumer
        self._tasks_topic = tasks_topic
        self._served = served
        self._dead_letter = dead_letter
        self._refused = refused
        self._flushed = flushed
        self._unserved = unserved
        self._rung_copies = rung_copies
        self._metrics = metrics

    def take(self, count: int, wait: bool, everywhere: bool, one_level: bool = False
             ) -> Taken | None:
        """Take up to ``count`` deliveries and accept them: the candidates to claim, in
        order (``one_level``: of one priority level); None: the worker is stopping
        (nothing of these is committed)."""
        deliveries = self._consumer.take(count, wait=wait, everywhere=everywhere,
                                         one_level=one_level)
        self._metrics.read(deliveries)
        own = [d for d in deliveries if not d.foreign]
        tasks = self._accept(own)
        if tasks is None:
            return None
        if len(own) < len(deliveries):
            tasks = oldest_first.candidates(deliveries, tasks, self._served)
        return Taken(deliveries, self._rung_copies.without_copies(tasks),
                     oldest_first.claimed_offsets(own, self._tasks_topic, limited=everywhere))

    def prepare(self, offer: Callable[[Taken | None], None], wait: bool) -> bool:
        """Offer the slot that frees next the candidates its claim takes from
        (``NextUp.prepare``); True if there are any. ``wait``: poll a moment for messages
        on their way.

        Taken before the look at others' partitions (5-10 ms), which a slot that frees
        meanwhile would otherwise wait out; the next preparation sees the look. Of one
        level: a slot claims without polling, and a higher one may be in Kafka.
        """
        taken = None
        try:
            taken = self.take(1 + oldest_first.LOOKED_PAST, wait=wait, everywhere=True,
                              one_level=True)
        finally:
            offered = taken if taken is not None and taken.tasks else None
            offer(offered)
        if taken is not None and offered is None:
            self.settle(taken, [])  # dead-lettered or handed on: nothing to claim
        return offered is not None

    def _accept(self, deliveries: list[Delivery]) -> list[TaskMessage] | None:
        """The tasks to claim here: undecodable deliveries are dead-lettered, tasks
        another live worker serves are handed on. None: the worker is stopping, and
        commits nothing of these."""
        messages = []
        for delivery in deliveries:
            if delivery.message is None:
                self._dead_letter(str(delivery.error), delivery=delivery)
                self._refused(delivery)
            else:
                messages.append(delivery.message)
        if len(messages) < len(deliveries) and not self._flushed("dead letters"):
            return None
        return self._unserved(messages)

    def settle(self, taken: Taken, claims: list[Claim] | None) -> None:
        """What a claim left queued goes back to the read-ahead; the rest is marked claimed
        (this worker's offsets may be committed; others' are shown no more)."""
        used, _, untouched = taken.split(claims)
        self._consumer.give_back(untouched.deliveries)
        self._consumer.claimed(used.deliveries)
