"""When a schedule's occurrences fall (bottom layer): cron or every-N-seconds, in a time zone,
and which due occurrences to fire after a gap. Pure: the caller passes the time.

Cron expressions are evaluated by ``cronsim`` (Healthchecks' evaluator, which follows
Debian cron): in the schedule's IANA zone, a local time that does not exist (spring
forward) fires at the next valid minute, and a fixed time that happens twice (fall back)
fires once. ``every`` counts seconds from an anchor, on the absolute clock, so no
occurrence drifts and daylight saving does not touch it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

CATCHUP = ("one", "all", "none")
OVERLAP = ("skip", "queue_one", "allow")
GRACE = 1.0  # seconds late an occurrence may be looked at and still count as on time
CATCHUP_ALL_LIMIT = 100  # most occurrences catchup="all" fires at once; older ones are missed
MISSED_RECORDED = 100  # most missed occurrences written to the history at once
SCAN_LIMIT = 10_000  # occurrences walked after a gap before jumping to the next one after now
MIN_EVERY = 1.0  # seconds
_NOT_IN_AN_ID = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ScheduleSpec:
    """When a schedule fires: ``cron`` (5 fields) or ``every`` seconds from ``anchor``."""

    cron: str | None = None
    every: float | None = None
    tz: str = "UTC"
    anchor: float = 0.0  # unix seconds every-occurrences count from
    catchup: str = "one"
    overlap: str = "skip"
    _zone: ZoneInfo | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone", check_spec(self.cron, self.every, self.tz,
                                                     self.catchup, self.overlap))

    def to_json(self) -> str:
        """The spec as stored in the schedule's hash."""
        return json.dumps({"cron": self.cron, "every": self.every, "tz": self.tz,
                           "anchor": self.anchor, "catchup": self.catchup,
                           "overlap": self.overlap}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ScheduleSpec:
        """A spec read back from the schedule's hash."""
        return cls(**json.loads(text))

    @property
    def when(self) -> str:
        """The timing, as a person writes it: ``cron 0 2 * * * (Europe/Paris)`` or ``every 5 s``."""
        if self.cron is not None:
            return f"cron {self.cron}" + ("" if self.tz == "UTC" else f" ({self.tz})")
        return f"every {self.every:g} s"

    def same_timing(self, other: ScheduleSpec) -> bool:
        """True when both fire at the same moments (catch-up and overlap aside)."""
        return (self.cron, self.every, self.tz) == (other.cron, other.every, other.tz)

    def next_after(self, t: float) -> float:
        """The first occurrence strictly after unix time ``t``."""
        if self.every is not None:
            steps = math.floor((t - self.anchor) / self.every) + 1
            at = self.anchor + steps * self.every
            return float(at if at > t else at + self.every)  # float rounding at a boundary
        from cronsim import CronSim  # a core dependency, imported where it is used

        assert self._zone is not None and self.cron is not None
        start = datetime.datetime.fromtimestamp(math.floor(t), self._zone)
        for moment in CronSim(self.cron, start):
            if moment.timestamp() > t:
                return moment.timestamp()
        raise ValueError(f"cron {self.cron!r} has no occurrence after {t}")  # pragma: no cover


def check_spec(cron: str | None, every: float | None, tz: str, catchup: str, overlap: str
               ) -> ZoneInfo:
    """The schedule's zone, once its timing and policies are known to be valid.

    Raises:
        ValueError: neither or both of ``cron`` and ``every``, a cron expression cronsim
            refuses, ``every`` under a second, an unknown zone, catch-up or overlap.
    """
    if (cron is None) == (every is None):
        raise ValueError("pass cron= (e.g. '0 2 * * *') or every= (seconds), exactly one")
    if every is not None and (isinstance(every, bool) or not isinstance(every, (int, float))
                              or not math.isfinite(every) or every < MIN_EVERY):
        raise ValueError(f"every must be a number of seconds of at least {MIN_EVERY:g}, "
                         f"got {every!r}")
    if catchup not in CATCHUP:
        raise ValueError(f"catchup must be one of {', '.join(CATCHUP)}, got {catchup!r}")
    if overlap not in OVERLAP:
        raise ValueError(f"overlap must be one of {', '.join(OVERLAP)}, got {overlap!r}")
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"tz {tz!r} is not an IANA time zone name (e.g. 'UTC', "
                         "'Europe/Paris')") from None
    if cron is not None:
        from cronsim import CronSim, CronSimError

        try:
            CronSim(cron, datetime.datetime.now(zone))
        except CronSimError as exc:
            raise ValueError(f"cron {cron!r} is not a valid 5-field cron expression: {exc}"
                             ) from None
    return zone


@dataclass(frozen=True)
class Plan:
    """What to do with a schedule's due occurrences: fire some, record the rest missed."""

    fired: list[float]
    missed: list[float]
    next_at: float  # the first occurrence after now
    unrecorded: int = 0  # missed occurrences too many to write to the history


def plan(spec: ScheduleSpec, next_at: float, now: float) -> Plan:
    """Which of the occurrences from ``next_at`` to ``now`` to fire, by ``spec.catchup``.

    An occurrence looked at within ``GRACE`` seconds is on time, and always fired. After
    a gap (no live worker), ``"one"`` fires the latest due occurrence, ``"all"`` each (the
    latest ``CATCHUP_ALL_LIMIT``), ``"none"`` none that are late; the others are missed.
    """
    due: list[float] = []
    at = next_at
    while at <= now and len(due) < SCAN_LIMIT:
        due.append(at)
        at = spec.next_after(at)
    jumped = 0
    if at <= now:  # a very long gap: jump, counting nothing more
        at = spec.next_after(now)
        jumped = 1
    on_time = [o for o in due if now - o <= GRACE]
    if spec.catchup == "all":
        fired = due[-CATCHUP_ALL_LIMIT:]
    elif spec.catchup == "one":
        fired = on_time or due[-1:]
    else:
        fired = on_time
    missed = [o for o in due if o not in fired]
    return Plan(fired, missed[-MISSED_RECORDED:], at,
                max(0, len(missed) - MISSED_RECORDED) + jumped)


def occurrence_task_id(queue: str, name: str, occurrence: float, kind: str = "o") -> str:
    """The one task id of a schedule's occurrence: the same on every worker that fires it."""
    digest = hashlib.sha256(f"{queue}\0{name}".encode()).hexdigest()[:10]
    readable = _NOT_IN_AN_ID.sub("_", name)[:40]
    return f"s.{readable}.{digest}.{kind}{round(occurrence * 1000)}"


def local_time(t: float, tz: str) -> datetime.datetime:
    """Unix time ``t`` in zone ``tz``, for display."""
    return datetime.datetime.fromtimestamp(t, ZoneInfo(tz))
