"""Waiting helpers for tests: wait on the thing itself, with a deadline."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from yadtq.config import Config
from yadtq.status import COUNTERS


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until truthy; on timeout fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last saw {last!r}")


def dead_letters(
    config: Config,
    expected: int = 0,
    timeout: float = 60,
    until: Callable[[list[dict[str, Any]]], bool] | None = None,
) -> list[dict[str, Any]]:
    """The queue's dead letters, read from the start by a group-less consumer.

    Reads until ``expected`` letters (or ``until(letters)``) or the timeout.
    """
    done = until or (lambda letters: len(letters) >= expected)
    consumer = KafkaConsumer(bootstrap_servers=config.bootstrap, enable_auto_commit=False)
    partition = TopicPartition(config.dead_letter_topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    letters: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(letters) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                letters.extend(json.loads(r.value) for r in batch)
    finally:
        consumer.close()
    return letters


def status_counts(total: int, **nonzero: int) -> dict[str, int]:
    """A batch's counts as ``status_counts()`` gives them: ``total``, and every status
    zero but those named."""
    return {"total": total, **dict.fromkeys(COUNTERS, 0), **nonzero}


def messages_on_topic(config: Config) -> int:
    """How many messages the queue's tasks topic holds (end offsets summed)."""
    consumer = KafkaConsumer(bootstrap_servers=config.bootstrap)
    try:
        partitions = [TopicPartition(config.tasks_topic, p)
                      for p in consumer.partitions_for_topic(config.tasks_topic) or ()]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def most_in_a_window(times: Sequence[float], window: float) -> int:
    """The most of ``times`` in any half-open window [t, t + window)."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        most = max(most, end - start + 1)
    return most


def most_at_once(spans: Sequence[tuple[float, float]]) -> int:
    """The most of (start, end) spans overlapping at any moment (an end before a start)."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most
