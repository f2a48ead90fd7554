"""Topics made for a real cluster, and a broker failure on a 3-node Apache Kafka cluster.

yadtq creates its own topics (production clusters turn auto-creation off, and so
does the local stack's Apache Kafka), with replicas on every broker up to three.
The broker-failure test runs in the Apache Kafka pass of the suite
(``YADTQ_TEST_BROKER=apache-kafka``); figures print with ``pytest -s``.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from helpers import status_counts, wait_until
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

import yadtq
from worker_node.tasks import add
from yadtq import broker
from yadtq.config import Config, local_broker
from yadtq.local import APACHE_KAFKA, LocalCluster, LocalStack


def report(text: str) -> None:
    print(f"\n[kafka-cluster] {text}", flush=True)


def topic_layout(bootstrap: str, topic: str) -> tuple[list[int], list[int]]:
    """The leader and the replica count of each partition of ``topic``."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        [described] = admin.describe_topics([topic])
    finally:
        admin.close()
    partitions = sorted(described["partitions"], key=lambda p: p["partition_index"])
    return [p["leader_id"] for p in partitions], [len(p["replica_nodes"]) for p in partitions]


def test_topics_are_created_by_yadtq_with_one_replica_per_broker_up_to_three(
    client: yadtq.Client, config: Config
) -> None:
    # Given a client of a fresh queue (the client creates the queue's topics)
    # Then the tasks topic has the configured partitions, each replicated on every broker
    leaders, replicas = topic_layout(config.bootstrap, config.tasks_topic)
    brokers = len(config.bootstrap.split(","))

    assert len(leaders) == config.partitions
    assert set(replicas) == {min(3, brokers)}
    _, dead_letter_replicas = topic_layout(config.bootstrap, config.dead_letter_topic)
    assert set(dead_letter_replicas) == {min(3, brokers)}


def test_more_replicas_than_brokers_is_a_clear_configuration_error(config: Config) -> None:
    # Given a single-broker stack and a queue asking for 3 replicas
    asking = dataclasses.replace(config, queue=f"rf-{uuid.uuid4().hex[:8]}",
                                 replication_factor=3)
    brokers = len(config.bootstrap.split(","))
    if brokers >= 3:
        pytest.skip("the session's cluster has 3 brokers")

    # When its topics are created, Then the error says what is wrong and what to do
    with pytest.raises(yadtq.ConfigurationError, match="YADTQ_REPLICATION_FACTOR"):
        broker.create_topics(asking)


def test_an_existing_tasks_topic_with_fewer_partitions_is_used_with_a_warning(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a queue whose tasks topic was made with 2 partitions
    broker.create_topics(dataclasses.replace(config, partitions=2))

    # When a client configured for 12 connects
    with caplog.at_level(logging.WARNING, logger="yadtq.broker"):
        broker.create_topics(config)

    # Then it warns with the counts and what to do, and does not fail
    [warning] = [r.getMessage() for r in caplog.records if r.name == "yadtq.broker.topics"]
    assert "has 2 partitions, fewer than the 12 configured" in warning
    assert "kafka-topics --alter" in warning


# --- a broker failure ------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    if local_broker() != APACHE_KAFKA:  # conftest sets it from YADTQ_TEST_BROKER
        pytest.skip("runs in the Apache Kafka pass (YADTQ_TEST_BROKER=apache-kafka)")
    with LocalStack(tmp_path_factory.mktemp("cluster"), broker=APACHE_KAFKA, nodes=3) as stack:
        yield stack


def test_sigkill_of_the_leading_broker_of_3_loses_no_task_and_every_result_is_right(
    three_brokers: LocalStack,
) -> None:
    stack = three_brokers
    queue = f"kill-{uuid.uuid4().hex[:8]}"
    with LocalCluster(workers=3, stack=stack, queue=queue, key_prefix=queue,
                      heartbeat_interval=0.5, lease_seconds=3.0) as cluster, \
            yadtq.Client(cluster.config) as client:
        client.wait_for_workers(3, timeout=90)
        config = cluster.config

        # Given the tasks topic replicated 3 times with min.insync.replicas 2
        leaders, replicas = topic_layout(stack.bootstrap, config.tasks_topic)
        assert set(replicas) == {3}
        admin = KafkaAdminClient(bootstrap_servers=stack.bootstrap)
        try:
            described = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, config.tasks_topic)])
        finally:
            admin.close()
        print(described)
        assert "'min.insync.replicas': {'value': '2'" in str(described)

        # And a batch of 1,500 under way
        first = client.map(add, [(i, i) for i in range(1500)])
        wait_until(lambda: first.local_counts()["success"] >= 200, 90, "200 tasks done")

        # When the broker leading most partitions is killed
        victim_id, led = Counter(leaders).most_common(1)[0]
        victim = f"kafka-{victim_id}"
        killed_at = time.time()
        stack.kill_broker(victim, signal.SIGKILL)
        done_at_kill = first.local_counts()["success"]

        # And a second batch is submitted while it is down
        second = client.map(add, [(i, 1) for i in range(500)])
        assert first.results(timeout=180) == [2 * i for i in range(1500)]
        assert second.results(timeout=180) == [i + 1 for i in range(500)]
        both_done = time.time() - killed_at

        # And it comes back and a third batch is submitted
        restarted_at = time.monotonic()
        stack.start_broker(victim)
        back_in = time.monotonic() - restarted_at
        third = client.map(add, [(i, -i) for i in range(500)])

        # Then every task of all three succeeded exactly once, with the right result
        assert third.results(timeout=180) == [0] * 500
        for batch, total in ((first, 1500), (second, 500), (third, 500)):
            assert batch.status_counts() == status_counts(total=total, success=total)

        # And the figures: how long task completions stalled after the kill
        records = client.backend.task_records([f.id for f in first] + [f.id for f in second])
        finished = sorted(r["finished_at"] for r in records if r["finished_at"] > killed_at)
        first_after = finished[0] - killed_at
        gaps = [b - a for a, b in zip([killed_at, *finished], finished, strict=False)]
        report(f"killed {victim} (leader of {led} of {len(leaders)} partitions) with "
               f"{done_at_kill}/1500 done: first task finished {first_after:.2f} s after the "
               f"kill, longest stall {max(gaps):.2f} s, batches 1+2 done {both_done:.1f} s after "
               f"the kill; the broker rejoined in {back_in:.1f} s; 2,500/2,500 right, 0 lost")
        assert max(gaps) < 60
