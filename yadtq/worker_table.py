"""The workers table (core layer): heartbeat records as rows a person can read.

``Client.workers()``, ``yadtq workers`` and ``yadtq local status`` show the same
columns; ``settled`` says when a queue's workers share out every partition.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from yadtq.extras import require
from yadtq.priority import LEVELS
from yadtq.routing import liveness

if TYPE_CHECKING:
    import pandas

    from yadtq.backend import RedisBackend
    from yadtq.config import Config

logger = logging.getLogger(__name__)

WORKER_COLUMNS = [
    "name", "host", "pid", "status", "heartbeat_age", "in_flight", "processed", "failed",
    "fired", "concurrency", "partitions", "topic_partitions", "tasks", "started_at",
    "last_heartbeat", "settings_differ", "waiting_high", "waiting_normal", "waiting_low",
]

LIMIT_COLUMNS = ["limit", "task", "kind", "running", "waiting"]


def format_rows(rows: list[dict[str, Any]],
                columns: Sequence[str] = ("name", "host", "pid", "status", "heartbeat_age",
                                          "in_flight", "processed", "failed", "partitions",
                                          "waiting")
                ) -> str:
    """Worker rows as an aligned text table (for terminals, without pandas); ``waiting``
    is what waits for the worker at each priority level, high/normal/low."""
    table = [list(columns)] + [[_cell(row, c) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                     .rstrip() for line in table)


def _cell(row: dict[str, Any], column: str) -> str:
    if column == "waiting":
        return "/".join(str(row.get(f"waiting_{level.value}", 0)) for level in LEVELS)
    return str(row.get(column, ""))


def settled(alive: list[dict[str, Any]], count: int) -> bool:
    """True when ``count`` live workers hold every partition between them, each at most once."""
    if len(alive) < count:
        return False
    held = [p for row in alive for p in row["partitions"].split(",") if p]
    total = max((row["topic_partitions"] for row in alive), default=0)
    holders = sum(1 for row in alive if row["partitions"])
    return total > 0 and sorted(held) == sorted(set(held)) and len(held) == total \
        and holders >= min(count, total)


def settings_differ(record: dict[str, str], expected: dict[str, Any]) -> str:
    """The shared settings in which a worker's heartbeat record differs from ``expected``."""
    try:
        settings = json.loads(record.get("settings") or "null")
    except ValueError:
        settings = None
    if not isinstance(settings, dict):
        return "unknown (the worker does not report its settings)"
    return ",".join(sorted(k for k, v in expected.items() if settings.get(k) != v))


def worker_row(record: dict[str, str], now: float, expected: dict[str, Any]) -> dict[str, Any]:
    """One heartbeat record as a row of ``WORKER_COLUMNS``, judged at ``now`` against the
    client's ``expected`` shared settings."""
    last = float(record.get("last_heartbeat") or 0)
    return {
        "name": record.get("name"),
        "host": record.get("host"),
        "pid": int(record.get("pid") or 0),
        "status": liveness(record, now),
        "heartbeat_age": max(0.0, round(now - last, 2)),
        "in_flight": int(record.get("in_flight") or 0),
        "processed": int(record.get("processed") or 0),
        "failed": int(record.get("failed") or 0),
        "fired": int(record.get("fired") or 0),  # schedule occurrences it fired
        "concurrency": int(record.get("concurrency") or 0),
        "partitions": record.get("partitions", ""),
        "topic_partitions": int(record.get("topic_partitions") or 0),
        "tasks": record.get("tasks", ""),
        "started_at": float(record.get("started_at") or 0),
        "last_heartbeat": last,
        "settings_differ": settings_differ(record, expected),
        # What waits for it at each priority level (buffered, or in its partitions).
        **{f"waiting_{level}": count for level, count in waiting_by_level(record).items()},
    }


def waiting_by_level(record: dict[str, str]) -> dict[str, int]:
    """What a worker's last heartbeat says waits for it in Kafka, per priority level."""
    try:
        reported = json.loads(record.get("waiting") or "{}")
    except ValueError:
        reported = {}
    return {level.value: int(reported.get(level.value, 0)) for level in LEVELS}


