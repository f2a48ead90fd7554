"""The workers table (core layer): heartbeat records as rows a person can read.

``Client.workers()``, ``yadtq workers`` and ``yadtq local status`` show the same
columns; ``settled`` says when a queue's workers share out every partition.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from yadtq.routing import liveness

WORKER_COLUMNS = [
    "name", "host", "pid", "status", "heartbeat_age", "in_flight", "processed", "failed",
    "fired", "concurrency", "partitions", "topic_partitions", "tasks", "started_at",
    "last_heartbeat", "settings_differ",
]


def format_rows(rows: list[dict[str, Any]],
                columns: Sequence[str] = ("name", "host", "pid", "status", "heartbeat_age",
                                          "in_flight", "processed", "failed", "partitions")
                ) -> str:
    """Worker rows as an aligned text table (for terminals, without pandas)."""
    table = [list(columns)] + [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                     .rstrip() for line in table)


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
    }
