"""End to end: real worker processes, a real broker, a real Redis."""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest
from helpers import status_counts, wait_until
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import yadtq
from worker_node.tasks import add, fail, multiply, sleep
from yadtq.config import Config


def test_map_of_300_tasks_is_spread_over_three_workers_running_in_parallel(
    client, start_workers
):
    # Given three worker processes that share the topic's partitions
    start_workers(3)
    client.wait_for_workers(3, timeout=60)

    # When 300 tasks of three types are mapped
    sums = client.map(add, [(i, i) for i in range(100)])
    products = client.map(multiply, [(i, 3) for i in range(100)])
    naps = client.map(sleep, [0.02] * 100)

    # Then every result is right ...
    assert sums.results(timeout=60) == [2 * i for i in range(100)]
    assert products.results(timeout=60) == [3 * i for i in range(100)]
    assert all(0.02 <= r < 1 for r in naps.results(timeout=60))

    # ... every worker ran at least 20% of them ...
    import pandas

    frame = pandas.concat([b.to_dataframe() for b in (sums, products, naps)])
    assert (frame["status"] == "success").all()
    per_worker = frame["worker"].value_counts()
    assert len(per_worker) == 3, per_worker
    assert per_worker.min() >= 60, per_worker

    # ... and tasks on different workers overlapped in time.
    assert _overlapping_workers(frame) == set(per_worker.index)


def _overlapping_workers(frame) -> set[str]:
    """Workers that ran some task while another worker was running one."""
    rows = frame.sort_values("started_at")[["worker", "started_at", "finished_at"]].to_numpy()
    overlapping: set[str] = set()
    for i, (worker, start, finish) in enumerate(rows):
        for other, other_start, other_finish in rows[i + 1:]:
            if other_start >= finish:
                break
            if other != worker and other_finish > start:
                overlapping |= {worker, other}
    return overlapping


def test_task_passes_through_queued_processing_success_in_redis(client, start_workers):
    # Given a task submitted while no worker runs: Redis says queued
    events = client.backend.pubsub()
    events.subscribe(client.backend.keys.events)
    future = client.submit(sleep, 0.5)
    assert client.status(future.id) == "queued"

    # When a worker starts
    start_workers(1)

    # Then Redis shows it processing on that worker, then success with its result
    record = wait_until(lambda: _record_if(client, future.id, "processing"), 60, "processing")
    assert record["worker"] == "local-worker-1"
    assert record["attempt"] == 1
    assert future.result(timeout=30) >= 0.5
    record = client.task_record(future.id)
    assert record["status"] == "success"
    assert record["started_at"] <= record["finished_at"]

    # And the change events came in that order
    seen = []
    while (message := events.get_message(timeout=1)) is not None:
        if message["type"] == "message":
            seen.extend(change["status"] for change in json.loads(message["data"]))
    events.close()
    assert seen == ["processing", "success"]


def _record_if(client, task_id, status):
    record = client.task_record(task_id)
    return record if record["status"] == status else None


def test_failing_task_ends_failed_with_its_traceback(client, start_workers):
    start_workers(1)

    future = client.submit(fail, "boom")

    with pytest.raises(yadtq.TaskFailed) as caught:
        future.result(timeout=60)
    assert caught.value.error_type == "RuntimeError"
    assert caught.value.message == "boom"
    assert "raise RuntimeError(message)" in caught.value.traceback
    record = client.task_record(future.id)
    assert record["status"] == "failed"
    assert "Traceback (most recent call last)" in record["traceback"]


def test_unknown_task_fails_naming_the_registered_tasks_and_worker_keeps_serving(
    client, start_workers
):
    start_workers(1)

    unknown = client.submit("ad", 1, 2)

    with pytest.raises(yadtq.TaskFailed) as caught:
        unknown.result(timeout=60)
    assert caught.value.error_type == "UnknownTask"
    assert "'ad'" in caught.value.message
    assert "add" in caught.value.message and "count_primes" in caught.value.message
    assert client.submit(add, 1, 2).result(timeout=30) == 3


def test_task_from_a_plain_kafka_producer_in_the_plain_format_gets_its_result(
    client, config, start_workers
):
    # Given a worker, and a producer with no yadtq code on the sending side
    start_workers(1)
    producer = KafkaProducer(bootstrap_servers=config.bootstrap)
    dashed, underscored = uuid.uuid4().hex, uuid.uuid4().hex

    # When it sends both spellings of the plain format
    producer.send(config.tasks_topic,
                  json.dumps({"task-id": dashed, "task": "add", "args": [2, 3]}).encode())
    producer.send(config.tasks_topic,
                  json.dumps({"task_id": underscored, "task": "power", "args": [2, 10]}).encode())
    producer.flush()
    producer.close()

    # Then the results are in Redis under the same schema
    wait_until(lambda: client.backend.task_record(dashed), 60, "the worker to record the task")
    wait_until(lambda: client.backend.task_record(underscored), 60, "the second record")
    assert client.get(dashed).result(timeout=60) == 5
    assert client.get(underscored).result(timeout=60) == 1024
    record = client.task_record(dashed)
    assert record["status"] == "success"
    assert record["task"] == "add" and record["args"] == [2, 3]
    assert record["format"] == "plain"


