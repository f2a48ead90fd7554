"""The Redis backend against a real Redis: records, counters, leases, fencing, events.

Workers are simulated by calling the backend the way ``yadtq.worker`` does;
time is passed in as ``now`` so lease expiry needs no waiting.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from yadtq import protocol
from yadtq.backend import Outcome, RedisBackend
from yadtq.backend.holders import SERVER_FIELD
from yadtq.backend.scripts import ClaimCall, ClaimTask
from yadtq.config import Config
from yadtq.limits import Limits, Rate
from yadtq.protocol import TaskMessage
from yadtq.status import ALLOWED, COUNTERS, TaskStatus

LUA = Path(__file__).resolve().parents[1] / "yadtq" / "backend" / "lua"
WORKER = "worker-a"
OTHER_WORKER = "worker-b"
REAPER = "worker-reaper"


def text_hash(backend: RedisBackend, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in backend.redis.hgetall(key).items()}


def counters(backend: RedisBackend, batch_id: str) -> dict[str, int]:
    counts = backend.batch_counts(batch_id)
    return {k: counts[k] for k in ("total", "queued", "processing", "success", "failed")}


def enqueue_batch(backend: RedisBackend, count: int = 3) -> tuple[str, list[TaskMessage]]:
    batch_id = protocol.new_batch_id()
    messages = [
        protocol.build("add", [i, 10], {"scale": i}, batch=batch_id, index=i)
        for i in range(count)
    ]
    backend.enqueue(messages, batch_id=batch_id, batch_total=len(messages))
    return batch_id, messages


def claim_one(backend: RedisBackend, message: TaskMessage, worker: str = WORKER,
              now: float | None = None) -> int:
    [claim] = backend.claim_many([message], worker, now=now)
    assert claim.claimed, f"claim of {message.id} skipped: {claim.skipped_because}"
    assert claim.attempt is not None
    return claim.attempt


def success(message: TaskMessage, attempt: int, result: Any = 42) -> Outcome:
    return Outcome(message.id, message.batch, attempt, TaskStatus.SUCCESS, result=result)


def collect_messages(pubsub: redis.client.PubSub, count: int, timeout: float = 5.0
                     ) -> list[list[dict]]:
    """The next ``count`` published event messages (each a JSON array of changes), decoded."""
    messages: list[list[dict]] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
        if message and message["type"] == "message":
            messages.append(json.loads(message["data"]))
    assert len(messages) == count, f"expected {count} messages within {timeout} s: {messages}"
    return messages


def collect_events(pubsub: redis.client.PubSub, count: int, timeout: float = 5.0) -> list[dict]:
    """The changes in the next ``count`` event messages (one change each)."""
    messages = collect_messages(pubsub, count, timeout)
    assert all(len(changes) == 1 for changes in messages), messages
    return [changes[0] for changes in messages]


def subscribed(backend: RedisBackend) -> redis.client.PubSub:
    pubsub = backend.pubsub()
    pubsub.subscribe(backend.keys.events)
    confirmation = pubsub.get_message(timeout=5)
    assert confirmation is not None and confirmation["type"] == "subscribe"
    return pubsub


# --- enqueue and claim --------------------------------------------------------------


def test_enqueue_writes_queued_records_and_batch_counters(backend: RedisBackend) -> None:
    # When a batch of three is enqueued
    batch_id, messages = enqueue_batch(backend)

    # Then each task has a queued record with its full payload
    for index, message in enumerate(messages):
        record = backend.task_record(message.id)
        assert record is not None
        assert record["status"] == "queued"
        assert record["task"] == "add"
        assert record["args"] == [index, 10]
        assert record["kwargs"] == {"scale": index}
        assert record["batch"] == batch_id
        assert record["index"] == index
        assert record["attempt"] == 1
        assert record["queued_at"] is not None
    # And the batch counts them all as queued, with the ids in order
    assert counters(backend, batch_id) == {
        "total": 3, "queued": 3, "processing": 0, "success": 0, "failed": 0
    }
    assert backend.batch_task_ids(batch_id) == [m.id for m in messages]


def test_enqueue_of_messages_with_different_options_keeps_each_ones_own(
    backend: RedisBackend
) -> None:
    # Given messages whose options differ from one to the next
    messages = [protocol.build("add", [1, 2], max_retries=1),
                protocol.build("add", [3, 4], timeout=5.0),
                protocol.build("multiply", [5, 6], max_retries=1)]

    # When they are enqueued in one call
    backend.enqueue(messages)

    # Then each record has its own options, not its neighbour's
    records = [backend.task_record(m.id) for m in messages]
    assert [(r["task"], r["max_retries"], r.get("timeout")) for r in records] == [
        ("add", 1, None), ("add", None, "5.0"), ("multiply", 1, None)]


def test_claim_moves_queued_to_processing_with_a_lease_and_counts_it(
    backend: RedisBackend, config: Config
) -> None:
    batch_id, messages = enqueue_batch(backend)
    now = time.time()

    claims = backend.claim_many(messages[:2], WORKER, now=now)

    assert [c.attempt for c in claims] == [1, 1]
    for message in messages[:2]:
        record = backend.task_record(message.id)
        assert record["status"] == "processing"
        assert record["worker"] == WORKER
        assert record["started_at"] == pytest.approx(now)
        lease = backend.redis.zscore(backend.keys.leases, message.id)
        assert lease == pytest.approx(now + config.lease_seconds)
    assert backend.task_record(messages[2].id)["status"] == "queued"
    assert backend.redis.zscore(backend.keys.leases, messages[2].id) is None
    assert counters(backend, batch_id) == {
        "total": 3, "queued": 1, "processing": 2, "success": 0, "failed": 0
    }


def test_second_claim_of_a_processing_task_is_skipped(backend: RedisBackend) -> None:
    batch_id, [message, *_] = enqueue_batch(backend)
    claim_one(backend, message)

    [again] = backend.claim_many([message], OTHER_WORKER)

    assert not again.claimed
    assert again.skipped_because == "processing"
    assert backend.task_record(message.id)["worker"] == WORKER
    assert counters(backend, batch_id)["processing"] == 1


def test_claim_with_a_limit_takes_the_first_queued_tasks_and_leaves_the_rest(
    backend: RedisBackend,
) -> None:
    # Given five queued tasks, the first already taken by another worker
    _, messages = enqueue_batch(backend, count=5)
    claim_one(backend, messages[0], worker=OTHER_WORKER)

    # When a worker claims all five with a limit of two
    claims = backend.claim_many(messages, WORKER, limit=2)

    # Then it holds the first two still queued, and the last two are untouched
    assert [c.claimed for c in claims] == [False, True, True, False, False]
    assert [c.skipped_because for c in claims] == [
        "processing", None, None, "over the limit", "over the limit"]
    statuses = [backend.task_record(m.id)["status"] for m in messages]
    assert statuses == ["processing", "processing", "processing", "queued", "queued"]


def test_claim_of_a_finished_task_is_skipped(backend: RedisBackend) -> None:
    _, [message, *_] = enqueue_batch(backend)
    attempt = claim_one(backend, message)
    assert backend.finish(success(message, attempt), WORKER) is None

    [again] = backend.claim_many([message], OTHER_WORKER)

    assert again.skipped_because == "success"


def test_claim_of_a_message_without_a_record_creates_it_and_leaves_batch_counters_alone(
    backend: RedisBackend,
) -> None:
    # Given a batch with counters, and a plain-format message naming that batch whose
    # record was never written (a client that writes straight to Kafka)
    batch_id, _ = enqueue_batch(backend, count=1)
    before = counters(backend, batch_id)
    message = protocol.decode(json.dumps(
        {"task-id": "plain-1", "task": "add", "args": [1, 2], "batch": batch_id}
    ).encode())

    # When a worker claims it
    attempt = claim_one(backend, message)

    # Then the record exists, is processing and carries the payload
    record = backend.task_record("plain-1")
    assert attempt == 1
    assert record["status"] == "processing"
    assert record["task"] == "add"
    assert record["args"] == [1, 2]
    assert record["format"] == "plain"
    assert record["worker"] == WORKER
    # And the batch counters did not move
    assert counters(backend, batch_id) == before


def test_finishing_a_task_whose_record_the_claim_created_leaves_batch_counters_alone(
    backend: RedisBackend,
) -> None:
    batch_id, _ = enqueue_batch(backend, count=1)
    before = counters(backend, batch_id)
    message = protocol.decode(json.dumps(
        {"task-id": "plain-2", "task": "add", "args": [1, 2], "batch": batch_id}
    ).encode())
    attempt = claim_one(backend, message)

    assert backend.finish(success(message, attempt), WORKER) is None

    assert counters(backend, batch_id) == before


# --- finish and fencing ---------------------------------------------------------------


def test_finished_at_is_when_the_attempt_ended_not_when_its_outcome_was_stored(
    backend: RedisBackend,
) -> None:
    # Given two claimed tasks that ended at 1002 and 1003, their slots free since then
    _, [first, second, *_] = enqueue_batch(backend)
    attempts = [claim_one(backend, m, now=1000.0) for m in (first, second)]
    outcomes = [dataclasses.replace(success(m, a), ended_at=ended)
                for m, a, ended in zip((first, second), attempts, (1002.0, 1003.0), strict=True)]
    pubsub = subscribed(backend)

    # When the worker stores both outcomes later, in one round trip
    try:
        assert backend.finish_many(outcomes, WORKER, now=1009.0).refusals == [None, None]
        [changes] = collect_messages(pubsub, 1)
    finally:
        pubsub.close()

    # Then each record and each event carry the moment its attempt ended
    assert [backend.task_record(m.id)["finished_at"] for m in (first, second)] == [1002.0,
                                                                                   1003.0]
    assert [change["at"] for change in changes] == [1002.0, 1003.0]


def test_finish_by_the_holder_stores_success_removes_the_lease_and_sets_a_ttl(
    backend: RedisBackend, config: Config
) -> None:
    batch_id, [message, *_] = enqueue_batch(backend)
    attempt = claim_one(backend, message)

    refused = backend.finish(success(message, attempt, {"sum": [1, 2]}), WORKER)

    assert refused is None
    record = backend.task_record(message.id)
    assert record["status"] == "success"
    assert record["result"] == {"sum": [1, 2]}
    assert record["finished_at"] is not None
    assert backend.redis.zscore(backend.keys.leases, message.id) is None
    ttl = backend.redis.ttl(backend.keys.task(message.id))
    assert 0 < ttl <= config.result_ttl
    assert counters(backend, batch_id) == {
        "total": 3, "queued": 2, "processing": 0, "success": 1, "failed": 0
    }


def test_finish_with_failure_stores_the_error_type_message_and_traceback(
    backend: RedisBackend,
) -> None:
    batch_id, [message, *_] = enqueue_batch(backend)
    attempt = claim_one(backend, message)

    refused = backend.finish(
        Outcome(message.id, batch_id, attempt, TaskStatus.FAILED, error_type="ZeroDivisionError",
                error="division by zero", traceback="Traceback (most recent call last): ..."),
        WORKER,
    )

    assert refused is None
    record = backend.task_record(message.id)
    assert record["status"] == "failed"
    assert record["error_type"] == "ZeroDivisionError"
    assert record["error"] == "division by zero"
    assert record["traceback"].startswith("Traceback")
    assert counters(backend, batch_id)["failed"] == 1


@pytest.mark.parametrize(
    "attempt_offset, worker", [(1, WORKER), (-1, WORKER), (0, OTHER_WORKER)],
    ids=["future-attempt", "stale-attempt", "wrong-worker"],
)
def test_finish_that_does_not_match_the_claim_is_refused_and_changes_nothing(
    backend: RedisBackend, attempt_offset: int, worker: str
) -> None:
    batch_id, [message, *_] = enqueue_batch(backend)
    attempt = claim_one(backend, message)
    key = backend.keys.task(message.id)
    record_before = text_hash(backend, key)
    counters_before = counters(backend, batch_id)

    refused = backend.finish(success(message, attempt + attempt_offset), worker)

    assert refused == f"task is processing (attempt {attempt}, worker {WORKER})"
    assert text_hash(backend, key) == record_before
    assert counters(backend, batch_id) == counters_before
    assert backend.redis.zscore(backend.keys.leases, message.id) is not None
    assert backend.redis.ttl(key) == -1


def test_finish_of_an_unknown_task_is_refused_as_missing(backend: RedisBackend) -> None:
    message = protocol.build("add", [1, 2])

    refused = backend.finish(success(message, 1), WORKER)

    assert refused == "task is missing (attempt ?, worker none)"
    assert backend.task_record(message.id) is None


def test_a_batch_ring_claims_its_first_queued_tasks_from_their_records_in_order(
    backend: RedisBackend,
) -> None:
    # Given a batch of five, the first claimed already through its message
    batch_id, messages = enqueue_batch(backend, count=5)
    claim_one(backend, messages[0], worker=OTHER_WORKER)
    heads = backend.record_claims

    # When a worker of two free slots claims the batch's head from the records
    claimed = heads.batch_head(batch_id, WORKER, ["add"], count=2, looked_past=1)

    # Then it passed over the taken one and has the next two, rebuilt from their records
    assert [(m, c.attempt) for m, c, _ in claimed] == [(messages[1], 1), (messages[2], 1)]
    assert counters(backend, batch_id) == {"total": 5, "queued": 2, "processing": 3,
                                           "success": 0, "failed": 0}
    # And a worker that does not serve the task, or looks no further, claims none
    assert heads.batch_head(batch_id, REAPER, ["subtract"], count=5, looked_past=0) == []
    assert heads.batch_head(batch_id, REAPER, ["add"], count=2, looked_past=1) == []
    assert [m.id for m, _, _ in heads.batch_head(batch_id, REAPER, ["add"], count=2,
                                                  looked_past=3)] == [messages[3].id,
                                                                      messages[4].id]


# --- requeue: reaper and handback ------------------------------------------------------


def test_a_worker_with_no_redis_connection_left_is_a_dead_holder_of_its_leases(
    backend: RedisBackend, config: Config
) -> None:
    # Given two tasks claimed through the named connections of two workers
    batch_id, messages = enqueue_batch(backend, count=2)
    workers = {name: RedisBackend(config, worker_id=name) for name in (WORKER, OTHER_WORKER)}
    claim_one(workers[WORKER], messages[0], worker=WORKER)
    claim_one(workers[OTHER_WORKER], messages[1], worker=OTHER_WORKER)
    reaper = RedisBackend(config, worker_id=REAPER)
    try:
        # While both are connected, neither is dead
        assert reaper.holders.dead(REAPER, restarted_within=0) == []

        # When OTHER_WORKER's connections close, as a killed process's do
        workers[OTHER_WORKER].close()

        # Then its task, and only its, has a dead holder; a young Redis names none
        assert reaper.holders.dead(REAPER, restarted_within=0) == [
            (messages[1].id, batch_id, OTHER_WORKER)]
        assert reaper.holders.dead(REAPER, restarted_within=10**9) == []
        assert reaper.holders.dead(OTHER_WORKER, restarted_within=0) == []  # never itself
    finally:
        workers[WORKER].close()
        reaper.close()


def test_a_worker_that_beat_on_this_very_server_is_dead_without_the_restart_grace(
    backend: RedisBackend, config: Config
) -> None:
    # Given a task claimed by a worker whose connections then closed, on a server this
    # reaper has only just seen (within the grace live workers get to reconnect)
    batch_id, [message] = enqueue_batch(backend, count=1)
    holder = RedisBackend(config, worker_id=OTHER_WORKER)
    claim_one(holder, message, worker=OTHER_WORKER)
    holder.close()
    reaper = RedisBackend(config, worker_id=REAPER)
    run_id = str(backend.redis.info("server")["run_id"])
    record = backend.keys.worker(OTHER_WORKER)
    try:
        # While its last heartbeat went to another server (or none), the grace holds
        assert reaper.holders.dead(REAPER, restarted_within=10**9) == []
        backend.redis.hset(record, SERVER_FIELD, "a-server-before-a-failover")
        assert reaper.holders.dead(REAPER, restarted_within=10**9) == []

        # When its last heartbeat went to this very server, it had a connection to it
        # since it took over: it is dead at once
        backend.redis.hset(record, SERVER_FIELD, run_id)
        assert reaper.holders.dead(REAPER, restarted_within=10**9) == [
            (message.id, batch_id, OTHER_WORKER)]
    finally:
        reaper.close()


def test_expired_lease_is_requeued_with_the_next_attempt_and_the_original_payload(
    backend: RedisBackend, config: Config
) -> None:
    # Given a claimed task whose worker stopped renewing its lease
    batch_id, messages = enqueue_batch(backend)
    message = messages[1]
    claimed_at = time.time()
    claim_one(backend, message, now=claimed_at)
    later = claimed_at + config.lease_seconds + 60

    # When the reaper looks well after the lease ran out
    assert backend.expired_leases(later) == [(message.id, batch_id)]
    again = backend.requeue(message.id, batch_id, worker_id=REAPER, now=later)

    # Then the task is queued again as attempt 2, with everything needed to produce it
    assert again is not None
    assert again.id == message.id
    assert again.task == "add"
    assert again.args == (1, 10)
    assert again.kwargs == {"scale": 1}
    assert again.batch == batch_id
    assert again.index == 1
    assert again.attempt == 2
    assert again.submitted_at == pytest.approx(message.submitted_at)
    record = backend.task_record(message.id)
    assert record["status"] == "queued"
    assert record["attempt"] == 2
    assert record["worker"] == ""
    assert backend.redis.zscore(backend.keys.leases, message.id) is None
    assert counters(backend, batch_id) == {
        "total": 3, "queued": 3, "processing": 0, "success": 0, "failed": 0
    }
    # And the requeued message is one the protocol accepts
    assert protocol.decode(protocol.encode(again)).attempt == 2
    # And the attempts history says who held it and who reaped it
    claimed, expired = backend.task_history(message.id)
    assert (claimed["event"], claimed["attempt"], claimed["worker"]) == ("claimed", 1, WORKER)
    assert (expired["event"], expired["attempt"], expired["worker"]) == (
        "lease expired", 1, WORKER)
    assert WORKER in expired["detail"] and REAPER in expired["detail"]


def test_first_message_index_zero_survives_requeue(
    backend: RedisBackend, config: Config
) -> None:
    batch_id, [message, *_] = enqueue_batch(backend)
    claim_one(backend, message, now=1000.0)

    again = backend.requeue(message.id, batch_id, worker_id=REAPER,
                            now=1000.0 + config.lease_seconds + 1)

    assert again is not None and again.index == 0


def test_requeue_while_the_lease_is_live_does_nothing(
    backend: RedisBackend, config: Config
) -> None:
    batch_id, [message, *_] = enqueue_batch(backend)
    claimed_at = time.time()
    claim_one(backend, message, now=claimed_at)
    key = backend.keys.task(message.id)
    before = text_hash(backend, key)

    again = backend.requeue(message.id, batch_id, worker_id=REAPER,
                            now=claimed_at + config.lease_seconds / 2)

    assert again is None
    assert backend.expired_leases(claimed_at + config.lease_seconds / 2) == []
    assert text_hash(backend, key) == before
    assert counters(backend, batch_id)["processing"] == 1


def test_only_the_holder_can_hand_a_task_back(backend: RedisBackend) -> None:
    batch_id, [message, *_] = enqueue_batch(backend)
    claim_one(backend, message)

    by_other = backend.requeue(message.id, batch_id, worker_id=OTHER_WORKER, handback=True)
    assert by_other is None
    assert backend.task_record(message.id)["status"] == "processing"

    by_owner = backend.requeue(message.id, batch_id, worker_id=WORKER, handback=True)
    assert by_owner is not None and by_owner.attempt == 2
    assert backend.task_record(message.id)["status"] == "queued"
    assert counters(backend, batch_id)["queued"] == 3
    assert backend.task_history(message.id)[-1]["event"] == "handed back"


def test_after_a_requeue_the_old_attempts_result_is_refused(
    backend: RedisBackend, config: Config
) -> None:
    # Given attempt 1 was reaped and attempt 2 claimed by another worker
    batch_id, [message, *_] = enqueue_batch(backend)
    first = claim_one(backend, message, now=1000.0)
    again = backend.requeue(message.id, batch_id, worker_id=REAPER,
                            now=1000.0 + config.lease_seconds + 1)
    assert again is not None
    second = claim_one(backend, again, worker=OTHER_WORKER)
    assert (first, second) == (1, 2)

    # When the first worker finally reports, it is refused
    refused = backend.finish(success(message, first, result="stale"), WORKER)
    assert refused == f"task is processing (attempt 2, worker {OTHER_WORKER})"

    # And the current attempt's result is the one accepted
    assert backend.finish(success(again, second, result="fresh"), OTHER_WORKER) is None
    record = backend.task_record(message.id)
    assert (record["status"], record["result"], record["attempt"]) == ("success", "fresh", 2)
    assert counters(backend, batch_id) == {
        "total": 3, "queued": 2, "processing": 0, "success": 1, "failed": 0
    }
    # And the history shows the refusal of the stale attempt and one accepted success
    events = [(e["event"], e["attempt"], e["worker"]) for e in backend.task_history(message.id)]
    assert events == [
        ("claimed", 1, WORKER), ("lease expired", 1, WORKER), ("claimed", 2, OTHER_WORKER),
        ("refused", 1, WORKER), ("success", 2, OTHER_WORKER),
    ]


def test_the_old_attempt_cannot_finish_a_requeued_task_that_is_still_queued(
    backend: RedisBackend,
) -> None:
    batch_id, [message, *_] = enqueue_batch(backend)
    attempt = claim_one(backend, message)
    assert backend.requeue(message.id, batch_id, worker_id=WORKER, handback=True) is not None

    refused = backend.finish(success(message, attempt), WORKER)

    assert refused == "task is queued (attempt 2, worker none)"


def test_retry_outcome_queues_the_next_attempt_after_its_backoff(
    backend: RedisBackend,
) -> None:
    # Given a claimed task whose first attempt failed with a retryable error
    batch_id, [message, *_] = enqueue_batch(backend)
    attempt = claim_one(backend, message, now=1000.0)
    retry = Outcome(message.id, batch_id, attempt, TaskStatus.FAILED,
                    error_type="ConnectionError", error="down", retry_at=1010.0)

    # When the worker reports it as a retry
    assert backend.finish(retry, WORKER, now=1001.0) is None

    # Then it is queued as attempt 2, waiting in the retries set until its time
    record = backend.task_record(message.id)
    assert (record["status"], record["attempt"], record["worker"]) == ("queued", 2, "")
    assert backend.redis.zscore(backend.keys.retries, message.id) == 1010.0
    assert backend.redis.zscore(backend.keys.leases, message.id) is None
    assert counters(backend, batch_id)["queued"] == 3
    assert backend.retries.take_due(now=1005.0) == []
    [early] = backend.claim_many([message], OTHER_WORKER, now=1005.0)
    assert early.skipped_because == "waiting to retry"
    # And once the backoff is over it can be taken, rebuilt and claimed as attempt 2
    assert backend.retries.take_due(now=1011.0) == [message.id]
    again = backend.retries.message(message.id)
    assert again is not None and again.attempt == 2 and again.args == message.args
    assert claim_one(backend, again, worker=OTHER_WORKER, now=1011.0) == 2
    assert [e["event"] for e in backend.task_history(message.id)] == [
        "claimed", "retry", "claimed"]


def test_cancel_of_a_queued_task_moves_the_batch_counter_and_a_claim_skips_it(
    backend: RedisBackend,
) -> None:
    batch_id, [message, *_] = enqueue_batch(backend)

    assert backend.cancel(message.id, batch_id, requested_by="tester") == "queued"

    record = backend.task_record(message.id)
    assert (record["status"], record["error_type"]) == ("cancelled", "TaskCancelled")
    assert backend.batch_counts(batch_id)["cancelled"] == 1
    assert counters(backend, batch_id)["queued"] == 2
    [claim] = backend.claim_many([message], WORKER)
    assert claim.skipped_because == "cancelled"
    assert backend.cancel(message.id, batch_id, requested_by="tester") is None
    [event] = backend.task_history(message.id)
    assert event["event"] == "cancelled" and "tester" in event["detail"]


# --- events -------------------------------------------------------------------------


def test_claim_and_finish_publish_events_with_id_status_worker_and_attempt(
    backend: RedisBackend,
) -> None:
    # Given a subscriber on the queue's events channel
    batch_id, [message, *_] = enqueue_batch(backend)
    pubsub = subscribed(backend)
    try:
        # When a worker claims and finishes the task
        attempt = claim_one(backend, message, now=1000.0)
        assert backend.finish(success(message, attempt), WORKER, now=1001.0) is None

        # Then one event per change arrives, in order
        processing, done = collect_events(pubsub, 2)
    finally:
        pubsub.close()
    assert processing == {"id": message.id, "status": "processing", "worker": WORKER,
                          "attempt": 1, "batch": batch_id, "at": 1000}
    # A short result rides along, so clients need not read the record back.
    assert done == {"id": message.id, "status": "success", "worker": WORKER,
                    "attempt": 1, "batch": batch_id, "at": 1001, "result": "42"}


def test_claiming_and_finishing_several_tasks_publishes_one_message_of_changes_each(
    backend: RedisBackend,
) -> None:
    # Given a subscriber, and five tasks of a batch
    batch_id, messages = enqueue_batch(backend, count=5)
    pubsub = subscribed(backend)
    try:
        # When a worker claims them together, then stores their outcomes together
        claims = backend.claim_many(messages, WORKER, now=1000.0)
        outcomes = [success(m, c.attempt or 0) for m, c in zip(messages, claims, strict=True)]
        assert backend.finish_many(outcomes, WORKER, now=1001.0).refusals == [None] * 5

        # Then two event messages arrive, each with the five tasks' changes in order
        claimed, finished = collect_messages(pubsub, 2)
    finally:
        pubsub.close()
    ids = [m.id for m in messages]
    assert [(c["id"], c["status"], c["batch"]) for c in claimed] == [
        (i, "processing", batch_id) for i in ids]
    assert [(c["id"], c["status"], c["result"]) for c in finished] == [
        (i, "success", "42") for i in ids]
    assert counters(backend, batch_id) == {"total": 5, "queued": 0, "processing": 0,
                                           "success": 5, "failed": 0}


def test_requeue_publishes_a_queued_event_with_the_new_attempt(backend: RedisBackend) -> None:
    batch_id, [message, *_] = enqueue_batch(backend)
    claim_one(backend, message)
    pubsub = subscribed(backend)
    try:
        assert backend.requeue(message.id, batch_id, worker_id=WORKER,
                               handback=True) is not None
        [event] = collect_events(pubsub, 1)
    finally:
        pubsub.close()
    assert (event["id"], event["status"], event["attempt"]) == (message.id, "queued", 2)


def test_refused_finish_publishes_nothing(backend: RedisBackend) -> None:
    _, [message, *_] = enqueue_batch(backend)
    attempt = claim_one(backend, message)
    pubsub = subscribed(backend)
    try:
        assert backend.finish(success(message, attempt), OTHER_WORKER) is not None
        # a later accepted finish is the first event the subscriber sees
        assert backend.finish(success(message, attempt), WORKER) is None
        [event] = collect_events(pubsub, 1)
    finally:
        pubsub.close()
    assert event["worker"] == WORKER


# --- heartbeats -----------------------------------------------------------------------


def test_heartbeat_records_the_worker_and_renews_only_existing_leases(
    backend: RedisBackend, config: Config
) -> None:
    # Given two claimed tasks, one of which has since finished (its lease removed)
    _, [running, finished, *_] = enqueue_batch(backend)
    claim_one(backend, running, now=1000.0)
    attempt = claim_one(backend, finished, now=1000.0)
    assert backend.finish(success(finished, attempt), WORKER) is None

    # When the worker's heartbeat still lists both
    backend.heartbeat(WORKER, {"host": "h", "pid": 7, "concurrency": 2}, [running.id,
                      finished.id], now=2000.0)

    # Then the worker hash and registry are written
    worker = text_hash(backend, backend.keys.worker(WORKER))
    assert worker["host"] == "h"
    assert worker["pid"] == "7"
    assert float(worker["last_heartbeat"]) == 2000.0
    assert worker["queue"] == config.queue
    assert backend.redis.zscore(backend.keys.workers, WORKER) == 2000.0
    assert backend.redis.ttl(backend.keys.worker(WORKER)) > 0
    assert [w["host"] for w in backend.workers()] == ["h"]
    # And the live lease moved forward, while the removed one was not re-added
    assert backend.redis.zscore(backend.keys.leases, running.id) == pytest.approx(
        2000.0 + config.lease_seconds
    )
    assert backend.redis.zscore(backend.keys.leases, finished.id) is None


# --- the scripts agree with the state machine ------------------------------------------


def _perform(backend: RedisBackend, message: TaskMessage, current: TaskStatus,
             target: TaskStatus) -> bool:
    """Run the script that moves a task from ``current`` to ``target``; True if it
    accepted the move."""
    if target is TaskStatus.QUEUED and current is TaskStatus.SCHEDULED:
        return backend.scheduled.release([message.id], WORKER) != []
    if target is TaskStatus.SKIPPED or (target is TaskStatus.QUEUED
                                        and current is TaskStatus.BLOCKED):
        return _parent_ends(backend, message, "failed" if target is TaskStatus.SKIPPED
                            else "success")
    if target is TaskStatus.PROCESSING:
        [claim] = backend.claim_many([message], WORKER)
        return claim.claimed
    if target is TaskStatus.SCHEDULED:  # a claim of a task over its rate limit (limits.lua)
        return _claim_over_a_rate_limit(backend, message)
    if target in (TaskStatus.SUCCESS, TaskStatus.FAILED):
        outcome = Outcome(message.id, message.batch, 1, target, result=1, error_type="E",
                          error="e")
        return backend.finish(outcome, WORKER) is None
    if target is TaskStatus.QUEUED:
        return backend.requeue(message.id, message.batch, worker_id=REAPER,
                               now=time.time() + 3600) is not None
    if target is TaskStatus.CANCELLED:
        return backend.cancel(message.id, message.batch, requested_by="test") is not None
    raise AssertionError(f"no script moves a task to {target}")


def _parent_ends(backend: RedisBackend, message: TaskMessage, status: str) -> bool:
    """Give the task one parent, ended ``status``, whose children settle.lua then moves;
    True if the task moved."""
    parent = f"parent-of-{message.id}"
    key = backend.keys.task(message.id)
    backend.redis.hset(key, mapping={"parents": json.dumps([parent]), "waiting": 1})
    backend.redis.hset(backend.keys.task(parent), mapping={"status": status, "task": "add"})
    backend.redis.hset(backend.keys.children(parent), message.id, "0")
    backend.redis.zadd(backend.keys.settling, {parent: 0})
    before = backend.redis.hget(key, "status")
    backend.edges.settle()
    return backend.redis.hget(key, "status") != before


def _claim_over_a_rate_limit(backend: RedisBackend, message: TaskMessage) -> bool:
    """Claim the task as one of a task whose 1/h rate was spent a minute ago; True if that
    moved it to scheduled."""
    window = f"{backend.keys.limit_base}rate:{message.task}|:window"
    backend.redis.zadd(window, {"earlier:1": time.time() - 60})
    spec = Limits(Rate(1, 3600.0, "1/h")).claim_spec((), {})
    [reply], _ = backend._scripts.run(ClaimCall(WORKER, time.time() + 60, time.time(), 1,
                                                [ClaimTask(message.id, message.batch,
                                                           limits=spec)]))
    return reply.reason == "rate limited"


SCRIPTED_TARGETS = [TaskStatus.PROCESSING, TaskStatus.SCHEDULED, TaskStatus.SUCCESS,
                    TaskStatus.FAILED, TaskStatus.QUEUED, TaskStatus.CANCELLED, TaskStatus.SKIPPED]


# What the scripts say about statuses: the literals they write, publish and compare, and
# the batch counter fields they bump. Each pattern is (what it finds, regex).
LUA_STATUS_PATTERNS = [
    ("written", r"'HSET',[^)]*?'status',\s*'(\w+)'"),
    ("published", r"\bstatus\s*=\s*'(\w+)'"),
    ("compared", r"(?:current\[1\]|\bstatus|record\[1\])\s*[~=]=\s*'(\w+)'"),
]
LUA_COUNTER_PATTERN = r"'HINCRBY',\s*[^,]+,\s*'(\w+)'"
# Fields the scripts count up and down that are not batch counters: in a task's hash, a
# child's parents not yet finished and a parent's children not yet finished (lib/edges.lua);
# in a schedule's hash, its revision and its fired and missed occurrences (fire_schedule.lua).
OTHER_COUNTS = {"waiting", "readers", "rev", "fired", "missed"}
LUA_OUTCOME_PATTERN = r"\boutcome\s*[~=]=\s*'(\w+)'"  # finish.lua: success, failed or retry


def lua_literals(pattern: str) -> dict[str, set[str]]:
    """The words ``pattern`` captures in each script, by script name."""
    return {path.name: set(re.findall(pattern, path.read_text()))
            for path in sorted(LUA.rglob("*.lua"))}


def words_outside(found: dict[str, set[str]], allowed: set[str]) -> dict[str, list[str]]:
    """Per script, the words found that are not ``allowed`` (scripts with none left out)."""
    return {name: sorted(words - allowed) for name, words in found.items() if words - allowed}


@pytest.mark.parametrize(("what", "pattern"), LUA_STATUS_PATTERNS, ids=[w for w, _ in
                                                                       LUA_STATUS_PATTERNS])
def test_lua_scripts_name_only_statuses_of_the_status_table(what: str, pattern: str) -> None:
    # Given every status literal the scripts use in this role
    found = lua_literals(pattern)

    # Then each one is a TaskStatus
    assert any(found.values()), f"no status {what} found in {LUA}: the pattern is stale"
    unknown = words_outside(found, set(COUNTERS))
    assert not unknown, f"statuses {what} by the Lua scripts but unknown to TaskStatus: {unknown}"


def test_lua_scripts_bump_only_the_batch_counters_of_the_status_table() -> None:
    # Given the batch counter fields the scripts bump by name
    found = {name: words - OTHER_COUNTS for name, words in
             lua_literals(LUA_COUNTER_PATTERN).items()}

    # Then each is one of status.COUNTERS, so the counters Python reads are the ones moved
    assert any(found.values()), f"no HINCRBY of a named counter found in {LUA}"
    unknown = words_outside(found, set(COUNTERS))
    assert not unknown, f"the Lua scripts bump counters that status.COUNTERS lacks: {unknown}"


def test_every_status_is_one_some_lua_script_moves_a_task_into() -> None:
    # Given the statuses the scripts write, and the outcomes finish.lua writes as statuses
    written = set().union(*lua_literals(LUA_STATUS_PATTERNS[0][1]).values())
    outcomes = lua_literals(LUA_OUTCOME_PATTERN)["finish.lua"] - {"retry"}

    # Then together they are exactly the statuses of the table
    assert written | outcomes == set(COUNTERS)


def test_every_allowed_move_has_a_script() -> None:
    allowed_targets = {target for moves in ALLOWED.values() for target in moves}

    assert allowed_targets <= set(SCRIPTED_TARGETS)


@pytest.mark.parametrize("target", SCRIPTED_TARGETS, ids=str)
@pytest.mark.parametrize("current", list(TaskStatus), ids=str)
def test_lua_scripts_allow_exactly_the_moves_in_the_status_table(
    backend: RedisBackend, current: TaskStatus, target: TaskStatus
) -> None:
    # Given a task forced into ``current``, held by WORKER at attempt 1 with an old lease,
    # and its batch's counters saying so
    batch_id, [message, *_] = enqueue_batch(backend, count=1)
    key = backend.keys.task(message.id)
    backend.redis.hset(key, mapping={"status": current.value, "worker": WORKER, "attempt": "1"})
    backend.redis.hset(backend.keys.batch(batch_id),
                       mapping={name: int(name == current.value) for name in COUNTERS})
    backend.redis.zadd(backend.keys.leases, {message.id: time.time() - 3600})

    # When the script that performs ``target`` runs
    accepted = _perform(backend, message, current, target)

    # Then it accepts exactly when the table allows the move, and refusals change nothing
    assert accepted == (target in ALLOWED[current]), (
        f"{current} -> {target}: script {'accepted' if accepted else 'refused'}, "
        f"ALLOWED says {sorted(ALLOWED[current])}"
    )
    status = backend.redis.hget(key, "status").decode()
    assert status == (target.value if accepted else current.value)
    # And the batch counts the task under exactly its status, in the counter named for it
    counts = backend.batch_counts(batch_id)
    assert {name: counts[name] for name in COUNTERS} == {
        name: int(name == status) for name in COUNTERS
    }


def test_a_starting_worker_stores_its_counts_with_no_outcomes(backend: RedisBackend) -> None:
    # When a worker starts, storing no outcomes but its counts at zero (worker/outcomes.py)
    stored = backend.finish_many([], WORKER, counts={"processed": 0, "failed": 0})

    # Then nothing is refused, and its record has the counts
    assert (stored.refusals, stored.readied) == ([], [])
    record = backend.redis.hgetall(backend.keys.worker(WORKER))
    assert record[b"processed"] == b"0" and record[b"failed"] == b"0"
