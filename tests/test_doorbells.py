"""The worker's doorbells (yadtq/worker/doorbells.py) against a real Redis: a lone task's
ring is claimed on the doorbells' own thread, whatever the worker's loop is doing, and so
are a batch's first tasks, into the slots that are idle. And a map rings its workers as
soon as its first chunk is stored."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import wait_until

import yadtq
from worker_node.tasks import add
from yadtq.backend import RedisBackend
from yadtq.waking import FIRST_MAP_CHUNK
from yadtq.worker.doorbells import Doorbells
from yadtq.worker.occupancy import Occupancy

PARTITIONS = [0, 1]


@pytest.fixture
def doorbells(backend: RedisBackend) -> Iterator[Callable[..., tuple[Doorbells, queue.Queue]]]:
    """Start Doorbells on the test queue's partitions 0 and 1; returns it and the queue of
    the task ids it claimed. Stopped after the test."""
    stopping = threading.Event()
    started: list[Doorbells] = []

    def start(free: Callable[[], bool] = lambda: True, idle: int = 0
              ) -> tuple[Doorbells, queue.Queue]:
        """``idle``: the slots a batch's ring may reserve; the claims of a batch's head go
        to the queue as (batch id, slots reserved)."""
        claimed: queue.Queue[str | tuple[str, int]] = queue.Queue()
        bells = Doorbells(backend, worker="w-test", partitions=lambda: PARTITIONS, free=free,
                          claim=claimed.put, reserve=lambda: idle,
                          claim_batch=lambda batch, reserved: claimed.put((batch, reserved)),
                          retry_wait=0.2, stopping=stopping)
        bells.start()
        started.append(bells)
        return bells, claimed

    yield start
    stopping.set()
    for bells in started:
        bells.stop()


def heard_all(backend: RedisBackend) -> None:
    """Wait until the doorbells' thread took every ring and listens again."""
    wait_until(lambda: all(backend.redis.llen(backend.keys.doorbell(p)) == 0
                           for p in PARTITIONS)
               and backend.redis.info("clients")["blocked_clients"] >= 1, 10,
               "the doorbells' thread to take the rings and listen again")


def test_a_lone_tasks_ring_is_claimed_while_the_loop_does_not_sleep(backend, doorbells):
    # Given doorbells listening, and a worker's loop busy elsewhere (it never sleeps here)
    bells, claimed = doorbells()
    wait_until(lambda: backend.redis.info("clients")["blocked_clients"] >= 1, 10,
               "the doorbells' thread to block on its doorbells")
    # When a client rings partition 1's doorbell naming a lone task
    backend.ring([1], "task-1")
    # Then the doorbells' thread claims it at once, without the loop
    assert claimed.get(timeout=10) == "task-1"


def test_a_batchs_ring_ends_the_loops_sleep_and_is_told_once(backend, doorbells):
    # Given doorbells listening
    bells, claimed = doorbells()
    # When a batch's ring (naming no task) comes while the loop sleeps
    ringer = threading.Timer(0.0, backend.ring, args=([0],))
    ringer.start()
    began = time.monotonic()
    rang = bells.sleep(30.0)
    # Then the sleep ends with it, well before its timeout, and claims nothing
    assert rang is True
    assert time.monotonic() - began < 10
    ringer.join()
    assert bells.sleep(0.01) is False
    assert claimed.empty()


def test_with_no_free_slot_a_ring_waits_in_redis_until_a_slot_is_freed(backend, doorbells):
    # Given doorbells of a worker whose every slot is busy
    free = threading.Event()
    asked = []

    def is_free() -> bool:
        asked.append(free.is_set())
        return asked[-1]

    bells, claimed = doorbells(free=is_free)
    # When a lone task's ring comes, and the doorbells' thread looks again
    backend.ring([0], "task-2")
    for _ in range(2):  # twice: the first look may have begun before the ring
        looks = len(asked)
        bells.wake()
        wait_until(lambda seen=looks: len(asked) > seen, 10,
                   "the doorbells' thread to look at the slots")
    # Then nobody takes it: it waits in Redis (or for its Kafka message)
    assert backend.redis.llen(backend.keys.doorbell(0)) == 1
    assert claimed.empty()
    # And once a slot is freed, the doorbells' thread claims it
    free.set()
    bells.wake()
    assert claimed.get(timeout=10) == "task-2"
    assert backend.redis.llen(backend.keys.doorbell(0)) == 0


