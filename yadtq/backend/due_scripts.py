"""The codecs of the due-set scripts (adapter layer, beside the backend): ``take_due.lua``,
``release.lua``, ``forget_sent.lua`` and ``produce_unsent.lua`` (see ``scripts`` for how a
codec lays out a script's KEYS and ARGV).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from yadtq.backend.keys import NO_BATCH, Keys
from yadtq.backend.records import text

# --- take_due.lua ------------------------------------------------------------------------


@dataclass(frozen=True)
class TakeDueCall:
    """take_due.lua: take the entries of a due set (``"retries"`` or ``"scheduled"``) whose
    time has come, holding each ``hold`` s; ``now`` None judges by Redis's clock."""

    script: ClassVar[str] = "take_due.lua"
    due_set: str  # the Keys property naming the set
    now: float | None
    hold: float
    limit: int

    def keys(self, keys: Keys) -> list[str]:
        return [getattr(keys, self.due_set)]

    def args(self, keys: Keys) -> list[Any]:
        return ["" if self.now is None else self.now, self.hold, self.limit]

    def parse(self, reply: Sequence[Any]) -> tuple[list[str], float]:
        """The ids taken, and the time they were judged by."""
        return [text(task_id) for task_id in reply[:-1]], float(text(reply[-1]))


# --- release.lua -------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseTask:
    """One due scheduled task: release.lua reads task i's 3 KEYS from ``KEYS[3 * i - 2]``
    and its 1 ARGV from ``ARGV[3 + i]``."""

    task_id: str
    batch: str | None

    def keys(self, keys: Keys) -> list[str]:
        return [keys.task(self.task_id), keys.batch(self.batch or NO_BATCH),
                keys.task_history(self.task_id)]


@dataclass(frozen=True)
class ReleaseCall:
    """release.lua: scheduled -> queued for due tasks, before they are produced."""

    script: ClassVar[str] = "release.lua"
    now: float
    worker_id: str
    tasks: Sequence[ReleaseTask]

    def keys(self, keys: Keys) -> list[str]:
        return [key for task in self.tasks for key in task.keys(keys)]

    def args(self, keys: Keys) -> list[Any]:
        return [self.now, keys.events, self.worker_id, *(t.task_id for t in self.tasks)]

    def parse(self, reply: Sequence[Any]) -> list[bool]:
        """For each task, whether to produce it now."""
        return [int(verdict) == 1 for verdict in reply]


# --- forget_sent.lua ---------------------------------------------------------------------


@dataclass(frozen=True)
class ForgetSentCall:
    """forget_sent.lua: forget produced tasks' scheduled entries, unless they wait again."""

    script: ClassVar[str] = "forget_sent.lua"
    task_ids: Sequence[str]

    def keys(self, keys: Keys) -> list[str]:
        return [keys.scheduled]

    def args(self, keys: Keys) -> list[Any]:
        return [keys.task(""), *self.task_ids]

    def parse(self, reply: Any) -> int:
        """How many entries were removed."""
        return int(reply)


# --- produce_unsent.lua ------------------------------------------------------------------


@dataclass(frozen=True)
class ProduceUnsentCall:
    """produce_unsent.lua: forget a guarded lone task's guard before its client produces it."""

    script: ClassVar[str] = "produce_unsent.lua"
    task_id: str

    def keys(self, keys: Keys) -> list[str]:
        return [keys.unsent, keys.task(self.task_id)]

    def args(self, keys: Keys) -> list[Any]:
        return [self.task_id]

    def parse(self, reply: Any) -> bool:
        """Whether to produce it: it is still queued."""
        return int(reply) == 1
