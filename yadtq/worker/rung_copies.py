"""The Kafka copies of tasks a worker claimed by doorbell (worker runtime).

A lone task is claimed straight from its Redis record when a doorbell names it; its
message is on the topic too, and this worker will read it later. That copy needs no
claim: it is dropped here, its offset still committed. Only the same attempt is a copy:
a message of a later attempt of the same id (a workflow retry, a retry produced after a
backoff, a reaped task) is new work, even when it arrives in the same poll as the copy.
The doorbells' thread notes the claims and the worker's loop drops the copies, so both
take a lock (never held across a call).
"""

from __future__ import annotations

import threading

from yadtq.protocol import TaskMessage

KEPT = 10_000  # copies remembered at most; a copy read after they were forgotten is claimed,
# and the claim skips it, as any other duplicate


class RungCopies:
    """Which (task id, attempt) this worker claimed by doorbell and has not read back."""

    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()

    def claimed(self, task_id: str, attempt: int) -> None:
        """Remember that ``attempt`` of ``task_id`` was claimed from its record."""
        with self._lock:
            if len(self._attempts) >= self._kept:  # copies Kafka never delivered: forget them
                self._attempts.clear()
            self._attempts[task_id] = attempt

    def uncounted(self, waiting: dict[str, int]) -> dict[str, int]:
        """What waits by level (Kafka's unread messages) less the copies not read yet, all
        of the normal level: a task claimed from its record does not wait."""
        with self._lock:
            unread = len(self._attempts)
        if "normal" not in waiting:
            return waiting
        return {**waiting, "normal": max(0, waiting["normal"] - unread)}

    def without_copies(self, tasks: list[TaskMessage]) -> list[TaskMessage]:
        """``tasks`` less the copies of what was claimed by doorbell."""
        with self._lock:
            copies = {(m.id, m.attempt) for m in tasks
                      if self._attempts.get(m.id) == m.attempt}
            if not copies:
                return tasks
            for task_id, _ in copies:
                del self._attempts[task_id]
        return [m for m in tasks if (m.id, m.attempt) not in copies]
