"""Real servers for the tests: one embedded stack per session, a fresh queue per test.

``YADTQ_TEST_BROKER`` chooses the broker every test runs on: ``tansu`` (the
default) or ``apache-kafka``. It is handed to every local stack the tests start,
in this process and in the notebooks and CLIs they run, as ``YADTQ_LOCAL_BROKER``.
Without Java or Maven the Apache Kafka run is skipped, unless
``YADTQ_REQUIRE_APACHE_KAFKA=1`` (set in CI) makes that a failure.

Nothing here mocks Kafka or Redis. Each test gets its own queue name (so its
own topic and consumer group) and its own Redis key prefix, so tests stay
isolated without flushing anything. A missing broker or Redis binary fails
the run; it never skips.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import yadtq
from yadtq.backend import RedisBackend
from yadtq.config import Config
from yadtq.local import APACHE_KAFKA, BROKERS, LocalCluster, LocalStack

TEST_BROKER = os.environ.get("YADTQ_TEST_BROKER") or "tansu"
if TEST_BROKER not in BROKERS:
    raise pytest.UsageError(
        f"YADTQ_TEST_BROKER={TEST_BROKER!r}: choose one of {', '.join(BROKERS)}")
os.environ["YADTQ_LOCAL_BROKER"] = TEST_BROKER


def pytest_report_header() -> str:
    return f"yadtq broker: {TEST_BROKER}"


def _missing_apache_kafka_tools() -> list[str]:
    if TEST_BROKER != APACHE_KAFKA:
        return []
    return [tool for tool in ("java", "mvn") if shutil.which(tool) is None]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip (or, in CI, fail) an Apache Kafka run on a machine without Java or Maven."""
    missing = _missing_apache_kafka_tools()
    if not missing:
        return
    reason = f"YADTQ_TEST_BROKER=apache-kafka needs {' and '.join(missing)} on PATH"
    if os.environ.get("YADTQ_REQUIRE_APACHE_KAFKA") == "1":
        raise pytest.UsageError(reason + " (and YADTQ_REQUIRE_APACHE_KAFKA=1 is set)")
    for item in items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A real Kafka-protocol broker and Redis-protocol server for the whole session."""
    with LocalStack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture
def config(stack: LocalStack) -> Config:
    """Settings for a queue and key prefix no other test uses."""
    unique = uuid.uuid4().hex[:10]
    return Config(
        bootstrap=stack.bootstrap,
        redis_url=stack.redis_url,
        queue=f"t-{unique}",
        key_prefix=f"test-{unique}",
        heartbeat_interval=0.5,
        lease_seconds=3.0,
        source="test fixture",
    )


@pytest.fixture
def backend(config: Config) -> Iterator[RedisBackend]:
    """The test queue's Redis backend, connected (for tests of the scripts and records)."""
    connected = RedisBackend(config)
    connected.check_connection()
    yield connected
    connected.close()


@pytest.fixture
def client(config: Config) -> Iterator[yadtq.Client]:
    """A client of the test's queue."""
    with yadtq.Client(config) as connected:
        yield connected


@pytest.fixture
def start_workers(
    stack: LocalStack, config: Config
) -> Iterator[Callable[..., LocalCluster]]:
    """Start N real worker processes on the test's queue; stopped after the test."""
    clusters: list[LocalCluster] = []

    def start(count: int = 3, **options: Any) -> LocalCluster:
        cluster = LocalCluster(
            workers=count,
            stack=stack,
            queue=config.queue,
            key_prefix=config.key_prefix,
            heartbeat_interval=config.heartbeat_interval,
            lease_seconds=config.lease_seconds,
            **{"trust_code": False, **options},  # the tests' clients sign nothing by default
        )
        clusters.append(cluster.start())
        return cluster

    yield start
    for cluster in clusters:
        cluster.stop()
