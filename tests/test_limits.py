"""Rate and concurrency limits (issue 23): declared on a task, held across every worker,
decided in claim.lua on Redis's clock (``yadtq/backend/lua/lib/limits.lua``).

The script-level tests drive claim.lua and the scripts that give a share back with a
test's clock (``ClaimCall.limits_now``), so no test waits out a window; the rest run real
worker processes and read what happened from the tasks' records.
"""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from helpers import most_at_once, most_in_a_window, wait_until
from kafka import KafkaProducer

import yadtq
from worker_node.tasks import call_api, exclusive, throttled
from yadtq import protocol, registry
from yadtq.backend import Outcome, RedisBackend
from yadtq.backend.scripts import ClaimCall, ClaimReply, ClaimTask
from yadtq.limits import Limits, Rate
from yadtq.status import TaskStatus

NOW = 1_000_000.0
WORKER = "worker-a"
RATE_3 = Limits(Rate(3, 1.0, "3/s")).claim_spec((), {})
CONCURRENCY_2 = Limits(concurrency=2).claim_spec((), {})


# --- helpers -------------------------------------------------------------------------


def queued(backend: RedisBackend, count: int = 1, task: str = "add",
           batch: str | None = None) -> list[protocol.TaskMessage]:
    """``count`` tasks written queued, as a client writes them before producing."""
    messages = [protocol.build(task, [i, 1], batch=batch, index=i if batch else None)
                for i in range(count)]
    backend.enqueue(messages, batch_id=batch, batch_total=count if batch else None)
    return messages


def claim(backend: RedisBackend, messages: Sequence[protocol.TaskMessage], spec: str,
          at: float, worker: str = WORKER) -> list[ClaimReply]:
    """Claim ``messages`` under the limits ``spec`` with the limits' clock at ``at``."""
    replies, _ = backend._scripts.run(ClaimCall(
        worker, at + 60, at, len(messages),
        [ClaimTask(m.id, m.batch, limits=spec) for m in messages], limits_now=at))
    return replies


def record(backend: RedisBackend, task_id: str) -> dict[str, Any]:
    found = backend.task_record(task_id)
    assert found is not None
    return found


# --- declaring limits ------------------------------------------------------------------


@pytest.mark.parametrize(("options", "says"), [
    ({"rate_limit": "20/x"}, "'20/s', '100/m' or '5000/h'"),
    ({"rate_limit": "0/s"}, "a count of at least 1"),
    ({"rate_limit": "-5/m"}, "is not a rate"),
    ({"concurrency": 0}, "a whole number of at least 1"),
    ({"concurrency": -2}, "a whole number of at least 1"),
    ({"concurrency": 1.5}, "a whole number of at least 1"),
    ({"rate_key": "customer"}, "needs a rate_limit"),
    ({"rate_limit": "5/s", "rate_key": "client"}, "names no parameter"),
])
def test_a_bad_limit_is_refused_at_decoration_saying_what_is_allowed(
    options: dict[str, Any], says: str
) -> None:
    # When a task declares a bad limit
    with pytest.raises(ValueError) as caught:
        @yadtq.task(name=f"bad_{uuid.uuid4().hex[:8]}", **options)
        def bad(customer: str) -> None: ...

    # Then the error says what is allowed
    assert says in str(caught.value)


def test_a_rate_key_is_the_bound_value_of_its_parameter_however_the_call_passes_it() -> None:
    # Given a task keyed by its customer parameter
    limits = registry.options("call_api").limits
    assert limits is not None and limits.describe() == "rate 5/s per customer"

    # Then positional, keyword and JSON values all key it by the customer's value
    assert limits.key_value(["acme"], {}) == "acme"
    assert limits.key_value([], {"customer": "acme", "seconds": 1}) == "acme"
    assert limits.key_value([42], {}) == "42"
    assert json.loads(limits.claim_spec(["acme"], {})) == {
        "r": [5, 1.0], "rt": "5/s", "k": "acme"}


# --- claim.lua: rate limits ------------------------------------------------------------


