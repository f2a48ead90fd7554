"""The queue's topics (Kafka adapter): created by yadtq, with replicas fit for the cluster."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from yadtq.broker.clients import timeout_ms, unavailable
from yadtq.config import Config
from yadtq.errors import ConfigurationError

logger = logging.getLogger(__name__)


def create_topics(config: Config) -> None:
    """Create the queue's tasks topics (one a priority level, with as many partitions as
    the normal level's) and its dead-letter topic if they do not exist yet.

    yadtq makes its own topics, because production clusters usually turn
    auto-creation off. Replicas: ``config.replication_factor``, else min(3, brokers
    in the cluster); with 3 or more, ``min.insync.replicas`` is 2, so with
    ``acks=all`` a write survives the loss of any one broker. A tasks topic that
    already has fewer partitions than configured is used as it is, with a warning.

    Raises:
        BrokerUnavailable: no broker answered within the connect timeout.
        ConfigurationError: more replicas are asked for than the cluster has brokers.
    """
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=config.bootstrap,
            bootstrap_timeout_ms=timeout_ms(config),
            request_timeout_ms=max(timeout_ms(config), 5000),
            **config.kafka_options,
        )
    except (KafkaError, OSError) as exc:
        raise unavailable(config, exc) from None
    try:
        existing = set(admin.list_topics())
        partitions = config.partitions
        if config.tasks_topic in existing:
            partitions = _partitions_of_tasks_topic(admin, config)
        wanted = {name: partitions for name in config.level_topics()}
        wanted[config.dead_letter_topic] = 1
        if set(wanted) <= existing:
            return
        replicas = _replication_factor(admin, config)
        settings = {"min.insync.replicas": "2" if replicas >= 3 else "1"}
        for name, count in wanted.items():
            if name in existing:
                continue
            try:
                # Waits until every partition has a leader: a KRaft cluster's metadata lags.
                admin.create_topics(
                    {name: {"num_partitions": count, "replication_factor": replicas,
                            "configs": settings}},
                    wait_for_metadata=True,
                )
                logger.info("created topic %s with %d partitions and %d replicas", name,
                            count, replicas)
            except TopicAlreadyExistsError:
                pass
    except KafkaError as exc:
        raise unavailable(config, exc) from None
    finally:
        admin.close()


def _replication_factor(admin: KafkaAdminClient, config: Config) -> int:
    brokers = len(admin.describe_cluster()["brokers"])
    if config.replication_factor is None:
        return max(1, min(3, brokers))
    if config.replication_factor > brokers:
        raise ConfigurationError(
            f"replication factor {config.replication_factor} (from {config.source}) is more "
            f"than the {brokers} broker(s) of the cluster at {config.bootstrap}; lower "
            "YADTQ_REPLICATION_FACTOR or add brokers"
        )
    return config.replication_factor


def _partitions_of_tasks_topic(admin: KafkaAdminClient, config: Config) -> int:
    """How many partitions the existing tasks topic has (the other levels get as many),
    with a warning when fewer than configured."""
    [described] = admin.describe_topics([config.tasks_topic])
    count = len(described["partitions"])
    if count < config.partitions:
        logger.warning(
            "topic %s has %d partitions, fewer than the %d configured: at most %d workers of "
            "queue %r get tasks; add partitions with kafka-topics --alter, or configure "
            "partitions=%d", config.tasks_topic, count, config.partitions, count, config.queue,
            count,
        )
    return count


def _probe_admin(bootstrap: str) -> KafkaAdminClient | None:
    try:
        return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="yadtq-probe",
                                request_timeout_ms=2000, bootstrap_timeout_ms=2000)
    except KafkaError:
        return None


def serves_metadata(bootstrap: str) -> bool:
    """True if the broker at ``bootstrap`` answers a metadata request (one try, ~2 s at most)."""
    admin = _probe_admin(bootstrap)
    if admin is None:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def broker_count(bootstrap: str) -> int:
    """How many brokers the cluster's metadata lists (0 when none answers; one try)."""
    admin = _probe_admin(bootstrap)
    if admin is None:
        return 0
    try:
        return len(admin.describe_cluster().get("brokers", ()))
    except KafkaError:
        return 0
    finally:
        admin.close()
