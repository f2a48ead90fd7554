"""kafka-python clients, built with yadtq's settings (Kafka adapter).

Every kafka-python client the adapter uses is built here. It turns "no broker
answers" into a :class:`BrokerUnavailable` naming the address, and holds the consumer settings
that keep a lone task's latency low and group membership short-lived enough
that a dead worker's partitions move on within seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from yadtq.config import Config
from yadtq.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

# Tansu and Apache Kafka both finish a group join about half a session timeout
# after the last member asks; 6 s keeps joins near 3 s and still tolerates GC pauses.
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000

def unavailable(config: Config, exc: Exception) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"cannot reach Kafka at {config.bootstrap} (from {config.source}): {exc}; start a "
        "broker or fix YADTQ_BOOTSTRAP, or use yadtq.connect('local')"
    )


def timeout_ms(config: Config) -> int:
    return int(config.connect_timeout * 1000)


def make_producer(config: Config, **overrides: Any) -> KafkaProducer:
    """A producer for task and dead-letter messages.

    Raises:
        BrokerUnavailable: no broker answered within the connect timeout.
    """
    settings: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap,
        "acks": "all",  # with min.insync.replicas 2, a sent task survives a broker's loss
        "enable_idempotence": True,  # a retried send after a leader change is not duplicated
        "linger_ms": 0,
        "max_request_size": max(config.max_message_bytes + 4096, 1_048_576),
        "bootstrap_timeout_ms": timeout_ms(config),
        "request_timeout_ms": max(timeout_ms(config), 5000),
        **config.kafka_options,
        **overrides,
    }
    try:
        return KafkaProducer(**settings)
    except (KafkaError, OSError) as exc:
        raise unavailable(config, exc) from None


def make_consumer(
    config: Config,
    *,
    client_id: str,
    on_assign: Callable[[set[TopicPartition]], None] | None = None,
    on_revoke: Callable[[set[TopicPartition]], None] | None = None,
) -> KafkaConsumer:
    """A consumer in the queue's worker group, subscribed to its tasks topic.

    Offsets are committed by hand, after the claim; a new group starts from
    the earliest message so tasks submitted before any worker ran are served.

    Raises:
        BrokerUnavailable: no broker answered within the connect timeout.
    """
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=config.bootstrap,
            group_id=config.consumer_group,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            # Bounds a rebalance that waits for a member to rejoin; a worker polls at
            # least every GROUP_POLL_INTERVAL (0.1 s) whatever its tasks do.
            max_poll_interval_ms=30_000,
            fetch_max_wait_ms=config.fetch_wait_ms,
            max_partition_fetch_bytes=max(config.max_message_bytes + 4096, 1_048_576),
            bootstrap_timeout_ms=timeout_ms(config),
            **config.kafka_options,
        )
    except (KafkaError, OSError) as exc:
        raise unavailable(config, exc) from None
    consumer.subscribe([config.tasks_topic], listener=_Rebalance(on_assign, on_revoke))
    _await_topic_metadata(consumer, config)
    return consumer


TOPIC_METADATA_RETRY = 0.05  # seconds between metadata requests while a new topic spreads


def _await_topic_metadata(consumer: KafkaConsumer, config: Config) -> None:
    """Fetch metadata until it shows the tasks topic's partitions, before the first join.

    kafka-python's group leader records the metadata it assigned from; joining
    before its subscription's metadata arrived, it records none, rejoins when
    the metadata comes, and a poll that times out during that rejoin loses its
    outcome (kafka-python 3.0: the member then stops heartbeating and leaves the
    group). On Apache Kafka a topic just created takes a moment to show.

    Raises:
        BrokerUnavailable: the topic did not show within the connect timeout.
    """
    deadline = time.monotonic() + config.connect_timeout
    # topics() always asks the broker, and the answer reaches the group coordinator.
    while config.tasks_topic not in consumer.topics() \
            or not partition_count(consumer, config.tasks_topic):
        if time.monotonic() > deadline:
            consumer.close()
            raise BrokerUnavailable(
                f"Kafka at {config.bootstrap} does not show topic {config.tasks_topic} "
                f"{config.connect_timeout:g} s after it was created; check the broker's logs")
        time.sleep(TOPIC_METADATA_RETRY)  # the next metadata request, not a synchronisation


class _Rebalance(ConsumerRebalanceListener):
    def __init__(
        self,
        on_assign: Callable[[set[TopicPartition]], None] | None,
        on_revoke: Callable[[set[TopicPartition]], None] | None,
    ) -> None:
        self._on_assign = on_assign
        self._on_revoke = on_revoke

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        if self._on_revoke:
            self._on_revoke(set(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        if self._on_assign:
            self._on_assign(set(assigned))


def make_reader(config: Config, *, client_id: str, fetch_wait_ms: int | None = None
                ) -> KafkaConsumer:
    """A consumer outside any group, for reading partitions by hand (assign and seek).

    ``fetch_wait_ms`` overrides how long a fetch may wait on the broker for data.

    Raises:
        BrokerUnavailable: no broker answered within the connect timeout.
    """
    try:
        return KafkaConsumer(
            bootstrap_servers=config.bootstrap, group_id=None, enable_auto_commit=False,
            client_id=client_id,
            fetch_max_wait_ms=config.fetch_wait_ms if fetch_wait_ms is None else fetch_wait_ms,
            bootstrap_timeout_ms=timeout_ms(config), **config.kafka_options,
        )
    except (KafkaError, OSError) as exc:
        raise unavailable(config, exc) from None


def partition_count(consumer: KafkaConsumer, topic: str) -> int:
    """How many partitions ``topic`` has, as the consumer's metadata knows it."""
    return len(consumer.partitions_for_topic(topic) or ())
