"""Queue-wide metrics scraped by a real Prometheus (issue 25): `yadtq metrics` serves what
the scripts count in Redis, so a scrape right after a map ends adds up to it, and killing a
worker resets nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until
from prometheus_client.parser import text_string_to_metric_families

from yadtq.config import Config
from yadtq.local import free_port

SCRAPE_SECONDS = 1.0


def _missing(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("YADTQ_REQUIRE_PROMETHEUS"):
            pytest.fail(f"{tool} is not installed (apt-get install prometheus)")
        pytest.skip(f"{tool} is not installed (apt-get install prometheus)")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


class Prometheus:
    """A real Prometheus server scraping one target every second, and its query API."""

    def __init__(self, target: str, workdir: Path) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_SECONDS:g}s\n"
            f"  scrape_timeout: {SCRAPE_SECONDS:g}s\n"
            "scrape_configs:\n"
            "  - job_name: yadtq\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n")
        self.log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def query(self, expression: str) -> float | None:
        """The single value of an instant query, or None when it has no sample."""
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expression}))
        result = json.loads(_get(url))["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def target_up(self) -> bool:
        try:
            targets = json.loads(_get(f"http://127.0.0.1:{self.port}/api/v1/targets"))
        except OSError:
            return False
        return any(t["health"] == "up" for t in targets["data"]["activeTargets"])

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def exporter(config: Config) -> Iterator[str]:
    """`yadtq metrics` as a real process on a free port; its host:port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "yadtq", "metrics", "--port", str(port)],
        env={**os.environ, **config.to_environment()})
    address = f"127.0.0.1:{port}"

    def serving() -> bool:
        try:
            return "yadtq_redis_up" in _get(f"http://{address}/metrics")
        except OSError:
            return False

    try:
        wait_until(serving, 30, "yadtq metrics to serve")
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


def test_metrics_pass_promtool_and_equal_the_counters(client, exporter, start_workers):
    _missing("promtool")
    start_workers(1)
    client.map("add", [(i, i) for i in range(5)]).wait(timeout=60)
    client.submit("fail", "no").exception(timeout=60)

    scraped = _get(f"http://{exporter}/metrics")
    check = subprocess.run(["promtool", "check", "metrics"], input=scraped, text=True,
                           capture_output=True, timeout=30)
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(scraped) for s in family.samples}
    queue = client.config.queue
    assert samples[("yadtq_tasks_submitted_total", (("queue", queue),))] == 6
    assert samples[("yadtq_task_outcomes_total",
                    (("queue", queue), ("status", "success"), ("task", "add")))] == 5
    assert samples[("yadtq_task_outcomes_total",
                    (("queue", queue), ("status", "failed"), ("task", "fail")))] == 1
    assert samples[("yadtq_workers_alive", (("queue", queue),))] == 1
    assert samples[("yadtq_tasks", (("queue", queue), ("status", "processing")))] == 0
    assert samples[("yadtq_redis_up", (("queue", queue),))] == 1


def test_prometheus_sees_a_map_end_within_a_scrape_and_no_counter_resets_on_a_worker_kill(
    client, exporter, start_workers, tmp_path
):
    _missing("prometheus")
    prometheus = Prometheus(exporter, tmp_path)
    try:
        wait_until(prometheus.target_up, 60, "Prometheus to scrape yadtq metrics")
        # Given 3 workers and a 2,000-task map under way
        cluster = start_workers(3, concurrency=2)
        queue = client.config.queue
        batch = client.map("sleep", [(0.01,)] * 2000)
        wait_until(lambda: batch.status_counts()["success"] >= 600, 120, "30 % of the map")

        # When a worker is killed mid-map (and another takes its place)
        cluster.kill_worker(0)
        start_workers(1, concurrency=2)
        batch.wait(timeout=180)
        ended = time.monotonic()

        # Then within a scrape of the end the outcomes add up to 2,000, nothing is
        # processing, and 3 workers are alive
        outcomes = f'sum(yadtq_task_outcomes_total{{queue="{queue}"}})'
        wait_until(lambda: prometheus.query(outcomes) == 2000, 3 * SCRAPE_SECONDS + 5,
                   "Prometheus to see 2,000 outcomes")
        seen_after = time.monotonic() - ended
        print(f"Prometheus saw the 2,000 outcomes {seen_after:.2f} s after the map ended")
        assert seen_after <= 2 * SCRAPE_SECONDS + 1, f"seen {seen_after:.2f} s after the end"
        assert prometheus.query(f'yadtq_tasks{{queue="{queue}",status="processing"}}') == 0
        wait_until(lambda: prometheus.query(f'yadtq_workers_alive{{queue="{queue}"}}') == 3,
                   30, "3 live workers in Prometheus")
        # And no counter went down across the kill
        for counter in ("yadtq_task_outcomes_total", "yadtq_tasks_submitted_total",
                        "yadtq_tasks_requeued_total"):
            assert prometheus.query(f'sum(resets({counter}{{queue="{queue}"}}[10m]))') == 0
        assert prometheus.query(f'sum(yadtq_tasks_submitted_total{{queue="{queue}"}})') == 2000
    finally:
        prometheus.stop()


def test_the_documented_prometheus_config_and_alert_rules_pass_promtool():
    _missing("promtool")
    config = Path(__file__).resolve().parents[1] / "docs" / "prometheus" / "prometheus.yml"
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "6 rules found" in check.stdout
