"""The tasks a worker holds (worker runtime): claimed, their outcomes not yet stored.

The heartbeat renews their leases, a cancel stops the runner one runs on, and a stopping
worker hands back the ones left. Slots, the outcome store and maintenance reach them from
their own threads, so every access takes this table's lock, and none holds it across a
call to Redis, Kafka or a runner.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from yadtq import protocol

logger = logging.getLogger(__name__)


@dataclass
class _Held:
    message: protocol.TaskMessage
    attempt: int
    runner: Any = None  # while it runs
    cancelled: bool = False  # stopped on request (its group, if any, runs again without it)


class HeldTasks:
    """A worker's claimed tasks, by id."""

    def __init__(self, worker: str) -> None:
        self._worker = worker
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}

    def hold(self, message: protocol.TaskMessage, attempt: int) -> None:
        """Count a claimed task as this worker's."""
        with self._lock:
            self._held[message.id] = _Held(message, attempt)

    def release(self, task_id: str) -> None:
        """Forget a task whose outcome is stored."""
        with self._lock:
            self._held.pop(task_id, None)

    def ids(self) -> list[str]:
        """The ids held, for the heartbeat to renew their leases."""
        with self._lock:
            return list(self._held)

    def messages(self) -> list[protocol.TaskMessage]:
        """The messages held, to hand back when stopping."""
        with self._lock:
            return [held.message for held in self._held.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def attach(self, task_id: str, runner: Any) -> None:
        """Note the runner a claimed task runs on, so cancelling it can stop it."""
        with self._lock:
            held = self._held.get(task_id)
            if held is not None:
                held.runner = runner

    def cancelled(self, task_id: str) -> bool:
        """True if a claimed task was cancelled while it ran."""
        with self._lock:
            held = self._held.get(task_id)
            return held is not None and held.cancelled

    def stop_cancelled(self, task_ids: list[str]) -> None:
        """Stop running tasks that were cancelled (process mode kills their child)."""
        for task_id in task_ids:
            with self._lock:
                held = self._held.get(task_id)
                if held is not None:
                    held.cancelled = True
            if held is None or held.runner is None:
                continue
            stopped = held.runner.stop()
            logger.info("Worker %s: task %s was cancelled; %s", self._worker, task_id,
                        "stopped it" if stopped else "its result will be discarded")
