"""A freed slot claims its next long task itself, from candidates the loop prepared
(issue 24), against a real Redis (and the preparation, a real broker); real workers take
this path in ``test_end_to_end``'s stealing test and ``benchmarks/bench.py balance``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from yadtq import protocol
from yadtq.backend import RedisBackend
from yadtq.broker import TaskConsumer, TaskProducer, create_topics
from yadtq.broker import consumer as consumer_module
from yadtq.broker.delivery import Delivery
from yadtq.worker import next_up as next_up_module
from yadtq.worker.intake import Intake, Taken
from yadtq.worker.next_up import NextUp
from yadtq.worker.rung_copies import RungCopies
from yadtq.worker.worker_metrics import NO_METRICS

WORKER = "worker-a"
OTHER_WORKER = "worker-b"


def prepared(backend: RedisBackend, count: int) -> Taken:
    """``count`` queued tasks, one delivery each in partition 0, as the loop takes them."""
    messages = [protocol.build("sleep", [0.5]) for _ in range(count)]
    backend.enqueue(messages)
    deliveries = [Delivery("yadtq.q.tasks", 0, offset, offset, None, b"", message)
                  for offset, message in enumerate(messages)]
    return Taken(deliveries, messages, {0: 0})


def prepared_next_up(backend: RedisBackend, count: int) -> tuple[Taken, NextUp]:
    """``count`` candidates, prepared for the slots of a fresh NextUp."""
    taken = prepared(backend, count)
    next_up = NextUp(backend, WORKER, time.time)
    next_up.prepare(taken)
    return taken, next_up


def test_a_freed_slot_claims_the_oldest_prepared_task_still_queued(backend) -> None:
    # Given four prepared candidates, the first two claimed by another worker meanwhile
    taken, next_up = prepared_next_up(backend, 4)
    backend.claim_many(taken.tasks[:2], OTHER_WORKER)

    # When a slot frees
    claimed = next_up.claim_next()

    # Then it holds the third, the oldest still queued, and only that one
    assert claimed == (taken.tasks[2], 1)
    records = backend.task_records([m.id for m in taken.tasks])
    assert [r.get("worker") for r in records] == [OTHER_WORKER, OTHER_WORKER, WORKER, None]
    assert records[3]["status"] == "queued"
    # And the fourth stays prepared: the next slot to free claims it, with no look
    assert next_up.prepared == 1
    assert next_up.claim_next() == (taken.tasks[3], 1)
    assert not next_up.prepared and next_up.claim_next() is None
    # And the loop settles both claims: the four deliveries used, none to give back
    settled = next_up.withdraw()
    assert [d for part, _ in settled for d in part.deliveries] == taken.deliveries
    assert all(part.untouched(claims) == [] for part, claims in settled)


def test_the_loop_takes_back_what_the_slots_left_prepared(backend) -> None:
    taken, next_up = prepared_next_up(backend, 3)
    assert next_up.claim_next() == (taken.tasks[0], 1)

    [(used, claims), (rest, none)] = next_up.withdraw()

    assert used.deliveries == taken.deliveries[:1] and [c.claimed for c in claims] == [True]
    assert none is None and rest.untouched(none) == taken.deliveries[1:]  # back in order
    assert not next_up.prepared


def test_candidates_all_taken_elsewhere_leave_the_slot_to_the_loop(backend) -> None:
    taken, next_up = prepared_next_up(backend, 3)
    backend.claim_many(taken.tasks, OTHER_WORKER)

    assert next_up.claim_next() is None
    [(_, claims)] = next_up.withdraw()
    assert taken.untouched(claims) == []  # none to give back: all were claimed


def test_what_no_slot_used_goes_back_whole_when_the_loop_withdraws_it(backend) -> None:
    taken, next_up = prepared_next_up(backend, 3)

    [(settled, claims)] = next_up.withdraw()

    assert claims is None and settled.untouched(claims) == taken.deliveries
    assert next_up.claim_next() is None  # withdrawn: no slot claims it any more
    assert [r["status"] for r in backend.task_records([m.id for m in taken.tasks])] == [
        "queued"] * 3


class HeldClaims(RedisBackend):
    """The real backend, whose claims wait for the test to let them go to Redis."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.go = threading.Event()
        self.waiting = threading.Semaphore(0)  # released once for each claim that waits

    def claim_many(self, messages: Sequence[protocol.TaskMessage], *args: Any, **kwargs: Any
                   ) -> Any:
        self.waiting.release()
        assert self.go.wait(10)
        return super().claim_many(messages, *args, **kwargs)