def test_a_ring_naming_a_batch_claims_its_head_whatever_the_loop_is_doing(backend, doorbells):
    # Given doorbells of a worker with two idle slots, its loop awake (in a Kafka read or a
    # steal look, say: not asleep on the doorbells)
    bells, claimed = doorbells(idle=2)
    wait_until(lambda: backend.redis.info("clients")["blocked_clients"] >= 1, 10,
               "the doorbells' thread to block on its doorbells")

    # When a batch's ring names it
    backend.ring([0], "b-now")

    # Then its first tasks are claimed from their records into the idle slots at once,
    # not once the loop is done with its turn
    assert claimed.get(timeout=10) == ("b-now", 2)
    # And the loop's next sleep ends for it: the rest of the batch is in Kafka
    assert bells.sleep(10.0) is True


def test_the_loop_and_the_doorbells_thread_never_claim_for_one_slot_twice() -> None:
    # Given a worker of two slots whose loop counted both free, and then the doorbells'
    # thread reserved both for a batch's head
    occupancy = Occupancy(2)
    assert occupancy.free() == 2
    assert occupancy.reserve_idle() == 2

    # When the loop's claim reserves what it counted
    # Then it has none: it claims nothing rather than a task no slot is free for
    assert occupancy.reserve(2) == 0
    # And once the batch's claim left one unused, the loop's next claim may have it
    occupancy.release(1)
    assert occupancy.reserve(2) == 1 and occupancy.free() == 0


def test_a_batchs_rings_after_its_first_neither_wake_the_loop_nor_claim_again(
        backend, doorbells):
    # Given doorbells whose loop slept through a batch's first ring (one a partition), its
    # head claimed into the idle slot
    bells, claimed = doorbells(idle=1)
    ringer = threading.Timer(0.0, backend.ring, args=(PARTITIONS, "b-done"))
    ringer.start()
    assert bells.sleep(30.0) is True
    ringer.join()
    assert claimed.get(timeout=10) == ("b-done", 1)
    # When its other partition's ring is heard while the loop is awake (as rings that
    # waited out a busy slot are, the batch long done)
    heard_all(backend)

    # Then the loop's next sleep is not cut short, and nothing more of it is claimed
    assert bells.sleep(0.3) is False
    assert claimed.empty()


def test_rings_the_loop_looked_in_kafka_after_do_not_end_its_next_sleep(backend, doorbells):
    # Given doorbells, and rings saying tasks were produced, heard while the loop was awake
    bells, _ = doorbells()
    backend.ring(PARTITIONS)
    heard_all(backend)

    # When the loop then looks in Kafka (which finds what they rang for)
    bells.looking()

    # Then its next sleep is not cut short for them
    assert bells.sleep(0.3) is False
    # But a batch's ring, naming it (its messages may still be on their way), still is
    backend.ring([0], "b-new")
    heard_all(backend)
    bells.looking()
    assert bells.sleep(10.0) is True


def test_a_maps_workers_are_rung_once_its_first_tasks_are_stored_before_the_rest(
        client: yadtq.Client, monkeypatch) -> None:
    # Given a client whose rings note how many of the map's tasks Redis holds by then
    stored_at_ring: list[int] = []
    ring = client.backend.ring

    def noting_ring(partitions: Any, task_id: str | None = None, levels: Any = ()) -> None:
        if task_id is not None and task_id.startswith("b-"):
            stored_at_ring.append(len(client.backend.batch_task_ids(task_id)))
        ring(partitions, task_id=task_id, levels=levels)

    monkeypatch.setattr(client.backend, "ring", noting_ring)

    # When a map of 100 tasks is sent
    batch = client.map(add, [(i, i) for i in range(100)])

    # Then the ring naming its batch came with only the first chunk stored, and all of
    # them were stored in the end
    assert stored_at_ring == [FIRST_MAP_CHUNK]
    assert len(client.backend.batch_task_ids(batch.id)) == 100