class WorkerViews:
    """The client's views of its queue's workers (mixed into ``Client``, which provides
    its config and backend)."""

    config: Config
    backend: RedisBackend
    _warned: set[tuple[str, tuple[str, ...]]]

    def worker_rows(self) -> list[dict[str, Any]]:
        """The queue's workers as dicts of :data:`WORKER_COLUMNS` (no pandas needed).

        ``status`` is judged from the heartbeats (alive, dead or stopped);
        ``heartbeat_age`` is seconds, never negative (a worker's clock may run ahead);
        ``started_at`` and ``last_heartbeat`` are unix seconds; ``settings_differ``
        names the shared settings (key prefix, lease, TTL, secret, ...) in which the
        worker disagrees with this client, empty when they agree.
        """
        now = time.time()
        expected = self.config.shared_settings()
        return [worker_row(w, now, expected) for w in self.backend.workers()
                if w.get("queue", self.config.queue) == self.config.queue]

    def workers(self) -> pandas.DataFrame:
        """One row per registered worker (see :meth:`worker_rows`), as a DataFrame.

        ``started_at`` and ``last_heartbeat`` are UTC timestamps, as the times of
        ``TaskBatch.to_dataframe()`` are (``worker_rows`` keeps them unix seconds).

        Raises:
            ImportError: pandas is not installed (the ``notebook`` extra).
        """
        pandas = require("pandas", "Client.workers()")
        frame = pandas.DataFrame(self.worker_rows(), columns=WORKER_COLUMNS)
        for column in ("started_at", "last_heartbeat"):
            frame[column] = pandas.to_datetime(frame[column], unit="s", utc=True)
        frame.attrs["limits"] = self.limit_rows()  # what waits for which limit
        return frame

    def limit_rows(self) -> list[dict[str, Any]]:
        """The queue's rate and concurrency limits in use, busiest first: ``limit``
        ("rate 20/s", "concurrency 2"), ``task``, ``kind``, ``running`` (holding a share,
        or started within the rate's period) and ``waiting`` (``scheduled`` until the
        limit lets them start)."""
        return self.backend.limits.waiting()

    def limits(self) -> pandas.DataFrame:
        """:meth:`limit_rows` as a DataFrame (also ``workers().attrs["limits"]``).

        Raises:
            ImportError: pandas is not installed (the ``notebook`` extra).
        """
        pandas = require("pandas", "Client.limits()")
        return pandas.DataFrame(self.limit_rows(), columns=LIMIT_COLUMNS)

    def wait_for_workers(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until ``count`` live workers together hold every partition of the topic.

        Use before a demo or benchmark so the first worker to join does not
        take the whole batch while the others are still joining.

        Returns:
            The live workers' rows (:meth:`worker_rows`).

        Raises:
            TimeoutError: they did not settle within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            rows = self.worker_rows()
            alive = [row for row in rows if row["status"] == "alive"]
            if settled(alive, count):
                self._warn_of_differences(alive)
                return alive
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"waited {timeout} s for {count} live workers sharing every partition of "
                    f"{self.config.tasks_topic}; last seen:\n{format_rows(rows)}"
                )
            time.sleep(0.1)

    def _warn_of_differences(self, alive: list[dict[str, Any]]) -> None:
        """Warn, once per client and worker, of settings in which a live worker differs
        but that do not stop its tasks (a secret that does is ``SecretMismatch``)."""
        for row in alive:
            differ = [name for name in row["settings_differ"].split(",")
                      if name and name != "secret_digest"]
            if differ and (row["name"], tuple(differ)) not in self._warned:
                self._warned.add((row["name"], tuple(differ)))
                logger.warning("worker %s of queue %r differs from this client in: %s; start "
                               "it with the same YADTQ_* settings", row["name"],
                               self.config.queue, ",".join(differ))