@pytest.fixture
def held(config) -> Iterator[HeldClaims]:
    """A backend whose claims wait for ``go``, closed after the test."""
    backend = HeldClaims(config)
    yield backend
    backend.close()


def test_the_loop_waits_for_a_slots_claim_under_way_before_it_settles(held) -> None:
    # Given a slot's claim of the prepared candidates under way
    taken, next_up = prepared_next_up(held, 2)
    slot = threading.Thread(target=next_up.claim_next)
    slot.start()
    assert held.waiting.acquire(timeout=10)

    # When the loop withdraws meanwhile
    withdrawn: list[Any] = []
    loop = threading.Thread(target=lambda: withdrawn.extend(next_up.withdraw()))
    loop.start()
    loop.join(0.3)
    # Then it waits for the claim (its deliveries are not the loop's to take yet)
    assert loop.is_alive() and not withdrawn

    # And settles the claim's outcome once it is known
    held.go.set()
    slot.join(10)
    loop.join(10)
    [(used, claims), (rest, none)] = withdrawn
    assert used.deliveries == taken.deliveries[:1] and [c.claimed for c in claims] == [True]
    assert rest.untouched(none) == [taken.deliveries[1]]


def test_slots_that_free_together_claim_at_once_each_the_next_task_queued(held) -> None:
    # Given four prepared candidates, and two slots whose claims are both under way
    taken, next_up = prepared_next_up(held, 4)
    claimed: list[Any] = []
    slots = [threading.Thread(target=lambda: claimed.append(next_up.claim_next()))
             for _ in range(2)]
    for slot in slots:
        slot.start()
    # (the second slot does not wait for the first's round trip)
    assert held.waiting.acquire(timeout=10) and held.waiting.acquire(timeout=10)

    # When Redis answers them
    held.go.set()
    for slot in slots:
        slot.join(10)

    # Then each holds one of the first two tasks, and the other two stay prepared
    assert sorted(claimed, key=lambda c: taken.tasks.index(c[0])) == [
        (taken.tasks[0], 1), (taken.tasks[1], 1)]
    assert next_up.prepared == 2
    # And the loop settles the first two as used, the rest going back in order
    [(used, claims), (rest, none)] = next_up.withdraw()
    assert used.deliveries == taken.deliveries[:2] and used.untouched(claims) == []
    assert rest.untouched(none) == taken.deliveries[2:]


def test_a_slot_freed_while_the_loop_prepares_claims_from_what_it_prepares(
        backend, monkeypatch) -> None:
    # Given the loop taking back what was prepared, to prepare afresh
    monkeypatch.setattr(next_up_module, "PREPARING_WAIT", 10.0)  # however slow the test runs
    first, fresh = prepared(backend, 1), prepared(backend, 2)
    next_up = NextUp(backend, WORKER, time.time)
    next_up._changed = watched = WatchedCondition()
    next_up.prepare(first)
    next_up.withdraw(preparing=True)

    # When a slot frees meanwhile (and waits), and then the loop prepares
    claimed: list[Any] = []
    slot = threading.Thread(target=lambda: claimed.append(next_up.claim_next()))
    slot.start()
    assert watched.waiting.wait(10)
    next_up.prepare(fresh)
    slot.join(10)

    # Then the slot claimed the first of the fresh candidates, not handed its claim back
    assert claimed == [(fresh.tasks[0], 1)]


