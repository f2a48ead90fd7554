"""A worker's own Prometheus metrics (--metrics-port): scraped from a real worker process.

The scrape is parsed with prometheus_client's parser and linted with ``promtool check
metrics`` (Debian's prometheus package); without promtool that check is skipped, unless
``YADTQ_REQUIRE_PROMETHEUS=1`` (set in CI) makes it a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from typing import Any

import pytest
from helpers import wait_until
from prometheus_client.parser import text_string_to_metric_families

from worker_node.tasks import add, fail, flaky, multiply, sleep
from yadtq.local import free_port

PROMTOOL = shutil.which("promtool")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The values of the samples called ``name``, by their labels (sorted pairs)."""
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name}


def by(values: dict[tuple[tuple[str, str], ...], float], *names: str) -> dict[Any, float]:
    """Sample values keyed by the given labels' values only (one label: its value)."""
    keys = [tuple(dict(labels)[n] for n in names) for labels in values]
    return {key if len(names) > 1 else key[0]: value
            for key, value in zip(keys, values.values(), strict=True)}


def test_worker_histograms_count_each_task_it_ran_by_task_and_outcome(
    client, config, start_workers, tmp_path
):
    # Given one worker serving its metrics on a free port
    port = free_port()
    cluster = start_workers(1, worker_args=["--metrics-port", str(port)])
    client.wait_for_workers(1, timeout=60)
    worker = cluster.worker_processes[0].name

    # When it runs 20 sums, a failure, a flaky task that succeeds on its retry, a 0.3 s
    # sleep, a sleep stopped at its time limit and a task due 3 s after it was submitted
    sums = client.map(add, [(i, i) for i in range(20)])
    failure = client.submit(fail, "on purpose")
    retried = client.submit_with(flaky, (str(tmp_path / "flaky.count"), 1), max_retries=1,
                                 retry_backoff=0.1)
    nap = client.submit(sleep, 0.3)
    overtime = client.submit_with(sleep, (30,), timeout=0.5)
    due = client.submit_with(multiply, (6, 7), countdown=3)
    assert sums.results(timeout=60) == [2 * i for i in range(20)]
    assert isinstance(failure.exception(timeout=60), Exception)
    assert retried.result(timeout=60) == 2
    assert nap.result(timeout=60) >= 0.3
    assert "time limit" in str(overtime.exception(timeout=60))
    assert due.result(timeout=60) == 42

    # Then the duration histogram counts every attempt by task and outcome ...
    expected = {("add", "success"): 20, ("fail", "failed"): 1, ("flaky", "retry"): 1,
                ("flaky", "success"): 1, ("sleep", "success"): 1, ("sleep", "timeout"): 1,
                ("multiply", "success"): 1}
    text = wait_until(lambda: _when(scrape(port), lambda t: by(samples(
        t, "yadtq_task_duration_seconds_count"), "task", "status") == expected),
        timeout=30, what=f"duration counts {expected}")
    counts = samples(text, "yadtq_task_duration_seconds_count")
    assert {dict(labels)["queue"] for labels in counts} == {config.queue}
    durations = by(samples(text, "yadtq_task_duration_seconds_sum"), "task", "status")
    assert 0.3 <= durations[("sleep", "success")] < 10
    assert 0.5 <= durations[("sleep", "timeout")] < 10
    buckets = samples(text, "yadtq_task_duration_seconds_bucket")
    sleeps = {dict(labels)["le"]: value for labels, value in buckets.items()
              if dict(labels)["task"] == "sleep" and dict(labels)["status"] == "success"}
    assert sleeps["0.25"] == 0 and sleeps["+Inf"] == 1

    # ... the queue-wait histogram one start per attempt, the due task's from when it
    # became due (not from its submission, 3 s earlier) ...
    waits = by(samples(text, "yadtq_task_queue_wait_seconds_count"), "task")
    assert waits == {"add": 20, "fail": 1, "flaky": 2, "sleep": 2, "multiply": 1}
    wait_sums = by(samples(text, "yadtq_task_queue_wait_seconds_sum"), "task")
    assert 0 <= wait_sums["multiply"] < 3, wait_sums
    assert all(0 <= value < 60 for value in wait_sums.values()), wait_sums

    # ... and the slot gauges name the worker
    assert samples(text, "yadtq_worker_slots") == {
        (("queue", config.queue), ("worker", worker)): cluster.concurrency}
    assert samples(text, "yadtq_worker_busy_slots") == {
        (("queue", config.queue), ("worker", worker)): 0}


def test_busy_slots_gauge_counts_a_running_task(client, start_workers):
    # Given a worker serving its metrics
    port = free_port()
    start_workers(1, worker_args=["--metrics-port", str(port)])
    client.wait_for_workers(1, timeout=60)

    # When a long task runs
    nap = client.submit(sleep, 3)

    # Then one slot is busy while it runs, and none once it ended
    wait_until(lambda: _busy(port) == 1, timeout=30, what="one busy slot")
    nap.result(timeout=60)
    wait_until(lambda: _busy(port) == 0, timeout=30, what="no busy slot")


def test_scraped_metrics_pass_promtool_check(client, start_workers):
    # Given a worker that ran a task and served its metrics
    if PROMTOOL is None:
        if os.environ.get("YADTQ_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("promtool is not on PATH (install Debian's prometheus package), "
                        "and YADTQ_REQUIRE_PROMETHEUS=1 is set")
        pytest.skip("promtool is not on PATH (Debian's prometheus package)")
    port = free_port()
    start_workers(1, worker_args=["--metrics-port", str(port)])
    client.wait_for_workers(1, timeout=60)
    assert client.submit(add, 1, 2).result(timeout=60) == 3
    text = wait_until(lambda: _when(scrape(port), lambda t: "yadtq_task_duration_seconds_count"
                                    in t), timeout=30, what="a task's duration in the scrape")

    # When promtool lints the scrape
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=60)

    # Then it finds no problem
    assert checked.returncode == 0 and not checked.stdout.strip(), (
        checked.stdout + checked.stderr)


def test_worker_whose_metrics_port_is_taken_exits_with_a_clear_error_and_claims_nothing(
    client, config
):
    # Given a task waiting and a port something already listens on
    future = client.submit(add, 1, 2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        # When a worker is started to serve its metrics there
        started = subprocess.run(
            [sys.executable, "-m", "worker_node", "--bootstrap", config.bootstrap,
             "--metrics-port", str(port), "--name", "blocked-worker"],
            env={**os.environ, **config.to_environment()}, capture_output=True, text=True,
            timeout=120)

    # Then it exits non-zero, saying which port and what to do, and left the task queued
    assert started.returncode != 0
    assert f"127.0.0.1:{port}" in started.stderr and "already in use" in started.stderr
    assert "--metrics-port" in started.stderr
    assert client.status(future.id) == "queued"


def _busy(port: int) -> float:
    return sum(samples(scrape(port), "yadtq_worker_busy_slots").values())


def _when(text: str, check: Any) -> str | None:
    """``text`` if ``check(text)`` holds (for wait_until to return it), else None."""
    return text if check(text) else None