def test_malformed_messages_go_to_the_dead_letter_topic_and_worker_keeps_serving(
    client, config, start_workers
):
    # Given a worker
    start_workers(1)

    # When garbage and a message missing its task name are on the topic
    producer = KafkaProducer(bootstrap_servers=config.bootstrap)
    producer.send(config.tasks_topic, b"\xff not json at all")
    producer.send(config.tasks_topic, json.dumps({"v": 1, "id": "abc"}).encode())
    producer.flush()
    producer.close()

    # Then the worker still serves tasks ...
    assert client.submit(add, 20, 22).result(timeout=60) == 42

    # ... and both messages are in the dead-letter topic with their reasons
    letters = _read_topic(config, config.dead_letter_topic, expected=2)
    reasons = sorted(letter["reason"] for letter in letters)
    assert "missing field 'task'" in reasons[0] or "missing field 'task'" in reasons[1]
    assert any("not UTF-8" in r or "not JSON" in r for r in reasons)
    assert all(letter["worker"] == "local-worker-1" for letter in letters)


def _read_topic(config: Config, topic: str, expected: int, timeout: float = 30) -> list[dict]:
    consumer = KafkaConsumer(bootstrap_servers=config.bootstrap, enable_auto_commit=False)
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    letters: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(letters) < expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            letters.extend(json.loads(r.value) for r in records)
    consumer.close()
    return letters


def test_killed_worker_loses_no_task_of_a_map_of_200(client, start_workers):
    # Given three workers busy with a batch of 200 short tasks
    cluster = start_workers(3)
    client.wait_for_workers(3, timeout=60)
    batch = client.map(sleep, [0.1] * 200)
    wait_until(lambda: batch.local_counts()["success"] >= 30, 60, "30 tasks done")

    # When one worker is killed with SIGKILL mid-batch
    victim = cluster.kill_worker(0, signal.SIGKILL)
    assert not victim.alive

    # Then every task still ends in success, none lost
    results = batch.results(timeout=120)
    assert len(results) == 200
    frame = batch.to_dataframe()
    assert (frame["status"] == "success").all()
    assert batch.status_counts() == status_counts(total=200, success=200)


def test_sigterm_lets_the_running_task_finish_and_marks_the_worker_stopped(
    client, start_workers
):
    # Given a worker running a task
    cluster = start_workers(1)
    future = client.submit(sleep, 2)
    wait_until(lambda: future.running(), 60, "the task to start")

    # When it is asked to stop
    cluster.kill_worker(0, signal.SIGTERM)

    # Then the task finishes and the worker is recorded as stopped
    assert future.result(timeout=60) >= 2
    assert client.task_record(future.id)["attempt"] == 1
    wait_until(
        lambda: (client.workers()["status"] == "stopped").all() and len(client.workers()) == 1,
        30, "the worker to be recorded as stopped",
    )


def test_unreachable_broker_fails_fast_naming_the_address(stack):
    config = Config(bootstrap="127.0.0.1:9", redis_url=stack.redis_url, connect_timeout=2,
                    source="test")
    started = time.monotonic()

    with pytest.raises(yadtq.BrokerUnavailable, match="127.0.0.1:9"):
        yadtq.Client(config)
    assert time.monotonic() - started < 10


def test_unreachable_redis_fails_fast_naming_the_address(stack):
    config = Config(bootstrap=stack.bootstrap, redis_url="redis://127.0.0.1:9/0",
                    connect_timeout=2, source="test")
    started = time.monotonic()

    with pytest.raises(yadtq.BackendUnavailable, match="127.0.0.1:9"):
        yadtq.Client(config)
    assert time.monotonic() - started < 10


def test_non_json_argument_is_refused_before_anything_is_sent(client):
    with pytest.raises(TypeError, match="argument 0"):
        client.submit(add, {1, 2}, 3)
    assert client.backend.redis.keys(f"{client.config.key_prefix}:task:*") == []


def test_an_idle_worker_steals_tasks_waiting_in_another_workers_partition_oldest_first(
    client, start_workers
):
    # Given two workers of one slot each, and eight tasks all in one partition of the first
    start_workers(2, concurrency=1)
    workers = client.wait_for_workers(2, timeout=60)
    owner = min(workers, key=lambda row: row["name"])
    partition = int(owner["partitions"].split(",")[0])
    ids = [uuid.uuid4().hex for _ in range(8)]
    producer = KafkaProducer(bootstrap_servers=client.config.bootstrap)
    for task_id in ids:
        producer.send(client.config.tasks_topic, partition=partition, value=json.dumps(
            {"task-id": task_id, "task": "sleep", "args": [0.4]}).encode())
    producer.flush()
    producer.close()

    # When they have run
    def records():
        found = client.backend.task_records(ids)
        return found if all(r and r["status"] == "success" for r in found) else None

    done = wait_until(records, 60, "all eight tasks done")

    # Then the idle worker took some of them from the busy one's partition
    ran_by = [r["worker"] for r in done]
    assert ran_by.count(owner["name"]) < len(ids), ran_by
    # And, the tasks being long, the oldest waiting first (issue 24: not the newest), so
    # they started in the order they were sent, a few milliseconds of claims crossing aside
    started = [float(r["started_at"]) for r in done]
    late = [(i, j) for i in range(8) for j in range(i + 1, 8) if started[j] < started[i] - 0.005]
    assert not late, (late, started)
    assert set(ran_by) == {row["name"] for row in workers}, ran_by

    # And each ran once: one claim and one success in its history, nothing refused
    for task_id in ids:
        events = [e["event"] for e in client.history(task_id)]
        assert events == ["claimed", "success"], (task_id, events)


def test_lone_submits_from_fresh_clients_spread_over_the_workers(config, start_workers):
    # Given three workers
    start_workers(3)
    with yadtq.Client(config) as first:
        first.wait_for_workers(3, timeout=60)

    # When ten fresh clients each submit one task, one after another
    workers = []
    for i in range(10):
        with yadtq.Client(config) as fresh:
            future = fresh.submit(add, i, i)
            assert future.result(timeout=60) == 2 * i
            workers.append(future.worker)

    # Then they did not all run on one worker (each client starts dealing at random)
    assert len(set(workers)) > 1, workers
