"""Each Lua script's codec (``yadtq.backend.scripts``) against the script itself, on a real Redis.

A codec lays out its script's KEYS and ARGV and names its reply. These tests run
every script with the arguments its codec builds, for several tasks at once where
the script takes a group per task, and check where each value landed. A codec
whose group is one argument longer or shorter than the stride its script reads,
or whose header arguments are in another order, would move a value to another
task or another field, and fail here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from yadtq import protocol
from yadtq.backend.due_scripts import ReleaseCall, ReleaseTask, TakeDueCall
from yadtq.backend.keys import Keys
from yadtq.backend.records import (
    PAYLOAD_FIELDS,
    RecordSigner,
    own_values,
    payload,
    record_fields,
    record_signed,
    shared_fields,
    unbatched_fields,
)
from yadtq.backend.schedule_calls import FireOccurrence, FireScheduleCall
from yadtq.backend.script_runner import CALLS, Scripts
from yadtq.backend.scripts import (
    MISSING,
    RETRY,
    CancelCall,
    CancelReply,
    ClaimCall,
    ClaimReply,
    ClaimTask,
    EnqueueCall,
    FailQueuedCall,
    FailQueuedTask,
    FinishCall,
    FinishReply,
    FinishTask,
    RenewCall,
    RequeueCall,
    RequeueReply,
    Verdict,
)
from yadtq.config import Config
from yadtq.protocol import TaskMessage
from yadtq.status import COUNTERS

LUA = Path(__file__).resolve().parents[1] / "yadtq" / "backend" / "lua"
NOW = 1_000_000.0
LEASE = NOW + 60.0
TTL = 3600.0
WORKER = "worker-a"
OTHER_WORKER = "worker-b"


@pytest.fixture
def client(config: Config) -> Iterator[redis.Redis]:
    connected = redis.Redis.from_url(config.redis_url)
    yield connected
    connected.close()


@pytest.fixture
def keys(config: Config) -> Keys:
    return Keys(config.key_prefix, config.queue)


@pytest.fixture
def scripts(client: redis.Redis, keys: Keys) -> Scripts:
    return Scripts(client, keys)


def queued(client: redis.Redis, keys: Keys, count: int = 1, batch: str | None = None,
           **options: Any) -> list[TaskMessage]:
    """Queued task records (and their batch's counters), as a client writes them."""
    messages = [protocol.build("add", [i, 10], batch=batch, index=i, **options)
                for i in range(count)]
    for message in messages:
        client.hset(keys.task(message.id), mapping=record_fields(message, NOW))
    if batch is not None:
        client.hset(keys.batch(batch), mapping={"total": count, **dict.fromkeys(COUNTERS, 0),
                                                "queued": count})
    return messages


def claimed(scripts: Scripts, messages: list[TaskMessage], worker: str = WORKER) -> None:
    replies, _ = scripts.run(ClaimCall(worker, LEASE, NOW, len(messages),
                                       [ClaimTask(m.id, m.batch) for m in messages]))
    assert all(reply.ok for reply in replies), replies


def text_hash(client: redis.Redis, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(key).items()}


def counters(client: redis.Redis, keys: Keys, batch: str) -> dict[str, int]:
    raw = text_hash(client, keys.batch(batch))
    return {name: int(raw[name]) for name in COUNTERS}


def events(client: redis.Redis, keys: Keys, task_id: str) -> list[str]:
    return [json.loads(e)["event"] for e in client.lrange(keys.task_history(task_id), 0, -1)]


def test_every_lua_script_has_one_codec_and_every_codec_a_script() -> None:
    scripts = sorted(path.name for path in LUA.glob("*.lua"))

    assert sorted(call.script for call in CALLS) == scripts


# --- enqueue.lua ------------------------------------------------------------------------


def test_enqueue_writes_each_record_from_the_shared_fields_and_its_own_values(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given three messages of one map, the last with keyword arguments and no index
    messages = [protocol.build("add", [1, 2], batch="b-1", index=0, max_retries=2),
                protocol.build("add", [3, 4], batch="b-1", index=1, max_retries=2),
                protocol.build("add", [], {"a": 5, "b": 6}, batch="b-1", max_retries=2)]

    # When one call writes their records, signed with the secret
    shared = shared_fields(messages[0], NOW)
    reply, _ = scripts.run(EnqueueCall("b-1", shared, [
        (m.id, own_values(m, RecordSigner("s3cret", shared))) for m in messages]))

    # Then each record is the one the message makes, under its own id, unset fields absent,
    # and its signature checks out with that secret only
    assert (reply.written, reply.due_at) == (3, None)
    assert client.keys(keys.doorbell("*")) == []  # and no doorbell rang
    for message in messages:
        record = text_hash(client, keys.task(message.id))
        assert record == record_fields(message, NOW, "s3cret")
        assert record_signed("s3cret", message.id, record)
        assert not record_signed("other", message.id, record)
        assert not record_signed("s3cret", messages[0].id if message is not messages[0]
                                 else messages[1].id, record)  # bound to its own id
    assert "index" not in text_hash(client, keys.task(messages[2].id))
    # And the batch lists their ids in order
    assert [i.decode() for i in client.lrange(keys.batch_tasks("b-1"), 0, -1)] == [
        m.id for m in messages]


def test_enqueue_of_a_lone_task_lists_it_in_no_batch_and_rings_its_doorbell_naming_it(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    message = protocol.build("add", [1, 2])
    for _ in range(3):  # an earlier ring of this doorbell
        client.lpush(keys.doorbell(5), "older")

    shared = shared_fields(message, NOW)
    scripts.run(EnqueueCall(None, shared, [(message.id, own_values(message, None))],
                            ring=5, rings_kept=2))

    record = text_hash(client, keys.task(message.id))
    assert record == record_fields(message, NOW)
    assert not record_signed("s3cret", message.id, record)  # no secret, no signature
    assert client.keys(keys.batch_tasks("*")) == []
    assert client.lrange(keys.doorbell(5), 0, -1) == [message.id.encode(), b"older"]


# --- claim.lua --------------------------------------------------------------------------


def test_claim_reads_each_tasks_keys_and_arguments_at_the_codecs_stride(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given a batched task, a task in no batch, and a message whose record is missing
    [batched] = queued(client, keys, batch="b-1")
    [lone] = queued(client, keys)
    unrecorded = protocol.build("multiply", [3, 4])

    # When one call claims all three, the last with the fields to create its record from
    replies, _ = scripts.run(ClaimCall(WORKER, LEASE, NOW, 3, [
        ClaimTask(batched.id, batched.batch), ClaimTask(lone.id, None),
        ClaimTask(unrecorded.id, None, unbatched_fields(unrecorded, NOW, None))]))

    # Then each reply names the attempt claimed, in order
    assert replies == [ClaimReply(Verdict.OK, attempt=1)] * 3
    # And each task, under its own id, is processing by this worker with a lease
    ids = [batched.id, lone.id, unrecorded.id]
    assert dict(client.zrange(keys.leases, 0, -1, withscores=True)) == {
        task_id.encode(): LEASE for task_id in ids}
    for task_id in ids:
        record = text_hash(client, keys.task(task_id))
        assert (record["status"], record["worker"], float(record["started_at"])) == (
            "processing", WORKER, NOW)
        assert events(client, keys, task_id) == ["claimed"]
    # And the record was created from the fields the codec sent
    assert text_hash(client, keys.task(unrecorded.id))["task"] == "multiply"
    # And only the batched task moved its batch's counters
    assert counters(client, keys, "b-1") == {**dict.fromkeys(COUNTERS, 0), "processing": 1}


def test_claim_takes_the_limit_and_served_names_from_its_header_arguments(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given three queued tasks
    first, second, third = queued(client, keys, count=3)

    # When a worker serving only "multiply" may claim one of them, then one serving "add"
    not_served, _ = scripts.run(ClaimCall(WORKER, LEASE, NOW, 1, [ClaimTask(first.id, None)],
                                          served=["multiply"]))
    replies, _ = scripts.run(ClaimCall(WORKER, LEASE, NOW, 1,
                                       [ClaimTask(m.id, None) for m in (first, second, third)],
                                       served=["add"]))

    # Then the names and the limit were read where the codec put them
    assert not_served == [ClaimReply(Verdict.SKIP, reason="not served here")]
    assert replies == [ClaimReply(Verdict.OK, attempt=1),
                       ClaimReply(Verdict.SKIP, reason="over the limit"),
                       ClaimReply(Verdict.SKIP, reason="over the limit")]


def test_claim_reply_names_why_a_task_was_skipped(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given a task already claimed, and an id with no record
    [message] = queued(client, keys)
    claimed(scripts, [message])

    # When both are claimed again, without fields to create a record
    replies, _ = scripts.run(ClaimCall(OTHER_WORKER, LEASE, NOW, 2,
                                       [ClaimTask(message.id, None), ClaimTask("no-such", None)]))

    # Then the replies say so by name
    assert replies == [ClaimReply(Verdict.SKIP, reason="processing"),
                       ClaimReply(Verdict.SKIP, reason=MISSING)]
    assert [reply.missing for reply in replies] == [False, True]
    assert not any(reply.ok for reply in replies)


# --- finish.lua -------------------------------------------------------------------------


def finish_task(message: TaskMessage, outcome: str, stored: tuple[str, str, str],
                ended_at: float, retry_at: float | None = None) -> FinishTask:
    return FinishTask(message.id, message.batch, 1, outcome, retry_at, summary="",
                      result_or_error_type=stored[0], error=stored[1], traceback=stored[2],
                      ended_at=ended_at)


def test_finish_stores_each_tasks_outcome_from_its_own_nine_arguments(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given three tasks of a batch, claimed
    ok, bad, again = queued(client, keys, count=3, batch="b-2")
    claimed(scripts, [ok, bad, again])

    # When one call stores a success, a failure and a retry, each with its own values
    finished, _ = scripts.run(FinishCall(WORKER, NOW + 10, TTL, [
        finish_task(ok, "success", ("[42]", "", ""), ended_at=NOW + 1),
        finish_task(bad, "failed", ("ValueError", "bad input", "Traceback ..."), NOW + 2),
        finish_task(again, RETRY, ("OSError", "flaky", "tb"), NOW + 3, retry_at=NOW + 99)]))

    # Then every outcome was accepted, and no task depended on them
    assert finished.replies == [FinishReply(Verdict.OK)] * 3
    assert finished.readied == []
    # And each record holds exactly its own task's values
    success = text_hash(client, keys.task(ok.id))
    assert (success["status"], success["result"], float(success["finished_at"])) == (
        "success", "[42]", NOW + 1)
    failure = text_hash(client, keys.task(bad.id))
    assert (failure["status"], failure["error_type"], failure["error"], failure["traceback"],
            float(failure["finished_at"])) == (
        "failed", "ValueError", "bad input", "Traceback ...", NOW + 2)
    retry = text_hash(client, keys.task(again.id))
    assert (retry["status"], retry["attempt"], float(retry["retry_at"])) == (
        "queued", "2", NOW + 99)
    assert client.zscore(keys.retries, again.id) == NOW + 99
    # And the header's ttl and the batch keys reached the script
    assert 0 < client.ttl(keys.task(ok.id)) <= TTL
    assert client.ttl(keys.task(again.id)) == -1
    assert counters(client, keys, "b-2") == {**dict.fromkeys(COUNTERS, 0), "queued": 1,
                                             "success": 1, "failed": 1}


def test_finish_reply_names_the_status_attempt_and_worker_of_a_refusal(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given a task another worker holds, and an id with no record
    [message] = queued(client, keys)
    claimed(scripts, [message], worker=OTHER_WORKER)
    unknown = protocol.build("add", [1, 2])

    # When this worker tries to finish both
    finished, _ = scripts.run(FinishCall(WORKER, NOW, TTL, [
        finish_task(message, "success", ("1", "", ""), NOW),
        finish_task(unknown, "success", ("1", "", ""), NOW)]))

    # Then each refusal says what the task was and who held it
    assert finished.replies == [FinishReply(Verdict.REFUSED, "processing", 1, OTHER_WORKER),
                       FinishReply(Verdict.REFUSED, MISSING, None, "")]
    assert events(client, keys, message.id) == ["claimed", "refused"]


def test_a_task_group_one_argument_longer_than_the_scripts_stride_is_caught(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given a codec that sends one argument too many per task
    class Longer(FinishTask):
        def args(self) -> list[Any]:
            return [*super().args(), "extra"]

    first, second = queued(client, keys, count=2)
    claimed(scripts, [first, second])
    tasks = [Longer(**vars(finish_task(m, "success", ("1", "", ""), NOW)))
             for m in (first, second)]

    # When the script reads the second task at its own stride, Then it does not run it
    with pytest.raises(redis.ResponseError, match="outcome must be success, failed or retry"):
        scripts.run(FinishCall(WORKER, NOW, TTL, tasks))
    assert client.hget(keys.task(second.id), "status") == b"processing"


# --- requeue.lua ------------------------------------------------------------------------


def test_requeue_answers_the_new_attempt_and_the_payload_by_field_name(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given a claimed batched task with options, whose lease has expired
    [message] = queued(client, keys, batch="b-3", max_retries=2, timeout=5.0,
                       retry_on=("OSError",))
    claimed(scripts, [message])

    # When a reaper requeues it
    reply, _ = scripts.run(RequeueCall(message.id, message.batch, handback=False,
                                       now=LEASE + 1, worker_id=OTHER_WORKER))

    # Then the reply names the new attempt and every payload field, as the record holds them
    stored = payload(client.hmget(keys.task(message.id), *PAYLOAD_FIELDS))
    assert reply == RequeueReply(Verdict.OK, attempt=2, payload=stored)
    assert reply.payload is not None
    assert (reply.payload["task"], json.loads(reply.payload["args"]), reply.payload["batch"],
            reply.payload["index"], reply.payload["max_retries"], reply.payload["timeout"],
            reply.payload["code"]) == ("add", [0, 10], "b-3", "0", "2", "5.0", "")
    # And the task is queued again, its lease gone, its batch counting it as queued
    assert client.hget(keys.task(message.id), "status") == b"queued"
    assert client.zscore(keys.leases, message.id) is None
    assert counters(client, keys, "b-3")["queued"] == 1


def test_requeue_reply_names_why_it_did_nothing(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given a task WORKER holds under a live lease, and a task still queued
    held, waiting = queued(client, keys, count=2)
    claimed(scripts, [held])

    # When the lease is reaped too early, another worker hands it back, and the queued one
    # is requeued
    early, _ = scripts.run(RequeueCall(held.id, None, False, NOW, OTHER_WORKER))
    not_its, _ = scripts.run(RequeueCall(held.id, None, True, NOW, OTHER_WORKER))
    not_running, _ = scripts.run(RequeueCall(waiting.id, None, False, NOW, OTHER_WORKER))

    # Then each reply says why, and the holder's handback (mode read from ARGV) succeeds
    assert early == RequeueReply(Verdict.SKIP, reason="lease live")
    assert not_its == RequeueReply(Verdict.SKIP, reason=f"held by {WORKER}")
    assert not_running == RequeueReply(Verdict.SKIP, reason="queued")
    handed, _ = scripts.run(RequeueCall(held.id, None, True, NOW, WORKER))
    assert (handed.verdict, handed.attempt) == (Verdict.OK, 2)


def test_requeue_of_a_dead_workers_task_needs_that_worker_to_hold_it_not_an_expired_lease(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given a task WORKER holds under a live lease
    [held] = queued(client, keys)
    claimed(scripts, [held])

    # When a reaper takes it for a dead OTHER_WORKER, then for a dead WORKER
    wrong, _ = scripts.run(RequeueCall(held.id, None, False, NOW, "reaper",
                                       dead_holder=OTHER_WORKER))
    taken, _ = scripts.run(RequeueCall(held.id, None, False, NOW, "reaper", dead_holder=WORKER))

    # Then only the holder's death moves it, before its lease ran out, and the history says so
    assert wrong == RequeueReply(Verdict.SKIP, reason=f"held by {WORKER}")
    assert (taken.verdict, taken.attempt) == (Verdict.OK, 2)
    last = json.loads(client.lrange(keys.task_history(held.id), -1, -1)[0])
    assert (last["event"], last["worker"], last["attempt"]) == ("worker died", WORKER, 1)
    assert "reaper" in last["detail"]


# --- cancel.lua -------------------------------------------------------------------------


def test_cancel_answers_the_previous_status_and_holder_and_records_who_asked(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given a queued and a processing task of a batch
    waiting, running = queued(client, keys, count=2, batch="b-4")
    claimed(scripts, [running])

    # When both are cancelled, and the first once more
    first, _ = scripts.run(CancelCall(waiting.id, waiting.batch, NOW, TTL, "tester"))
    second, _ = scripts.run(CancelCall(running.id, running.batch, NOW, TTL, "tester"))
    again, _ = scripts.run(CancelCall(waiting.id, waiting.batch, NOW, TTL, "tester"))

    # Then the replies name the status each had and who held it, or why nothing was done
    assert first == CancelReply(Verdict.OK, "queued", "")
    assert second == CancelReply(Verdict.OK, "processing", WORKER)
    assert again == CancelReply(Verdict.SKIP, "cancelled")
    # And the header arguments landed: who asked, the time, the ttl, the batch counters
    record = text_hash(client, keys.task(waiting.id))
    assert (record["status"], record["error"], float(record["finished_at"])) == (
        "cancelled", "cancelled by tester", NOW)
    assert 0 < client.ttl(keys.task(waiting.id)) <= TTL
    assert client.zscore(keys.leases, running.id) is None
    assert counters(client, keys, "b-4") == {**dict.fromkeys(COUNTERS, 0), "cancelled": 2}


# --- fail_queued.lua --------------------------------------------------------------------


def test_fail_queued_fails_each_queued_task_at_its_stride_and_counts_them(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given two queued tasks of a batch and one a worker claimed meanwhile
    first, second, taken = queued(client, keys, count=3, batch="b-5")
    claimed(scripts, [taken])

    # When one call fails all three as undelivered
    count, _ = scripts.run(FailQueuedCall(NOW, TTL, "BrokerUnavailable", "no broker",
                                          "undelivered", [FailQueuedTask(m.id, m.batch)
                                                          for m in (first, second, taken)]))

    # Then the two queued ones failed with the error the codec sent, and the claimed one ran on
    assert count == 2
    for message in (first, second):
        record = text_hash(client, keys.task(message.id))
        assert (record["status"], record["error_type"], record["error"],
                float(record["finished_at"])) == ("failed", "BrokerUnavailable", "no broker", NOW)
        assert 0 < client.ttl(keys.task(message.id)) <= TTL
    assert client.hget(keys.task(taken.id), "status") == b"processing"
    assert counters(client, keys, "b-5") == {**dict.fromkeys(COUNTERS, 0), "processing": 1,
                                             "failed": 2}


def test_fail_queued_writes_a_failed_record_for_a_refused_task_that_has_none(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given no record of task "hello-1" (a plain message written by another Kafka client)
    # When a refusal fails it, naming the task to record it as
    count, _ = scripts.run(FailQueuedCall(NOW, TTL, "MessageRefused", "not signed", "refused",
                                          [FailQueuedTask("hello-1", None, "add"),
                                           FailQueuedTask("other-1", None, "")]))

    # Then it has a failed record saying why, and a task with no name to record stays absent
    assert count == 1
    record = text_hash(client, keys.task("hello-1"))
    assert (record["status"], record["task"], record["error_type"], record["error"],
            record["attempt"]) == ("failed", "add", "MessageRefused", "not signed", "1")
    assert 0 < client.ttl(keys.task("hello-1")) <= TTL
    assert [json.loads(e)["detail"] for e in client.lrange(keys.task_history("hello-1"), 0, -1)
            ] == ["refused: MessageRefused"]
    assert not client.exists(keys.task("other-1"))


# --- take_due.lua -----------------------------------------------------------------------


def test_take_due_takes_the_due_ids_up_to_the_limit_and_holds_them(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given two retries due and one not yet
    client.zadd(keys.retries, {"a": NOW - 2, "b": NOW - 1, "c": NOW + 10})

    # When one is taken, holding it 30 s, and then the rest
    (first, judged_at), _ = scripts.run(TakeDueCall("retries", NOW, hold=30.0, limit=1))
    (rest, _), _ = scripts.run(TakeDueCall("retries", NOW, hold=30.0, limit=10))

    # Then the ids come back oldest first, each held now + hold, judged at the given now
    assert (first, rest, judged_at) == (["a"], ["b"], NOW)
    assert client.zscore(keys.retries, "a") == NOW + 30
    assert client.zscore(keys.retries, "c") == NOW + 10


def test_enqueue_with_a_countdown_writes_them_scheduled_due_on_redis_clock_and_sends_nothing(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given two tasks of a map, due 30 s from now
    messages = [protocol.build("add", [i, 1], batch="b-9", index=i) for i in range(2)]
    shared = shared_fields(messages[0], NOW)
    seconds, microseconds = client.time()
    redis_now = seconds + microseconds / 1e6

    # When they are written with a countdown
    reply, _ = scripts.run(EnqueueCall(
        "b-9", shared, [(m.id, own_values(m, None)) for m in messages], due="in:30.0"))

    # Then they are scheduled, due 30 s after Redis's clock read them, in the scheduled set
    written, due_at = reply.written, reply.due_at
    assert written == 2 and redis_now + 29 < due_at < redis_now + 31
    for message in messages:
        record = text_hash(client, keys.task(message.id))
        assert (record["status"], float(record["due_at"])) == ("scheduled",
                                                               pytest.approx(due_at))
        assert client.zscore(keys.scheduled, message.id) == pytest.approx(due_at)
    # And an ETA is taken as it is
    eta = protocol.build("add", [5, 5])
    at_reply, _ = scripts.run(EnqueueCall(None, shared_fields(eta, NOW),
                                         [(eta.id, own_values(eta, None))], due=f"at:{NOW}"))
    assert at_reply.due_at == NOW


def test_release_moves_due_scheduled_tasks_to_queued_once_and_says_which_to_produce(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given a scheduled task of a batch, one already released, and one cancelled
    due, released, cancelled = queued(client, keys, count=3, batch="b-8")
    client.hset(keys.task(due.id), "status", "scheduled")
    client.hset(keys.task(cancelled.id), "status", "cancelled")
    client.hset(keys.batch("b-8"), mapping={"scheduled": 1, "queued": 1, "cancelled": 1})
    tasks = [ReleaseTask(m.id, m.batch) for m in (due, released, cancelled)]

    # When release runs, twice (a taker that died before producing)
    first, _ = scripts.run(ReleaseCall(NOW, WORKER, tasks))
    again, _ = scripts.run(ReleaseCall(NOW, WORKER, tasks))

    # Then the scheduled one is queued once, counted once, and the cancelled one never sent
    assert first == again == [True, True, False]
    assert client.hget(keys.task(due.id), "status") == b"queued"
    assert counters(client, keys, "b-8") == {**dict.fromkeys(COUNTERS, 0), "queued": 2,
                                             "cancelled": 1}
    assert [json.loads(e)["event"] for e in client.lrange(keys.task_history(due.id), 0, -1)
            ] == ["due"]


# --- fire_schedule.lua ------------------------------------------------------------------


def test_fire_schedule_writes_each_occurrence_at_its_stride_once_and_records_the_missed(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given a schedule at revision 3 and two occurrences to fire, one missed before them
    client.hset(keys.schedule("s"), mapping={"rev": 3, "next": NOW - 2})
    fire = [FireOccurrence(NOW - 2 + i, f"s-{i}", {"task": "add", "args": f"[{i}]"})
            for i in range(2)]
    call = FireScheduleCall("s", "3", NOW + 1, NOW, WORKER, "allow", None, [NOW - 3], fire,
                            history_kept=10, unrecorded=4)

    # When it is fired, and fired again from the same read
    first, _ = scripts.run(call)
    again, _ = scripts.run(call)

    # Then each task got its own fields, scheduled at its occurrence, and only once
    assert first == ("ok", ["s-0", "s-1"]) and again == ("moved", [])
    for i, one in enumerate(fire):
        record = text_hash(client, keys.task(one.task_id))
        assert (record["args"], record["status"], float(record["due_at"]), record["fired_by"]
                ) == (f"[{i}]", "scheduled", NOW - 2 + i, WORKER)
        assert client.zscore(keys.scheduled, one.task_id) == NOW - 2 + i
    assert client.zscore(keys.schedules, "s") == NOW + 1
    schedule = text_hash(client, keys.schedule("s"))
    assert (schedule["rev"], schedule["fired"], schedule["missed"], schedule["last_task"]) == \
        ("4", "2", "5", "s-1")
    assert [json.loads(row)["outcome"] for row in
            client.lrange(keys.schedule_history("s"), 0, -1)] == ["missed", "fired", "fired"]


def test_fire_schedule_refuses_an_occurrence_not_yet_due_on_the_clock_it_judges_by(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    client.hset(keys.schedule("s"), mapping={"rev": 1, "next": NOW + 5})
    call = FireScheduleCall("s", "1", NOW + 10, NOW, WORKER, "allow", None, [],
                            [FireOccurrence(NOW + 5, "s-5", {"task": "add"})])
    (verdict, judged_at), _ = scripts.run(call)
    assert (verdict, float(judged_at[0])) == ("early", NOW)
    assert not client.exists(keys.task("s-5"))


# --- renew.lua --------------------------------------------------------------------------


def test_renew_extends_this_workers_leases_and_names_the_cancelled_tasks(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given a task this worker holds, one another worker holds, and one cancelled meanwhile
    mine, theirs, cancelled = queued(client, keys, count=3)
    claimed(scripts, [mine, cancelled])
    claimed(scripts, [theirs], worker=OTHER_WORKER)
    scripts.run(CancelCall(cancelled.id, None, NOW, TTL, "tester"))

    # When this worker renews all three
    reply, _ = scripts.run(RenewCall(WORKER, NOW + 500, [mine.id, theirs.id, cancelled.id]))

    # Then only its own lease moved, and the cancelled task is named
    assert reply == [cancelled.id]
    assert client.zscore(keys.leases, mine.id) == NOW + 500
    assert client.zscore(keys.leases, theirs.id) == LEASE


# --- running the scripts ----------------------------------------------------------------


def test_a_script_redis_lost_is_loaded_again_and_the_call_run_once_more(
    client: redis.Redis, keys: Keys, scripts: Scripts
) -> None:
    # Given a due retry, and a Redis that has forgotten every script (as after a restart)
    client.zadd(keys.retries, {"a": NOW - 1})
    client.script_flush()

    # When a script runs with other commands in the same round trip
    (taken, _), also = scripts.run(TakeDueCall("retries", NOW, 30.0, 10),
                                   also=lambda pipe: pipe.zcard(keys.retries))

    # Then the script ran (once) and the other commands' replies come back too
    assert taken == ["a"]
    assert also == [1]
    assert client.zscore(keys.retries, "a") == NOW + 30


@pytest.mark.parametrize("parse, reply", [
    (ClaimReply.parse, [b"ok", 1, b"extra"]),
    (ClaimReply.parse, [b"refused", b"processing"]),
    (FinishReply.parse, [b"ok", b"extra"]),
    (FinishReply.parse, [b"refused", b"processing", b"1"]),
    (RequeueReply.parse, [b"ok", 2, *[b""] * (len(PAYLOAD_FIELDS) - 1)]),
    (CancelReply.parse, [b"ok", b"queued"]),
    (CancelReply.parse, [b"done", b"queued"]),
], ids=["claim-longer", "claim-verdict", "finish-ok-longer", "finish-refused-shorter",
        "requeue-payload-short", "cancel-shorter", "cancel-verdict"])
def test_a_reply_of_another_shape_than_the_codec_knows_is_refused(parse: Any, reply: list
                                                                  ) -> None:
    with pytest.raises(ValueError,
                       match="the script and its codec in yadtq/backend/scripts.py disagree"):
        parse(reply)