class WatchedCondition(threading.Condition):
    """A condition that tells when a thread waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait_for(self, predicate: Any, timeout: float | None = None) -> Any:
        self.waiting.set()
        return super().wait_for(predicate, timeout)


@pytest.fixture
def intake(config, backend) -> Iterator[Intake]:
    """The loop's side of a real consumer of the test queue's topic, once it has joined."""
    create_topics(config)
    consumer = TaskConsumer(config, client_id=WORKER, on_assignment=lambda: None,
                            claimed_up_to=backend.read_positions.claimed, level_offsets=None,
                            stopping=threading.Event())
    deadline = time.monotonic() + 60
    while not consumer.partitions:  # a join completes over polls
        assert time.monotonic() < deadline, "the consumer never joined its group"
        assert consumer.take(1) == []
    assert consumer.take(1) == []  # its positions known: the next poll fetches
    yield Intake(consumer, tasks_topic=config.tasks_topic, served=frozenset({"sleep"}),
                 dead_letter=lambda *_, **__: None, refused=lambda _: None,
                 flushed=lambda _: True, unserved=lambda messages: messages,
                 rung_copies=RungCopies(), metrics=NO_METRICS)
    consumer.close()


def test_a_preparation_just_after_a_ring_waits_for_the_tasks_on_their_way(
        config, backend, intake, monkeypatch) -> None:
    # Given a batch's tasks just produced, not yet fetched (every slot busy, say)
    monkeypatch.setattr(consumer_module, "POLL_MS", 10_000)  # it returns once they come
    messages = [protocol.build("sleep", [0.5]) for _ in range(3)]
    backend.enqueue(messages)
    producer = TaskProducer(config)
    producer.deal([m.id for m in messages],
                  [protocol.encode(m, config.max_message_bytes) for m in messages])
    producer.flush()
    producer.close()

    # When the loop prepares the next claim, waiting for them as just after their ring
    offered: list[Taken | None] = []
    prepared = intake.prepare(offered.append, wait=True)

    # Then the slot that frees next finds them prepared: it need not wait for the loop
    assert prepared and offered[0] is not None
    assert sorted(m.id for m in offered[0].tasks) == sorted(m.id for m in messages)


def test_after_a_batchs_ring_takes_fetch_the_partitions_yet_to_deliver_though_tasks_wait(
        config, intake, monkeypatch) -> None:
    # Given a worker whose first fetch after a batch's ring brought one partition's tasks
    # only, the newest (Apache Kafka answers a waiting fetch once one partition has any)
    monkeypatch.setattr(consumer_module, "POLL_MS", 10_000)  # it returns once they come
    monkeypatch.setattr(consumer_module, "BATCH_ARRIVAL", 60)  # not cut short on a slow host
    consumer = intake._consumer
    partitions = consumer.partitions
    older = [protocol.build("sleep", [0.5]) for _ in partitions[1:]]
    newest = protocol.build("sleep", [0.5])
    producer = TaskProducer(config)

    def produce(message: protocol.TaskMessage, partition: int) -> None:
        producer.send(message.id, protocol.encode(message, config.max_message_bytes),
                      partition=partition)
        producer.flush()

    consumer.expect_batch()
    produce(newest, partitions[0])
    assert consumer.take(0) == []  # polled: the newest is buffered, not taken
    assert consumer.awaiting

    # When the older tasks reach the other partitions, and the loop takes again
    for message, partition in zip(older, partitions[1:], strict=True):
        produce(message, partition)
    deadline = time.monotonic() + 30
    while consumer.awaiting:
        assert time.monotonic() < deadline, "the partitions never all delivered"
        assert consumer.take(0) == []
    producer.close()

    # Then they were fetched though a task waited in the buffer, and go first, in order
    taken = [d.message.id for d in consumer.take(len(older) + 1)]
    assert taken == [m.id for m in older] + [newest.id]


def test_fetching_after_a_ring_keeps_the_read_ahead_within_its_bound(
        config, intake, monkeypatch) -> None:
    # Given a worker that reads 2 messages ahead at most, 1 of them buffered, just rung
    monkeypatch.setattr(consumer_module, "POLL_MS", 10_000)  # it returns once they come
    monkeypatch.setattr(consumer_module, "BATCH_ARRIVAL", 60)
    monkeypatch.setattr(consumer_module, "READ_AHEAD", 2)
    consumer = intake._consumer
    partitions = consumer.partitions
    producer = TaskProducer(config)

    def produce(partition: int) -> protocol.TaskMessage:
        message = protocol.build("sleep", [0.5])
        producer.send(message.id, protocol.encode(message, config.max_message_bytes),
                      partition=partition)
        return message

    produce(partitions[0])
    producer.flush()
    assert consumer.take(0) == []
    consumer.expect_batch()

    # When the batch's tasks reach every other partition, and the loop takes for a while
    for partition in partitions[1:]:
        produce(partition)
    producer.flush()
    producer.close()
    looked_until = time.monotonic() + 1.0  # time enough for many fetches on this host
    while time.monotonic() < looked_until:
        assert consumer.take(0) == []

    # Then it fetched up to its bound only: the rest stays in Kafka for others to read
    assert len(consumer.take(len(partitions))) == 2