def test_a_rate_limited_claim_admits_n_and_schedules_the_rest_spread_a_period_over_n_apart(
    backend: RedisBackend,
) -> None:
    # Given five queued tasks of a batch under a 3/s limit
    messages = queued(backend, 5, batch="b-rate")

    # When one claim takes them all at NOW
    replies = claim(backend, messages, RATE_3, NOW)

    # Then three start and two are refused, as scheduled, their attempt unchanged
    assert [r.reason or "ok" for r in replies] == ["ok"] * 3 + ["rate limited"] * 2
    waiting = [record(backend, m.id) for m in messages[3:]]
    assert [(r["status"], r["attempt"], r["waits_for"]) for r in waiting] == [
        ("scheduled", 1, "rate 3/s")] * 2
    # And each is due when the window lets one more start, the next 1/3 s after
    assert [r["due_at"] for r in waiting] == pytest.approx([NOW + 1, NOW + 1 + 1 / 3])
    assert backend.scheduled.due_at([m.id for m in messages[3:]]) == pytest.approx(
        [NOW + 1, NOW + 1 + 1 / 3])
    # And the batch counts them scheduled, the history says why
    counts = backend.batch_counts("b-rate")
    assert (counts["processing"], counts["scheduled"], counts["queued"]) == (3, 2, 0)
    assert backend.task_history(messages[4].id)[-1]["event"] == "limited"
    # And the queue view shows what waits for which limit
    assert backend.limits.waiting() == [{"limit": "rate 3/s", "task": "add", "kind": "rate",
                                         "running": 3, "waiting": 2}]


def test_no_window_of_the_period_ever_holds_more_than_n_starts(backend: RedisBackend) -> None:
    # Given tasks arriving at random moments over 6 s under a 3/s limit
    rng = random.Random(23)
    at, started = NOW, []
    for _ in range(60):
        at += rng.expovariate(8.0)
        [message] = queued(backend)
        # When each is claimed as it arrives
        [reply] = claim(backend, [message], RATE_3, at)
        if reply.ok:
            started.append(at)

    # Then no window of one second holds more than 3 starts, and the limit was reached
    assert most_in_a_window(started, 1.0) == 3
    assert len(started) >= 15


def test_a_task_refused_again_after_its_turn_is_due_at_the_next_free_moment_not_last(
    backend: RedisBackend,
) -> None:
    # Given a 3/s limit spent at NOW, a task refused (its turn NOW + 1), four more refused
    # behind it (turns up to NOW + 2 1/3), and three newcomers that took the window at NOW + 1
    claim(backend, queued(backend, 3), RATE_3, NOW)
    [late] = queued(backend)
    claim(backend, [late], RATE_3, NOW)
    claim(backend, queued(backend, 4), RATE_3, NOW)
    assert all(r.ok for r in claim(backend, queued(backend, 3), RATE_3, NOW + 1))

    # When the late one, released at its turn, is claimed at NOW + 1.05
    backend.redis.hset(backend.keys.task(late.id), "status", "queued")
    [reply] = claim(backend, [late], RATE_3, NOW + 1.05)

    # Then it is due when the window next lets one start, not after the four behind it
    assert reply.reason == "rate limited"
    assert record(backend, late.id)["due_at"] == pytest.approx(NOW + 2)


def test_a_keyed_rate_limit_counts_each_key_apart(backend: RedisBackend) -> None:
    # Given a 5/s limit keyed by customer, and six calls for each of two customers
    limits = registry.options("call_api").limits
    assert limits is not None
    calls = {customer: queued(backend, 6, task="call_api") for customer in ("acme", "globex")}

    # When all are claimed at NOW, each under its customer's key
    replies = {customer: backend._scripts.run(ClaimCall(
        WORKER, NOW + 60, NOW, 6,
        [ClaimTask(m.id, None, limits=limits.claim_spec([customer], {})) for m in messages],
        limits_now=NOW))[0] for customer, messages in calls.items()}

    # Then each customer gets five starts: one customer's calls never spend another's
    assert {c: sum(r.ok for r in rs) for c, rs in replies.items()} == {"acme": 5, "globex": 5}
    assert record(backend, calls["acme"][5].id)["waits_for"] == "rate 5/s (acme)"


# --- claim.lua and the scripts that end a task: concurrency limits ---------------------


