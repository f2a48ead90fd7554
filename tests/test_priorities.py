"""Priorities (issue 23): a topic a level, higher levels taken first, no level starved.
Real workers on the test's broker and Redis, and the read-ahead's order with an injected
clock.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import wait_until
from kafka import KafkaConsumer, TopicPartition

import yadtq
from worker_node.tasks import add, flaky, sleep
from yadtq import protocol
from yadtq.broker.delivery import Delivery
from yadtq.broker.read_ahead import ReadAhead
from yadtq.config import Config
from yadtq.errors import ProtocolError
from yadtq.priority import Priority
from yadtq.worker_table import format_rows

TOPIC = "yadtq.q.tasks"


def delivery(level: Priority, partition: int, offset: int, at_ms: int) -> Delivery:
    message = protocol.build("add", [1, 2], task_id=f"{level.value}-{partition}-{offset}")
    message = dataclasses.replace(message, submitted_at=at_ms / 1000)  # sent then
    return Delivery(level.topic(TOPIC), partition, offset, at_ms, None, b"", message)


def test_the_read_ahead_hands_out_higher_levels_first_then_the_starved_before_all() -> None:
    # Given normal and low tasks buffered first, then high ones, 30 s starvation bound
    buffer = ReadAhead(TOPIC, starvation_ms=30_000)
    buffer.add(TOPIC, 0, [delivery(Priority.NORMAL, 0, o, 1_000 + o) for o in range(3)])
    buffer.add(f"{TOPIC}.low", 1, [delivery(Priority.LOW, 1, 0, 500)])
    buffer.add(f"{TOPIC}.high", 2, [delivery(Priority.HIGH, 2, o, 2_000 + o) for o in range(2)])

    # Then high goes first, then normal in order, low last
    taken = buffer.take(4, now_ms=3_000)
    assert [d.message.id for d in taken] == ["high-2-0", "high-2-1", "normal-0-0", "normal-0-1"]
    assert len(buffer) == 2
    # And once the low task has waited past the bound, it goes before the rest
    assert [d.message.id for d in buffer.take(1, now_ms=500 + 30_001)] == ["low-1-0"]
    assert [d.message.id for d in buffer.take(5, now_ms=40_000)] == ["normal-0-2"]
    assert len(buffer) == 0


def test_a_take_of_one_level_stops_where_the_level_changes() -> None:
    # Given the last two normal tasks buffered, low ones behind them (more normal ones may
    # still be in Kafka: a slot's claim from what the loop prepared does not poll)
    buffer = ReadAhead(TOPIC, starvation_ms=30_000)
    buffer.add(TOPIC, 0, [delivery(Priority.NORMAL, 0, o, 1_000 + o) for o in range(2)])
    buffer.add(f"{TOPIC}.low", 1, [delivery(Priority.LOW, 1, o, 500 + o) for o in range(3)])

    # Then a take of one level hands out the normal ones only, and leaves the low ones
    assert [d.message.id for d in buffer.take(9, now_ms=2_000, one_level=True)] == [
        "normal-0-0", "normal-0-1"]
    assert [d.message.id for d in buffer.take(9, now_ms=2_000, one_level=True)] == [
        "low-1-0", "low-1-1", "low-1-2"]


def test_starved_tasks_get_a_share_of_the_picks_not_all_of_them() -> None:
    # Given a deep low backlog all past the bound, and fresh normal tasks
    buffer = ReadAhead(TOPIC, starvation_ms=30_000)
    buffer.add(f"{TOPIC}.low", 0, [delivery(Priority.LOW, 0, o, o) for o in range(8)])
    buffer.add(TOPIC, 1, [delivery(Priority.NORMAL, 1, o, 60_000 + o) for o in range(12)])

    # Then one pick in four goes to the oldest starved low task, the rest to normal ones
    levels = [d.topic == TOPIC for d in buffer.take(12, now_ms=61_000)]
    assert levels == [True, True, True, False] * 3


def test_priority_travels_on_its_own_topic_and_in_an_optional_wire_field(
    client: yadtq.Client, config: Config
) -> None:
    # When tasks are sent at each level
    high = client.submit_with(add, (1, 2), priority="high")
    batch = client.map(add, [(1, 1), (2, 2)], priority=Priority.LOW)
    normal = client.submit(add, 3, 4)

    # Then each is on its level's topic, and only others than normal name their level
    on_topics = _read_all(config)
    assert {m["id"]: t for t, m in on_topics} == {
        high.id: f"{config.tasks_topic}.high", **{f.id: f"{config.tasks_topic}.low"
                                                  for f in batch}, normal.id: config.tasks_topic}
    fields = {m["id"]: m.get("priority") for _, m in on_topics}
    assert fields[high.id] == "high" and fields[batch[0].id] == "low"
    assert fields[normal.id] is None  # the normal topic's messages are as plain clients read
    # And the record keeps the level, for a retry or a reaped lease to go back to it
    assert client.task_record(high.id)["priority"] == "high"


def test_a_bad_priority_is_refused_with_what_is_allowed(client: yadtq.Client) -> None:
    with pytest.raises(ValueError, match="priority must be 'high', 'normal' or 'low', got "
                                         "'urgent'"):
        client.submit_with(add, (1, 2), priority="urgent")
    with pytest.raises(ValueError, match="priority must be"):
        yadtq.task(priority="asap")
    with pytest.raises(ProtocolError, match="field 'priority' must be 'high', 'normal' or "
                                            "'low', got 'top'"):
        protocol.decode(json.dumps({"v": 1, "id": "x1", "task": "add", "args": [],
                                    "priority": "top"}).encode())


def test_a_high_task_starts_ahead_of_a_backlog_already_waiting(
    client: yadtq.Client, start_workers
) -> None:
    # Given one worker of one slot working through a backlog of 60 normal tasks
    start_workers(1, concurrency=1)
    backlog = client.map(sleep, [0.05] * 60)
    wait_until(lambda: backlog.status_counts()["success"] >= 3, 30, "the backlog to start")

    # When a high task is submitted
    urgent = client.submit_with(add, (20, 22), priority="high")

    # Then it runs before most of the backlog: within about a second of being sent
    assert urgent.result(timeout=30) == 42
    backlog.wait(timeout=60)
    started = client.task_record(urgent.id)["started_at"]
    sent = client.task_record(urgent.id)["queued_at"]
    after = sum(client.task_record(f.id)["started_at"] > started for f in backlog)
    assert started - sent < 1.0
    assert after >= 30, f"only {after} of 60 backlog tasks started after the high one"


def test_low_tasks_wait_for_normal_ones_but_not_past_the_starvation_bound(
    client: yadtq.Client, start_workers
) -> None:
    # Given one busy worker of one slot whose starvation bound is 1.5 s, and low tasks
    # sent before 3 s of normal ones
    start_workers(1, concurrency=1, settings={"priority_starvation": 1.5})
    client.wait_for_workers(1, timeout=30)
    busy = client.map(sleep, [0.05] * 20)
    low = client.map(add, [(0, i) for i in range(3)], priority="low")
    normal = client.map(sleep, [0.05] * 60)

    # Then the normal tasks sent later go first, yet each low task starts about 1.5 s
    # after it was sent, while normal ones still wait
    for batch in (busy, low, normal):
        batch.wait(timeout=60)
    lows = [client.task_record(f.id) for f in low]
    normal_starts = sorted(client.task_record(f.id)["started_at"] for f in normal)
    assert all(normal_starts[0] < r["started_at"] < normal_starts[-1] for r in lows), (
        normal_starts[0], normal_starts[-1], [r["started_at"] for r in lows])
    assert all(1.5 <= r["started_at"] - r["queued_at"] < 1.5 + 1.0 for r in lows)


def test_retried_scheduled_and_dependent_high_tasks_go_back_to_the_high_topic(
    client: yadtq.Client, config: Config, start_workers, tmp_path
) -> None:
    # Given high tasks that fail once, wait for a countdown, and wait for a parent
    start_workers(1)
    retried = client.submit_with(flaky, (str(tmp_path / "runs"), 1), max_retries=2,
                                 retry_backoff=0.05, priority="high")
    later = client.submit_with(add, (1, 2), countdown=0.3, priority="high")
    child = client.submit_with(add, (later, 10), priority="high")

    # Then all ran, and every message of theirs, first or produced again, is on the high
    # topic only
    assert (retried.result(timeout=30), later.result(timeout=30), child.result(timeout=30)
            ) == (2, 3, 13)
    assert client.task_record(retried.id)["attempt"] == 2
    topics: dict[str, list[str]] = {}
    for topic, message in _read_all(config):
        topics.setdefault(message["id"], []).append(topic)
    high = f"{config.tasks_topic}.high"
    assert topics[retried.id] == [high, high]
    assert topics[later.id] == [high] and topics[child.id] == [high]


def _read_all(config: Config) -> list[tuple[str, dict]]:
    """Every message of the queue's level topics, with its topic."""
    consumer = KafkaConsumer(bootstrap_servers=config.bootstrap, consumer_timeout_ms=2000)
    try:
        partitions = [TopicPartition(topic, p) for topic in config.level_topics()
                      for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        found = []
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            for tp, records in consumer.poll(timeout_ms=500).items():
                found += [(tp.topic, json.loads(r.value)) for r in records]
        return found
    finally:
        consumer.close()


def test_what_waits_at_each_level_shows_in_the_workers_table(
    client: yadtq.Client, start_workers
) -> None:
    # Given a worker of one slot busy for a while, with tasks waiting at two levels
    start_workers(1, concurrency=1)
    client.wait_for_workers(1, timeout=30)
    # (from Kafka: a lone submit's copy would count); long enough for a count (every 5 s)
    [busy] = client.map(sleep, [10.0])
    wait_until(lambda: busy.status == "processing", 30, "the long task to start")
    client.map(add, [(1, i) for i in range(3)], priority="high")
    client.map(add, [(2, i) for i in range(5)], priority="low")

    # Then its heartbeat reports them by level, in q.worker_rows() and the CLI's table
    row = wait_until(lambda: next((r for r in client.worker_rows()
                                   if (r["waiting_high"], r["waiting_low"]) == (3, 5)), None),
                     20, "the worker to report 3 high and 5 low tasks waiting")
    assert row["waiting_normal"] == 0
    assert "3/0/5" in format_rows([row]).splitlines()[1]
    busy.cancel()  # the workers stop without waiting for it
