"""The codec of ``fire_schedule.lua`` (adapter layer, beside ``scripts``, whose pattern it
follows): a schedule's due occurrences fired by compare-and-set, exactly once each.
Kept apart so that ``scripts`` stays one screenful of the task lifecycle's scripts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from yadtq.backend.keys import Keys
from yadtq.backend.records import text

# --- fire_schedule.lua ------------------------------------------------------------------


@dataclass(frozen=True)
class FireOccurrence:
    """One occurrence to fire: fire_schedule.lua reads its 1 KEY at ``KEYS[5 + i]`` and its
    3 ARGV after the missed ones."""

    occurrence: float
    task_id: str  # derived from the schedule and the occurrence
    fields: Mapping[str, str]  # the task's record, as enqueue.lua would write it


@dataclass(frozen=True)
class FireScheduleCall:
    """fire_schedule.lua: compare-and-set on the schedule's revision, then write one
    ``scheduled`` task per fired occurrence and record every occurrence in the history."""

    script: ClassVar[str] = "fire_schedule.lua"
    name: str
    rev: str  # the revision the plan was made from
    next_at: float | None  # the next occurrence after these; None leaves it (a trigger)
    now: float | None  # None: Redis's clock
    firer: str
    overlap: str
    last_task: str | None  # the task the schedule fired last
    missed: Sequence[float]
    fire: Sequence[FireOccurrence]
    trigger: bool = False
    history_kept: int = 1000
    unrecorded: int = 0  # missed occurrences not listed in ``missed``

    def keys(self, keys: Keys) -> list[str]:
        return [keys.schedule(self.name), keys.schedules, keys.scheduled,
                keys.schedule_history(self.name), keys.task(self.last_task or "-"),
                *(keys.task(one.task_id) for one in self.fire)]

    def args(self, keys: Keys) -> list[Any]:
        return [self.name, self.rev, "" if self.next_at is None else repr(self.next_at),
                "" if self.now is None else repr(self.now), self.firer, self.overlap,
                "1" if self.trigger else "", self.history_kept, self.unrecorded,
                len(self.missed), *map(repr, self.missed),
                *(arg for one in self.fire
                  for arg in (repr(one.occurrence), one.task_id, json.dumps(one.fields)))]

    def parse(self, reply: Sequence[Any]) -> tuple[str, list[str]]:
        """``"ok"`` and the ids of the tasks written; ``"moved"``, ``"paused"`` or
        ``"early"`` (and the time it judged by) when nothing was done."""
        verdict = text(reply[0])
        if verdict not in ("ok", "moved", "paused", "early"):
            raise ValueError(f"fire_schedule.lua answered {reply!r}: the script and its "
                             "codec in yadtq/backend/scripts.py disagree")
        return verdict, [text(value) for value in reply[1:]]