def test_a_concurrency_limit_refuses_past_n_and_an_ended_holder_wakes_the_oldest_waiter(
    backend: RedisBackend,
) -> None:
    # Given three tasks under a limit of 2, claimed in one go
    first, second, third = queued(backend, 3)
    replies = claim(backend, [first, second, third], CONCURRENCY_2, NOW)

    # Then two run; the third waits scheduled, attempt unchanged, due at no set time
    assert [r.reason or "ok" for r in replies] == ["ok", "ok", "concurrency limited"]
    waiter = record(backend, third.id)
    assert (waiter["status"], waiter["attempt"], waiter["waits_for"]) == (
        "scheduled", 1, "concurrency 2")
    assert backend.scheduled.due_at([third.id]) == [None]

    # When a holder's outcome is stored
    backend.finish(Outcome(first.id, None, 1, TaskStatus.SUCCESS, result=1), WORKER)

    # Then the waiter is due at once (on Redis's clock), for the maintenance thread to send
    [due] = backend.scheduled.due_at([third.id])
    assert due is not None and due <= float(backend.redis.time()[0]) + 1
    # And once released and claimed again it holds the share given back
    backend.scheduled.release([third.id], WORKER)
    assert claim(backend, [third], CONCURRENCY_2, NOW + 1)[0].ok
    assert record(backend, third.id).get("waits_for") is None


@pytest.mark.parametrize("ending", ["reaped", "cancelled", "retried", "failed"])
def test_every_way_a_holder_stops_processing_gives_its_share_back(
    backend: RedisBackend, ending: str
) -> None:
    # Given a limit of 2 held by two tasks, and a third waiting
    holder, other, waiter = queued(backend, 3)
    claim(backend, [holder, other, waiter], CONCURRENCY_2, NOW)

    # When the holder stops processing this way
    if ending == "reaped":  # its worker died or its lease ran out
        assert backend.requeue(holder.id, None, worker_id="reaper",
                               now=time.time() + 3600) is not None
    elif ending == "cancelled":
        assert backend.cancel(holder.id, None, requested_by="test") == "processing"
    else:  # a timeout ends it failed; a retryable failure queues it to retry
        outcome = Outcome(holder.id, None, 1, TaskStatus.FAILED, error_type="TaskTimeout",
                          error="ran past 1 s",
                          retry_at=time.time() + 60 if ending == "retried" else None)
        assert backend.finish(outcome, WORKER) is None

    # Then the waiter is woken, and a share is free for it
    assert backend.scheduled.due_at([waiter.id]) != [None]
    backend.scheduled.release([waiter.id], WORKER)
    assert claim(backend, [waiter], CONCURRENCY_2, NOW + 1)[0].ok


def test_a_cancelled_waiter_leaves_the_waiting_list(backend: RedisBackend) -> None:
    # Given a limit of 2 held, and a waiter
    *holders, waiter = queued(backend, 3)
    claim(backend, [*holders, waiter], CONCURRENCY_2, NOW)
    assert backend.limits.waiting()[0]["waiting"] == 1

    # When the waiter is cancelled
    assert backend.cancel(waiter.id, None, requested_by="test") == "scheduled"

    # Then nothing waits for the limit any more
    assert backend.limits.waiting()[0]["waiting"] == 0


def test_a_full_limit_drops_holders_no_longer_processing_before_refusing(
    backend: RedisBackend,
) -> None:
    # Given a limit of 2 whose holders' records vanished (deleted by hand)
    holders = queued(backend, 2)
    claim(backend, holders, CONCURRENCY_2, NOW)
    for message in holders:
        backend.redis.delete(backend.keys.task(message.id))

    # When another task is claimed
    [newcomer] = queued(backend)

    # Then it is admitted: the stale shares did not leak
    assert claim(backend, [newcomer], CONCURRENCY_2, NOW + 1)[0].ok


