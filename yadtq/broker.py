"""The Kafka adapter (adapter layer): producer, consumer group, reader and topic admin.

Every kafka-python client the runtime uses is built here. It turns "no broker
answers" into a :class:`BrokerUnavailable` naming the address, and holds the consumer settings
that keep a lone task's latency low and group membership short-lived enough
that a dead worker's partitions move on within seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, TopicAlreadyExistsError

from yadtq.config import Config
from yadtq.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

# Tansu and Apache Kafka both finish a group join about half a session timeout
# after the last member asks; 6 s keeps joins near 3 s and still tolerates GC pauses.
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000

__all__ = [
    "ConsumerRebalanceListener",
    "TopicPartition",
    "create_topics",
    "make_consumer",
    "make_producer",
    "make_reader",
]


def _unavailable(config: Config, exc: Exception) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"cannot reach Kafka at {config.bootstrap} (from {config.source}): {exc}; start a "
        "broker or fix YADTQ_BOOTSTRAP, or use yadtq.connect('local')"
    )


def _timeout_ms(config: Config) -> int:
    return int(config.connect_timeout * 1000)


def make_producer(config: Config, **overrides: Any) -> KafkaProducer:
    """A producer for task and dead-letter messages.

    Raises:
        BrokerUnavailable: no broker answered within the connect timeout.
    """
    settings: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap,
        "acks": "all",
        "linger_ms": 0,
        "max_request_size": max(config.max_message_bytes + 4096, 1_048_576),
        "bootstrap_timeout_ms": _timeout_ms(config),
        "request_timeout_ms": max(_timeout_ms(config), 5000),
        **config.kafka_options,
        **overrides,
    }
    try:
        return KafkaProducer(**settings)
    except (KafkaError, OSError) as exc:
        raise _unavailable(config, exc) from None


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
            max_poll_interval_ms=300_000,
            fetch_max_wait_ms=config.fetch_wait_ms,
            max_partition_fetch_bytes=max(config.max_message_bytes + 4096, 1_048_576),
            bootstrap_timeout_ms=_timeout_ms(config),
            **config.kafka_options,
        )
    except (KafkaError, OSError) as exc:
        raise _unavailable(config, exc) from None
    consumer.subscribe([config.tasks_topic], listener=_Rebalance(on_assign, on_revoke))
    return consumer


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
            bootstrap_timeout_ms=_timeout_ms(config), **config.kafka_options,
        )
    except (KafkaError, OSError) as exc:
        raise _unavailable(config, exc) from None


def create_topics(config: Config) -> None:
    """Create the queue's tasks and dead-letter topics if they do not exist yet.

    Raises:
        BrokerUnavailable: no broker answered within the connect timeout.
    """
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=config.bootstrap,
            bootstrap_timeout_ms=_timeout_ms(config),
            request_timeout_ms=max(_timeout_ms(config), 5000),
            **config.kafka_options,
        )
    except (KafkaError, OSError) as exc:
        raise _unavailable(config, exc) from None
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(config.tasks_topic, config.partitions, 1),
            NewTopic(config.dead_letter_topic, 1, 1),
        ]
        for topic in wanted:
            if topic.name in existing:
                continue
            try:
                admin.create_topics([topic])
                logger.info("created topic %s with %d partitions", topic.name,
                            topic.num_partitions)
            except TopicAlreadyExistsError:
                pass
    except KafkaError as exc:
        raise _unavailable(config, exc) from None
    finally:
        admin.close()


def partition_count(consumer: KafkaConsumer, topic: str) -> int:
    """How many partitions ``topic`` has, as the consumer's metadata knows it."""
    return len(consumer.partitions_for_topic(topic) or ())
