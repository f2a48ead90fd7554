"""Tasks that run later: a countdown or an ETA makes a task ``scheduled`` in Redis only,
until a worker produces it when due, judged on Redis's clock (issue 22, part 1).

Due-time decisions are tested with an injected ``now`` (``take_due(now=...)``); the
end-to-end tests use sub-second countdowns only to prove the whole path.
"""

from __future__ import annotations

import concurrent.futures
import datetime

import pytest
from helpers import messages_on_topic, wait_until

import yadtq
from worker_node.tasks import add
from yadtq import protocol


def test_a_countdown_task_waits_scheduled_off_kafka_then_runs_when_due(
    client, config, start_workers
):
    # Given a worker, and the topic as it is
    start_workers(1)
    before = messages_on_topic(config)

    # When a task is submitted to run 0.5 s from now
    future = client.submit_with(add, (1, 2), countdown=0.5)

    # Then it is scheduled with its due time, and nothing is on Kafka for it
    record = client.task_record(future.id)
    assert record["status"] == "scheduled" and future.status == "scheduled"
    assert messages_on_topic(config) == before
    # And it runs once due, not before
    assert future.result(timeout=30) == 3
    record = client.task_record(future.id)
    assert record["started_at"] >= record["due_at"] - 0.01  # one machine: one clock
    assert [e["event"] for e in client.history(future.id)][:1] == ["due"]


def test_a_scheduled_task_can_be_cancelled_and_never_runs(client, start_workers):
    # Given a task due in an hour
    start_workers(1)
    future = client.submit_with(add, (1, 2), countdown=3600)

    # When it is cancelled
    assert client.cancel(future.id)

    # Then it ends cancelled, its waiters learn it, and the scheduled set forgets it
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(timeout=30)
    assert client.status(future.id) == "cancelled"
    assert client.backend.scheduled.due_at([future.id]) == [None]


def test_a_map_with_an_eta_counts_its_tasks_scheduled_then_runs_them_all_after_it(
    client, start_workers
):
    # Given workers, and a moment 0.5 s from now
    start_workers(2)
    eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=0.5)

    # When a map is due then
    batch = client.map(add, [(i, i) for i in range(20)], eta=eta)

    # Then its tasks count as scheduled, and once due all run, none before the ETA
    assert batch.status_counts()["scheduled"] == 20
    assert batch.results(timeout=30) == [2 * i for i in range(20)]
    frame = batch.to_dataframe()
    assert (frame["started_at"] >= frame["due_at"] - datetime.timedelta(seconds=0.01)).all()
    assert batch.status_counts()["scheduled"] == 0


@pytest.mark.parametrize("due, says", [
    ({"countdown": -1}, "countdown must be seconds"),
    ({"countdown": float("nan")}, "countdown must be seconds"),
    ({"eta": datetime.datetime(2030, 1, 1)}, "no time zone"),
    ({"countdown": 5, "eta": datetime.datetime.now(datetime.timezone.utc)}, "not both"),
], ids=["negative", "nan", "naive eta", "both"])
def test_a_bad_due_time_is_refused_before_anything_is_written(client, due, says):
    with pytest.raises(ValueError, match=says):
        client.submit_with(add, (1, 2), **due)
    with pytest.raises(ValueError, match=says):
        client.map(add, [(1, 2)], **due)
    assert client.backend.redis.keys(client.backend.keys.task("*")) == []


def test_due_tasks_are_taken_by_the_clock_given_once_each_and_forgotten_once_sent(client):
    # Given a task recorded as due at T (an ETA), with no worker running
    at = 2_000_000_000.0
    message = protocol.build("add", [2, 3])
    client.backend.enqueue([message], due=f"at:{at}")
    scheduled = client.backend.scheduled

    # When workers look before T, then after it (a clock injected, not waited for)
    assert scheduled.take_due(now=at - 1) == []
    taken = scheduled.take_due(now=at + 1)
    assert scheduled.take_due(now=at + 2) == []  # held for the first taker

    # Then one takes it, releases it to the queue with its payload, and forgets it once sent
    assert taken == [message.id]
    [released] = scheduled.release(taken, "a-worker")
    assert (released.id, released.task, released.args) == (message.id, "add", (2, 3))
    assert client.status(message.id) == "queued"
    scheduled.sent(taken)
    assert scheduled.due_at(taken) == [None]
    # And a taker that died before sending leaves it to be taken again after the hold
    client.backend.enqueue([protocol.build("add", [1, 1])], due=f"at:{at}")
    [again] = scheduled.take_due(now=at + 1)
    assert scheduled.take_due(now=at + 1 + 31) == [again]


def test_a_scheduled_task_the_workers_would_refuse_is_not_written(config, start_workers):
    # Given workers that require a secret this client lacks
    start_workers(1, worker_env={"YADTQ_SECRET": "time-secret"})
    with yadtq.Client(config) as client:
        wait_until(lambda: client.worker_rows(), 30, "the worker's heartbeat")
        # When it schedules a task, it is refused at once, as a submit is
        with pytest.raises(yadtq.SecretMismatch):
            client.submit_with(add, (1, 2), countdown=60)
        assert client.backend.redis.keys(client.backend.keys.task("*")) == []