def test_the_sweep_wakes_waiters_a_missed_wake_up_left_with_free_shares(
    backend: RedisBackend,
) -> None:
    # Given a limit of 2, full, with two waiters, whose holders were removed without a
    # wake-up (as if a script had missed one)
    *holders, one, two = queued(backend, 4)
    claim(backend, [*holders, one, two], CONCURRENCY_2, NOW)
    for message in holders:
        backend.redis.delete(backend.keys.task(message.id))

    # When the sweep runs soon after, then once the limit has been idle for a while
    soon = backend.limits.wake_stranded(now=NOW + 1)
    later = backend.limits.wake_stranded(now=NOW + 60)

    # Then only the idle limit wakes its waiters, one per free share
    assert (soon, later) == (0, 2)
    assert None not in backend.scheduled.due_at([one.id, two.id])


def test_a_claim_from_the_record_alone_leaves_a_limited_task_for_its_message(
    backend: RedisBackend,
) -> None:
    # Given a queued task whose registered task declares limits
    [message] = queued(backend, task="exclusive")

    # When a worker claims it by doorbell, from its record (no message, so no arguments)
    task, claimed, _, _ = backend.record_claims.named(message.id, WORKER, ["exclusive"])

    # Then it is left queued for its Kafka message, claimed with the call's limits
    assert task is None and claimed.skipped_because == "limits need the message"
    assert record(backend, message.id)["status"] == "queued"
    [from_message] = backend.claim_many([message], WORKER)
    assert from_message.claimed
    assert record(backend, message.id)["share"].endswith("concurrency:exclusive")


def test_a_task_without_limits_costs_the_claim_no_limit_key(backend: RedisBackend) -> None:
    # When a task that declares no limit is claimed
    [message] = queued(backend)
    [claimed] = backend.claim_many([message], WORKER)

    # Then no limit key was written
    assert claimed.claimed
    assert backend.redis.keys(f"{backend.keys.limit_base}*") == []
    assert backend.limits.waiting() == []


# --- real workers ----------------------------------------------------------------------


def started_times(client: yadtq.Client, task_ids: Sequence[str]) -> list[float]:
    return [r["started_at"] for r in client.backend.task_records(task_ids)]


def test_a_rate_limit_is_never_exceeded_in_any_window_across_two_workers(
    client: yadtq.Client, start_workers: Any
) -> None:
    # Given two workers of 4 slots
    start_workers(2, concurrency=4)
    client.wait_for_workers(2, timeout=60)

    # When 50 tasks limited to 20/s are mapped at once
    batch = client.map(throttled, [0.0] * 50)

    # Then all succeed, no 1 s window holds more than 20 starts, and it took the rate's time
    assert batch.results(timeout=60) == [0.0] * 50
    started = started_times(client, batch.ids)
    assert most_in_a_window(started, 1.0) <= 20
    assert max(started) - min(started) >= 1.4  # 50 at 20/s: the last starts after 1.45 s
    # And the refused ones waited scheduled without spending an attempt
    records = client.backend.task_records(batch.ids)
    assert {r["attempt"] for r in records} == {1}
    limited = [i for i in batch.ids if any(e["event"] == "limited"
                                           for e in client.backend.task_history(i))]
    assert len(limited) >= 30


def test_a_keyed_rate_limit_lets_each_key_its_own_rate(
    client: yadtq.Client, start_workers: Any
) -> None:
    # Given two workers, and 8 calls for each of two customers under 5/s per customer
    start_workers(2, concurrency=4)
    client.wait_for_workers(2, timeout=60)
    batch = client.map(call_api, [("acme",)] * 8 + [("globex",)] * 8)

    # Then each customer's starts keep 5 a second, while both together went faster
    assert batch.results(timeout=60) == ["acme"] * 8 + ["globex"] * 8
    started = started_times(client, batch.ids)
    assert most_in_a_window(started[:8], 1.0) <= 5
    assert most_in_a_window(started[8:], 1.0) <= 5
    assert most_in_a_window(started, 1.0) > 5


