"""Task statuses: the lifecycle's one home (bottom layer).

Everything that knows the statuses derives from here: the legal moves
(:data:`ALLOWED`), the batch counters (:data:`COUNTERS`, one field per status
in the ``batch:<id>`` hash), and how displays and plots show each status
(:attr:`TaskStatus.label`, :attr:`TaskStatus.colour`). The Lua scripts in
``yadtq/backend/lua`` cannot import this, so tests check that they name only these
statuses and counters and allow exactly these moves. Adding a status means
adding it here, giving it a :data:`LOOKS` entry, and teaching the scripts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class TaskStatus(str, Enum):
    """Where a task is in its life; compares equal to the plain string.

    Members are listed in lifecycle order, which is the order counts are shown in.
    """

    BLOCKED = "blocked"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value

    @property
    def is_finished(self) -> bool:
        """True for a final status: no task leaves it on its own (only a workflow's
        ``retry()`` runs failed and skipped tasks again)."""
        return self in FINISHED

    @property
    def label(self) -> str:
        """The word a count of tasks in this status reads with: '3 running'."""
        return LOOKS[self].label

    @property
    def colour(self) -> str:
        """The CSS colour of this status in widgets and plots."""
        return LOOKS[self].colour


@dataclass(frozen=True)
class Look:
    """How a status is shown, so that the widget, its fallbacks and the plots agree."""

    label: str
    colour: str


FINISHED = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED,
                      TaskStatus.SKIPPED})

ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.BLOCKED: frozenset({TaskStatus.QUEUED, TaskStatus.SKIPPED, TaskStatus.CANCELLED}),
    TaskStatus.SCHEDULED: frozenset({TaskStatus.QUEUED, TaskStatus.CANCELLED}),
    TaskStatus.QUEUED: frozenset(
        {TaskStatus.PROCESSING, TaskStatus.SCHEDULED, TaskStatus.CANCELLED}),
    TaskStatus.PROCESSING: frozenset(
        {TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.QUEUED, TaskStatus.CANCELLED}
    ),
    TaskStatus.SUCCESS: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
    TaskStatus.SKIPPED: frozenset(),
}
"""The moves tasks make on their own (queued -> scheduled: a claim found the task over a
rate or concurrency limit, ``yadtq.limits``). A workflow's ``retry()`` also moves failed and
skipped tasks back (:data:`RETRIED`)."""

RETRIED: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.FAILED: frozenset({TaskStatus.QUEUED, TaskStatus.BLOCKED}),
    TaskStatus.SKIPPED: frozenset({TaskStatus.QUEUED, TaskStatus.BLOCKED}),
}
"""What ``retry_workflow.lua`` moves a task to: queued when its parents all succeeded,
blocked while one is itself run again."""

COUNTERS: tuple[str, ...] = tuple(status.value for status in TaskStatus)
"""The batch hash's counter fields, one per status and named for it, in lifecycle order."""

LOOKS: dict[TaskStatus, Look] = {
    TaskStatus.BLOCKED: Look("blocked", "#b39ddb"),
    TaskStatus.SCHEDULED: Look("scheduled", "#e0b94f"),
    TaskStatus.QUEUED: Look("waiting", "#c8c8c8"),
    TaskStatus.PROCESSING: Look("running", "#2f7ed8"),
    TaskStatus.SUCCESS: Look("success", "#2e9e44"),
    TaskStatus.FAILED: Look("failed", "#d62f2f"),
    TaskStatus.CANCELLED: Look("cancelled", "#8a6d3b"),
    TaskStatus.SKIPPED: Look("skipped", "#9e9e9e"),
}
