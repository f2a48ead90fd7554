"""Queue-wide metrics in the Prometheus format (top layer): ``yadtq metrics --port``.

Built at scrape time from what Redis holds, with a ``prometheus_client`` custom collector:
the counters the scripts move with the task states (``backend.queue_stats``), so they match
``yadtq status`` exactly and never reset when a worker or this exporter restarts, and the
workers' heartbeat records (live workers, slots, what waits in Kafka for them). Nothing is
kept here, so any number of exporters (and the dashboard's ``/metrics``) agree. A worker's
own task-duration histograms are served by the worker (``python -m worker_node
--metrics-port``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from yadtq.backend import RedisBackend
from yadtq.config import Config
from yadtq.errors import YadtqError
from yadtq.priority import LEVELS
from yadtq.routing import liveness
from yadtq.status import FINISHED, TaskStatus
from yadtq.worker_table import waiting_by_level

logger = logging.getLogger(__name__)

LIVE_STATUSES = [status.value for status in TaskStatus if status not in FINISHED]


class QueueCollector(Collector):
    """The queue-wide metrics of some queues, read from Redis at each scrape."""

    def __init__(self, backends: Sequence[RedisBackend]) -> None:
        self._backends = list(backends)

    def collect(self) -> Iterator[Metric]:
        """One family per metric, a sample per queue; ``yadtq_redis_up`` 0 for a queue
        whose Redis did not answer (its other samples are left out, not zeroed)."""
        submitted = CounterMetricFamily(
            "yadtq_tasks_submitted", "Tasks written to the queue (submits, map items, "
            "schedule occurrences, plain messages)", labels=["queue"])
        outcomes = CounterMetricFamily(
            "yadtq_task_outcomes", "Final outcomes reached, by task name and status "
            "(success, failed, cancelled, skipped)", labels=["queue", "task", "status"])
        retries = CounterMetricFamily(
            "yadtq_task_retries", "Attempts that failed and were queued to run again",
            labels=["queue"])
        requeued = CounterMetricFamily(
            "yadtq_tasks_requeued", "Tasks queued again without an outcome: an expired "
            "lease, a dead worker, a hand-back on shutdown", labels=["queue"])
        dead_lettered = CounterMetricFamily(
            "yadtq_tasks_dead_lettered", "Tasks ended because workers refused their message "
            "(sent to the dead-letter topic)", labels=["queue"])
        in_status = GaugeMetricFamily(
            "yadtq_tasks", "Tasks now in each unfinished status", labels=["queue", "status"])
        workers = GaugeMetricFamily(
            "yadtq_workers_alive", "Workers whose heartbeats are current", labels=["queue"])
        slots = GaugeMetricFamily(
            "yadtq_slots", "Task slots of the live workers", labels=["queue"])
        busy = GaugeMetricFamily(
            "yadtq_slots_busy", "Slots of the live workers running a task", labels=["queue"])
        lag = GaugeMetricFamily(
            "yadtq_kafka_lag_messages", "Messages in Kafka not yet read by the live workers, "
            "per priority level, as of their last heartbeats", labels=["queue", "level"])
        up = GaugeMetricFamily(
            "yadtq_redis_up", "1 if the queue's Redis answered this scrape", labels=["queue"])
        for backend in self._backends:
            queue = backend.config.queue
            try:
                stats = backend.queue_stats()
                records = backend.workers()
            except (YadtqError, OSError) as exc:
                logger.warning("metrics of queue %s not read: %s", queue, exc)
                up.add_metric([queue], 0)
                continue
            up.add_metric([queue], 1)
            submitted.add_metric([queue], stats.submitted)
            for (task, status), count in sorted(stats.outcomes.items()):
                outcomes.add_metric([queue, task, status], count)
            retries.add_metric([queue], stats.retries)
            requeued.add_metric([queue], stats.requeued)
            dead_lettered.add_metric([queue], stats.dead_lettered)
            for status in LIVE_STATUSES:
                in_status.add_metric([queue, status], max(0, stats.statuses.get(status, 0)))
            alive = _alive(records, queue)
            workers.add_metric([queue], len(alive))
            slots.add_metric([queue], sum(int(r.get("concurrency") or 0) for r in alive))
            busy.add_metric([queue], sum(int(r.get("in_flight") or 0) for r in alive))
            for level, waiting in _waiting(alive).items():
                lag.add_metric([queue, level], waiting)
        yield from (submitted, outcomes, retries, requeued, dead_lettered, in_status, workers,
                    slots, busy, lag, up)


def _alive(records: list[dict[str, Any]], queue: str) -> list[dict[str, Any]]:
    now = time.time()
    return [record for record in records if record.get("queue", queue) == queue
            and liveness(record, now) == "alive"]


def _waiting(alive: list[dict[str, Any]]) -> dict[str, int]:
    totals = {level.value: 0 for level in LEVELS}
    for record in alive:
        for level, count in waiting_by_level(record).items():
            totals[level] += count
    return totals


def queue_registry(config: Config, queues: Sequence[str] = ()) -> CollectorRegistry:
    """A registry holding only the queue-wide metrics of ``queues`` (default: the config's
    queue), for an HTTP server or an ASGI app to expose."""
    names = list(dict.fromkeys(queues)) or [config.queue]
    return registry_of([RedisBackend(config.with_overrides(queue=name)) for name in names])


def registry_of(backends: Sequence[RedisBackend]) -> CollectorRegistry:
    """A registry holding only the queue-wide metrics of these queues' backends."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(backends))
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """A scrape's body and content type (for a web app serving ``/metrics`` itself)."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve(config: Config, port: int, host: str = "127.0.0.1", queues: Sequence[str] = ()
          ) -> Any:
    """Serve the queue-wide metrics at http://host:port/metrics in a background thread.

    Returns the server (``shutdown()`` stops it).

    Raises:
        YadtqError: the port is taken, or the address cannot be bound.
    """
    try:
        server, _thread = start_http_server(port, addr=host,
                                            registry=queue_registry(config, queues))
    except OSError as exc:
        raise YadtqError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                         "pick another --port (or stop what holds this one)") from exc
    return server