def test_a_concurrency_limit_holds_and_a_killed_workers_share_comes_back(
    client: yadtq.Client, start_workers: Any
) -> None:
    # Given two workers of 4 slots and 12 tasks of 0.3 s that may run 2 at once
    cluster = start_workers(2, concurrency=4)
    client.wait_for_workers(2, timeout=60)
    batch = client.map(exclusive, [0.3] * 12)

    # When a worker holding a share is killed
    def holder() -> str | None:
        names = {w.name for w in cluster.worker_processes}
        running = [r["worker"] for r in client.backend.task_records(batch.ids)
                   if r["status"] == "processing" and r["worker"] in names]
        return running[0] if running else None

    victim = wait_until(holder, 30, "a worker to hold a share")
    cluster.kill_worker(victim, signal.SIGKILL)

    # Then all 12 succeed, and no more than 2 ever ran at once
    assert batch.results(timeout=90) == [0.3] * 12
    records = client.backend.task_records(batch.ids)
    assert most_at_once([(r["started_at"], r["finished_at"]) for r in records]) <= 2
    assert any(e["event"] == "worker died" for i in batch.ids
               for e in client.backend.task_history(i))


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_a_cancelled_or_timed_out_task_gives_its_share_back(
    client: yadtq.Client, start_workers: Any, how: str
) -> None:
    # Given a worker, and the 2 shares of a limit held by long tasks
    start_workers(1, concurrency=4)
    client.wait_for_workers(1, timeout=60)
    timeout = 1.0 if how == "timeout" else None
    long = [client.submit_with(exclusive, (60,), timeout=timeout) for _ in range(2)]
    wait_until(lambda: all(f.status is TaskStatus.PROCESSING for f in long), 30,
               "both long tasks to run")
    short = client.submit(exclusive, 0.1)
    wait_until(lambda: short.status is TaskStatus.SCHEDULED, 30, "the short one to wait")

    # When the long ones are cancelled, or time out
    if how == "cancel":
        assert all(f.cancel() for f in long)

    # Then the short one gets a share and runs
    assert short.result(timeout=30) == 0.1


def test_a_plain_format_message_is_limited_by_the_workers_registry(
    client: yadtq.Client, config: Any, start_workers: Any
) -> None:
    # Given a worker, and a producer with no yadtq code sending 4 plain-format calls of a
    # task whose registry allows 2 at once
    start_workers(1, concurrency=4)
    client.wait_for_workers(1, timeout=60)
    producer = KafkaProducer(bootstrap_servers=config.bootstrap)
    ids = [uuid.uuid4().hex for _ in range(4)]
    for task_id in ids:
        producer.send(config.tasks_topic, json.dumps(
            {"task-id": task_id, "task": "exclusive", "args": [0.4]}).encode())
    producer.flush()
    producer.close()

    # Then all succeed, never more than 2 at once, some having waited for the limit
    futures = [wait_until(lambda i=i: client.backend.task_record(i) and client.get(i), 60,
                          "the record") for i in ids]
    assert [f.result(timeout=60) for f in futures] == [0.4] * 4
    records = client.backend.task_records(ids)
    assert most_at_once([(r["started_at"], r["finished_at"]) for r in records]) <= 2
    assert any(e["event"] == "limited" for i in ids for e in client.backend.task_history(i))


def test_what_waits_for_a_limit_shows_in_the_widget_the_dataframe_and_the_queue_view(
    client: yadtq.Client,
) -> None:
    # Given a map of 3 tasks allowed 2 at once, claimed by a worker in one go
    from yadtq.display import batch_text

    batch = client.map(exclusive, [1.0] * 3)
    messages = [protocol.TaskMessage(id=task_id, task="exclusive", args=(1.0,), batch=batch.id,
                                     index=i) for i, task_id in enumerate(batch.ids)]
    claims = client.backend.claim_many(messages, WORKER)
    assert [c.skipped_because for c in claims] == [None, None, "concurrency limited"]

    # Then the batch's widget says what the third waits for, as soon as its event arrives
    wait_until(lambda: batch.snapshot()["waits_for"] == {"concurrency 2": 1}, 10,
               "the waiting task's event")
    assert "1 waiting for concurrency 2" in batch_text(batch)
    # And the DataFrame names the limit per task
    frame = batch.to_dataframe()
    assert frame["waits_for"].isna().tolist() == [True, True, False]
    assert frame["waits_for"][2] == "concurrency 2"
    # And the queue view lists the limit, who holds it and how many wait
    row = {"limit": "concurrency 2", "task": "exclusive", "kind": "concurrency",
           "running": 2, "waiting": 1}
    assert client.limit_rows() == [row]
    assert client.workers().attrs["limits"] == [row]
