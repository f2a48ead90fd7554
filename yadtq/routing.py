"""Which live worker serves which task (core layer), for queues of workers with different tasks.

Workers of one queue may be started with different task modules, while Kafka
hands out partitions without regard to what a worker can run. Every worker's
heartbeat record names the tasks it serves and the partitions it holds; a
:class:`Routes` built from those records tells a worker that took a task it
does not serve where to hand it on, and when no live worker of the queue serves
it, what the queue does serve (for the ``UnknownTask`` error).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from yadtq.protocol import SHIPPED_CODE

DEAD_AFTER_HEARTBEATS = 3  # a worker is dead when its heartbeat is older than this many


def liveness(record: dict[str, Any], now: float) -> str:
    """A worker record's state: ``alive``, ``dead`` (heartbeats stopped) or ``stopped``."""
    if record.get("status") == "stopped":
        return "stopped"
    last = float(record.get("last_heartbeat") or 0)
    interval = float(record.get("heartbeat_interval") or 2.0)
    return "dead" if now - last > DEAD_AFTER_HEARTBEATS * interval else "alive"


def _names(cell: str | None) -> list[str]:
    return [name for name in (cell or "").split(",") if name]


class Routes:
    """The live workers of one queue: the tasks each serves and the partitions each holds."""

    def __init__(self, records: Iterable[dict[str, Any]], now: float,
                 exclude: str | None = None) -> None:
        """``records``: the heartbeat records of one queue's workers (``backend.workers()``)."""
        self._partitions: dict[str, set[int]] = {}  # task -> partitions of its live servers
        for record in records:
            if record.get("name") == exclude or liveness(record, now) != "alive":
                continue
            held = {int(p) for p in _names(record.get("partitions"))}
            serves = _names(record.get("tasks"))
            if record.get("trusts_code") == "1":
                serves.append(SHIPPED_CODE)
            for task in serves:
                self._partitions.setdefault(task, set()).update(held)

    def serves(self, task: str) -> bool:
        """True if some live worker (other than the excluded one) serves ``task``.

        ``task`` is a message's route: a task name, or ``SHIPPED_CODE``.
        """
        return task in self._partitions

    def partitions_for(self, task: str) -> list[int]:
        """The partitions held by live workers that serve ``task`` (empty while they join)."""
        return sorted(self._partitions.get(task, ()))

    @property
    def served(self) -> list[str]:
        """Every task name some live worker serves, sorted."""
        return sorted(task for task in self._partitions if task != SHIPPED_CODE)
