"""Real servers for the tests: one embedded stack per session, a fresh queue per test.

Nothing here mocks Kafka or Redis. Each test gets its own queue name (so its
own topic and consumer group) and its own Redis key prefix, so tests stay
isolated without flushing anything. A missing broker or Redis binary fails
the run; it never skips.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import yadtq
from yadtq.config import Config
from yadtq.local import LocalCluster, LocalStack


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
            **options,
        )
        clusters.append(cluster.start())
        return cluster

    yield start
    for cluster in clusters:
        cluster.stop()
