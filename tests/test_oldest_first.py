"""Long tasks go oldest first, whoever's partition holds them (issue 24): the read-ahead's
view of other workers' partitions, and real workers splitting one partition's backlog.
"""

from __future__ import annotations

import json
import uuid

from helpers import wait_until
from kafka import KafkaProducer

from yadtq import protocol
from yadtq.broker.delivery import Delivery
from yadtq.broker.read_ahead import ReadAhead

TOPIC = "yadtq.q.tasks"


def delivery(partition: int, offset: int, at_ms: int, foreign: bool = False) -> Delivery:
    message = protocol.build("sleep", [0.1], task_id=f"p{partition}-{offset}")
    return Delivery(TOPIC, partition, offset, at_ms, None, b"", message, foreign=foreign)


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.message.id for d in deliveries]


def test_the_view_of_other_partitions_mixes_in_by_age_and_is_not_counted_as_ours() -> None:
    # Given two tasks of our own, and three in another worker's partition, sent in between
    buffer = ReadAhead(TOPIC, starvation_ms=30_000)
    buffer.add(TOPIC, 0, [delivery(0, 0, 100), delivery(0, 1, 400)])
    buffer.show_foreign([delivery(5, 7, 200, True), delivery(5, 8, 300, True),
                         delivery(5, 9, 500, True)])

    # Then only ours count as waiting here
    assert len(buffer) == 2 and buffer.waiting() == {1: 2}
    # And they are handed out oldest first, whoever's partition they are in
    taken = buffer.take(4, now_ms=1_000)
    assert ids(taken) == ["p0-0", "p5-7", "p5-8", "p0-1"]
    assert len(buffer) == 0

    # When the claim's limit left the last three untouched, they go back in front, in order
    buffer.give_back(taken[1:])
    assert len(buffer) == 1
    assert ids(buffer.take(5, now_ms=1_000)) == ["p5-7", "p5-8", "p0-1", "p5-9"]


def test_a_fresh_look_replaces_the_view_and_forgetting_it_keeps_our_own() -> None:
    buffer = ReadAhead(TOPIC, starvation_ms=30_000)
    buffer.add(TOPIC, 0, [delivery(0, 0, 900)])
    buffer.show_foreign([delivery(3, 0, 100, True)])
    buffer.show_foreign([delivery(4, 0, 200, True)])  # partition 3's was claimed meanwhile
    assert ids(buffer.take(1, now_ms=1_000)) == ["p4-0"]

    buffer.show_foreign([delivery(4, 1, 300, True)])
    buffer.forget_foreign()  # tasks turned short, or the group rebalanced
    assert ids(buffer.take(5, now_ms=1_000)) == ["p0-0"]


def test_an_idle_worker_takes_a_busy_partitions_long_tasks_in_the_order_they_were_sent(
    client, start_workers
):
    # Given two workers of one slot each, and eight 0.3 s tasks all in one partition of
    # the first, sent by a plain Kafka producer (no doorbell)
    start_workers(2, concurrency=1)
    workers = client.wait_for_workers(2, timeout=60)
    owner = min(workers, key=lambda row: row["name"])
    partition = int(owner["partitions"].split(",")[0])
    task_ids = [uuid.uuid4().hex for _ in range(8)]
    producer = KafkaProducer(bootstrap_servers=client.config.bootstrap)
    for task_id in task_ids:
        producer.send(client.config.tasks_topic, partition=partition, value=json.dumps(
            {"task-id": task_id, "task": "sleep", "args": [0.3]}).encode())
    producer.flush()
    producer.close()

    # When they have run
    def records():
        found = client.backend.task_records(task_ids)
        return found if all(r and r["status"] == "success" for r in found) else None

    done = wait_until(records, 60, "all eight tasks done")

    # Then they started in the order they were sent (a thief took the oldest waiting,
    # not the newest), a few milliseconds of claims crossing aside
    started = [float(r["started_at"]) for r in done]
    late = [(i, j) for i in range(8) for j in range(i + 1, 8) if started[j] < started[i] - 0.005]
    assert not late, (late, started)
    # And both workers ran a share (the idle one may only wake after its idle wait: no
    # doorbell rang), each task once
    ran_by = [r["worker"] for r in done]
    assert min(ran_by.count(row["name"]) for row in workers) >= 2, ran_by
    for task_id in task_ids:
        assert [e["event"] for e in client.history(task_id)] == ["claimed", "success"]
