"""A worker's own Prometheus metrics (worker runtime), served by the worker over HTTP.

Histograms of how long this worker's tasks ran and how long they waited to start, and
gauges of its slots, busy or not (docs/operating.md, "Worker metrics"). They live in the
worker process, so a scrape needs no Redis; Prometheus sums them over workers. Queue-wide
figures (counts by status, queue depth) belong to the Redis counters instead.

The hot path is one ``observe()`` per histogram and task, under prometheus_client's own
lock, and a dictionary operation: no Redis call, no lock of ours. A worker started without
a metrics port gets :data:`NO_METRICS`, whose calls do nothing and which serves nothing.

When a task began waiting: when the Kafka message this worker read was produced (a retry,
a re-run after a lost lease and a readied workflow child are produced again, so each
waits from when it became queued again); for a task claimed by a doorbell straight from
its Redis record, with no message read, from its submission (``submitted_at``).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

from yadtq import protocol
from yadtq.backend import Outcome
from yadtq.broker import Delivery
from yadtq.errors import ConfigurationError
from yadtq.status import TaskStatus

logger = logging.getLogger(__name__)

# Seconds, from a trivial task (1 ms) to hours-long ones.
BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
           300.0, 1800.0, 3600.0)
# Kafka times of messages read but not yet run (skipped ones are never taken out): past
# this many, they are forgotten, and those tasks wait from their submission instead.
QUEUED_TIMES_KEPT = 10_000
# Failures the worker names by their own status label (the rest are "failed").
_FAILURE_LABELS = {"TaskTimeout": "timeout", "TaskCancelled": "cancelled"}


def status_label(report: Outcome) -> str:
    """The ``status`` label of an attempt's outcome: success, retry, timeout, cancelled or
    failed."""
    if report.status is TaskStatus.SUCCESS:
        return "success"
    if report.retry_at is not None:
        return "retry"
    return _FAILURE_LABELS.get(report.error_type, "failed")


class WorkerMetrics:
    """One worker's histograms and slot gauges, in a registry of their own, served over
    HTTP on ``host:port`` from a thread of prometheus_client's."""

    def __init__(self, *, queue: str, worker: str, slots: int, host: str, port: int) -> None:
        """Bind the port first, so a worker that cannot serve its metrics stops before it
        takes any task.

        Raises:
            ConfigurationError: the port is in use, or the address cannot be bound.
        """
        self.registry = CollectorRegistry()
        self._queue = queue
        self._duration = Histogram(
            "yadtq_task_duration_seconds",
            "How long a task ran in this worker, from its start to its outcome.",
            ["queue", "task", "status"], registry=self.registry, buckets=BUCKETS)
        self._wait = Histogram(
            "yadtq_task_queue_wait_seconds",
            "How long a task waited, from when it was queued to when this worker started it.",
            ["queue", "task"], registry=self.registry, buckets=BUCKETS)
        Gauge("yadtq_worker_slots", "Tasks this worker runs at once (its concurrency).",
              ["queue", "worker"], registry=self.registry).labels(queue, worker).set(slots)
        self._busy = Gauge("yadtq_worker_busy_slots", "This worker's slots running a task now.",
                           ["queue", "worker"], registry=self.registry).labels(queue, worker)
        self._durations: dict[tuple[str, str], Histogram] = {}  # children by (task, status)
        self._waits: dict[str, Histogram] = {}  # children by task
        self._queued_at: dict[str, float] = {}  # task id -> when its message was produced
        self.address = f"{host}:{port}"
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigurationError(
                    f"cannot serve worker metrics on {self.address}: port {port} is already "
                    "in use (another worker on this host?); give each worker its own "
                    "--metrics-port (or $YADTQ_METRICS_PORT), or stop what listens there"
                ) from None
            raise ConfigurationError(
                f"cannot serve worker metrics on {self.address}: {exc.strerror or exc}; "
                "check --metrics-host and --metrics-port") from None
        logger.info("Worker %s: serving metrics on http://%s/metrics", worker, self.address)

    def watch_slots(self, busy: Callable[[], int]) -> None:
        """Read the busy-slot gauge from ``busy()`` at each scrape (nothing per task)."""
        self._busy.set_function(busy)

    def read(self, deliveries: Sequence[Delivery]) -> None:
        """Note when each message read was produced: its task waits from then."""
        if len(self._queued_at) > QUEUED_TIMES_KEPT:
            self._queued_at.clear()
        for delivery in deliveries:
            if delivery.message is not None and delivery.timestamp > 0:
                self._queued_at[delivery.message.id] = delivery.timestamp / 1000

    def ran(self, message: protocol.TaskMessage, report: Outcome, started: float,
            seconds: float) -> None:
        """Observe a task that ran for ``seconds`` from ``started`` (epoch seconds) and
        ended as ``report``."""
        key = (message.task, status_label(report))
        duration = self._durations.get(key)
        if duration is None:
            duration = self._durations[key] = self._duration.labels(self._queue, *key)
        duration.observe(seconds)
        queued_at = self._queued_at.pop(message.id, None) or message.submitted_at
        if queued_at is None:
            return  # a legacy message claimed from its record: when it was queued is unknown
        wait = self._waits.get(message.task)
        if wait is None:
            wait = self._waits[message.task] = self._wait.labels(self._queue, message.task)
        wait.observe(max(0.0, started - queued_at))

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class NoMetrics:
    """A worker's metrics when it serves none: every call does nothing."""

    def watch_slots(self, busy: Callable[[], int]) -> None:
        """Nothing to watch."""

    def read(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to note."""

    def ran(self, message: protocol.TaskMessage, report: Outcome, started: float,
            seconds: float) -> None:
        """Nothing to observe."""

    def close(self) -> None:
        """Nothing to stop."""


NO_METRICS = NoMetrics()
