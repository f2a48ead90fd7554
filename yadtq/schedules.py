"""Schedules (core layer): a task fired on a cron expression or every N seconds, stored in
Redis and fired by any live worker, exactly one task per occurrence (``docs/time.md``).

The client stores the task's message as ``submit`` would build and sign it (the
template); a firing worker checks it as it checks any message (``protocol.decode``),
gives each occurrence its derived id, signs that task's record as ``enqueue`` would,
and hands the lot to ``fire_schedule.lua``, which does it only if the schedule has not
moved since it was read. :class:`Schedule` is the handle ``Client.schedule`` returns.
"""

from __future__ import annotations

import datetime
import importlib
import math
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from yadtq import protocol, schedule_times
from yadtq.acceptance import Acceptance
from yadtq.backend import RedisBackend
from yadtq.backend.records import record_fields
from yadtq.backend.schedule_calls import FireOccurrence, FireScheduleCall
from yadtq.backend.schedule_store import HISTORY_KEPT
from yadtq.config import Config
from yadtq.errors import ScheduleNotFound, YadtqError
from yadtq.schedule_times import ScheduleSpec, local_time, occurrence_task_id
from yadtq.shipping import Shipment

OPTIONS = ("timeout", "max_retries", "retry_on", "retry_backoff")
SCHEDULE_COLUMNS = ["name", "task", "when", "tz", "next_run", "paused", "catchup", "overlap",
                    "fired", "missed", "skipped", "last_task"]
HISTORY_COLUMNS = ["occurrence", "task_id", "outcome", "status", "fired_by"]


def template_message(raw: Mapping[str, str], config: Config) -> protocol.TaskMessage:
    """The schedule's stored message, checked as a worker checks a message from Kafka.

    Raises:
        ProtocolError: it is not a valid message, or breaks the signing rule.
    """
    return protocol.decode(raw["template"].encode(), config.max_message_bytes, config.secret,
                           config.signatures_required)


def occurrence_record(template: protocol.TaskMessage, task_id: str, now: float,
                      secret: str | None) -> dict[str, str]:
    """The record of one occurrence's task: the template's call under ``task_id``, signed
    as ``enqueue`` signs a submitted task's (pickles bound to the new id).

    Raises:
        ValueError: the template ships code or pickles and there is no secret to sign with.
    """
    message = protocol.build(
        template.task, template.args, template.kwargs, task_id=task_id,
        max_retries=template.max_retries, timeout=template.timeout,
        retry_on=template.retry_on, retry_backoff=template.retry_backoff,
        code=template.code, python=template.python, pickled=template.pickled, secret=secret)
    return record_fields(message, now, secret)


def fire(backend: RedisBackend, name: str, raw: Mapping[str, str], now: float, firer: str,
         *, inject_now: bool = False, trigger: bool = False,
         template: protocol.TaskMessage | None = None) -> tuple[str, list[str]]:
    """Fire what is due of schedule ``name`` (read as ``raw`` at Redis time ``now``), or
    one run now (``trigger``); returns the script's verdict and the task ids written.

    ``inject_now`` makes the script judge by ``now`` rather than Redis's clock (tests).
    """
    config = backend.config
    spec = ScheduleSpec.from_json(raw["spec"])
    template = template or template_message(raw, config)
    if trigger:
        plan = schedule_times.Plan([now], [], float(raw["next"]))
        next_at = None
    else:
        plan = schedule_times.plan(spec, float(raw["next"]), now)
        next_at = plan.next_at
        if raw.get("buffered") and spec.overlap == "queue_one":  # waiting for its turn
            waiting = float(raw["buffered"])
            plan = schedule_times.Plan([waiting, *(o for o in plan.fired if o != waiting)],
                                       plan.missed, plan.next_at, plan.unrecorded)
    kind = "t" if trigger else "o"
    fired = []
    for occurrence in plan.fired:
        task_id = occurrence_task_id(config.queue, name, occurrence, kind)
        fired.append(FireOccurrence(occurrence, task_id,
                                    occurrence_record(template, task_id, now, config.secret)))
    call = FireScheduleCall(name, raw["rev"], next_at, now if inject_now else None, firer,
                            spec.overlap, raw.get("last_task") or None, plan.missed, fired,
                            trigger=trigger, history_kept=HISTORY_KEPT,
                            unrecorded=plan.unrecorded)
    return backend.schedules.fire(call)


def create(backend: RedisBackend, name: str, task: Callable[..., Any] | str, *,
           cron: str | None, every: float | None, args: Sequence[Any],
           kwargs: Mapping[str, Any] | None, tz: str, catchup: str, overlap: str,
           options: Mapping[str, Any], accepted: Callable[[bool], None] | None = None) -> None:
    """Store (or replace) schedule ``name``; a replacement with the same timing keeps its
    next occurrence, so declaring a schedule again does not shift it. ``accepted(
    needs_trust)`` (``Acceptance.check``) refuses, before anything is stored, a schedule
    whose tasks the live workers would refuse: they would fail at every occurrence.

    Raises:
        ValueError: a bad name, timing, zone, policy or option.
        TypeError, UntrustedCode, MessageTooLarge, SecretMismatch: as ``submit`` raises them.
    """
    if not name or len(name) > 200 or any(c.isspace() for c in name):
        raise ValueError(f"a schedule name is 1 to 200 characters without spaces, got {name!r}")
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}; a schedule takes "
                         f"{', '.join(OPTIONS)}")
    config, store = backend.config, backend.schedules
    now = store.now()
    spec = ScheduleSpec(cron, every, tz, float(math.floor(now)), catchup, overlap)
    existing = store.get(name)
    old = ScheduleSpec.from_json(existing["spec"]) if existing is not None else None
    keep_next = old is not None and old.same_timing(spec) and existing.get("paused") != "1"
    if old is not None and old.same_timing(spec):
        spec = ScheduleSpec(cron, every, tz, old.anchor, catchup, overlap)
    shipment = Shipment(task, config)
    retry_on = tuple(r if isinstance(r, str) else r.__name__
                     for r in options.get("retry_on", ()))
    message = shipment.message(args, kwargs, **{**options, "retry_on": retry_on})
    if accepted is not None:
        accepted(message.needs_trust)
    template = protocol.encode(message, config.max_message_bytes, config.secret).decode()
    next_at = float(existing["next"]) if keep_next and existing else spec.next_after(now)
    store.save(name, {"spec": spec.to_json(), "template": template, "task": shipment.name,
                      "created_at": repr(now)}, next_at, shipment.blobs)


class Schedule:
    """A stored schedule: its next run, pause/resume, a run now, removal and history.

    Reads Redis on each call, so any handle (or the CLI) sees the same schedule.
    """

    def __init__(self, name: str, backend: RedisBackend,
                 attach: Callable[[str], Any] | None = None) -> None:
        """``attach(task_id)``: a future for a task (``Client.get``), for :meth:`trigger`."""
        self.name = name
        self._backend = backend
        self._attach = attach

    def _raw(self) -> dict[str, str]:
        raw = self._backend.schedules.get(self.name)
        if raw is None:
            raise ScheduleNotFound(f"no schedule {self.name!r} on queue "
                                   f"{self._backend.config.queue!r}: it was removed or never "
                                   "made; q.schedules() lists them")
        return raw

    @property
    def spec(self) -> ScheduleSpec:
        """When it fires, and its catch-up and overlap policies."""
        return ScheduleSpec.from_json(self._raw()["spec"])

    @property
    def paused(self) -> bool:
        """True while paused."""
        return self._raw().get("paused") == "1"

    @property
    def next_run(self) -> datetime.datetime | None:
        """The next occurrence, in the schedule's time zone; None while paused."""
        raw = self._raw()
        if raw.get("paused") == "1":
            return None
        return local_time(float(raw["next"]), ScheduleSpec.from_json(raw["spec"]).tz)

    def pause(self) -> None:
        """Stop firing until :meth:`resume`; occurrences meanwhile are not run or recorded."""
        if not self._backend.schedules.set_paused(self.name, True):
            self._raw()

    def resume(self) -> None:
        """Fire again, from the next occurrence after now (on Redis's clock)."""
        store = self._backend.schedules
        spec = ScheduleSpec.from_json(self._raw()["spec"])
        if not store.set_paused(self.name, False, spec.next_after(store.now())):
            self._raw()

    def trigger(self) -> Any:
        """Run the task once now, paused or not, whatever the overlap policy; returns its
        future (its task id when this handle has no client)."""
        store = self._backend.schedules
        for _ in range(10):  # a worker firing at the same moment moves the revision
            raw = self._raw()
            verdict, written = fire(self._backend, self.name, raw, store.now(),
                                    f"client on {socket.gethostname()}", trigger=True)
            if verdict == "ok" and written:
                return self._attach(written[0]) if self._attach else written[0]
        raise YadtqError(f"could not trigger schedule {self.name!r}: it kept changing "
                         "under this call; try again")

    def remove(self) -> None:
        """Delete the schedule and its history (tasks it fired stay as they are).

        Raises:
            ScheduleNotFound: there is no such schedule.
        """
        if not self._backend.schedules.remove(self.name):
            self._raw()

    def history_rows(self) -> list[dict[str, Any]]:
        """One dict per recorded occurrence (:data:`HISTORY_COLUMNS`), oldest first:
        ``outcome`` fired, missed or skipped; ``status`` the fired task's now ("expired"
        once its record has, None for an occurrence not fired)."""
        rows = self._backend.schedules.history(self.name)
        ids = [row["task_id"] for row in rows if row["task_id"]]
        statuses = dict(zip(ids, self._backend.statuses(ids), strict=True)) if ids else {}
        return [{"occurrence": row["occurrence"], "task_id": row["task_id"] or None,
                 "outcome": row["outcome"],
                 "status": (statuses.get(row["task_id"]) or "expired") if row["task_id"]
                 else None, "fired_by": row.get("fired_by") or None} for row in rows]

    def history(self) -> Any:
        """:meth:`history_rows` as a DataFrame (occurrence as UTC time); the rows without
        pandas."""
        return _frame(self.history_rows(), HISTORY_COLUMNS, ("occurrence",))

    def __repr__(self) -> str:
        try:
            raw = self._raw()
        except ScheduleNotFound:
            return f"<yadtq.Schedule {self.name!r} (removed)>"
        spec = ScheduleSpec.from_json(raw["spec"])
        when = "paused" if raw.get("paused") == "1" else \
            f"next {local_time(float(raw['next']), spec.tz).isoformat()}"
        return f"<yadtq.Schedule {self.name!r} {raw.get('task')} {spec.when}, {when}>"


def schedule_rows(backend: RedisBackend) -> list[dict[str, Any]]:
    """The queue's schedules as dicts of :data:`SCHEDULE_COLUMNS` (next_run unix seconds,
    None while paused), the next to fire first."""
    names = backend.schedules.names()
    rows = []
    for name, raw in zip(names, backend.schedules.get_many(names), strict=True):
        if raw is None:
            continue
        spec = ScheduleSpec.from_json(raw["spec"])
        paused = raw.get("paused") == "1"
        rows.append({"name": name, "task": raw.get("task"), "when": spec.when, "tz": spec.tz,
                     "next_run": None if paused else float(raw["next"]), "paused": paused,
                     "catchup": spec.catchup, "overlap": spec.overlap,
                     **{k: int(raw.get(k) or 0) for k in ("fired", "missed", "skipped")},
                     "last_task": raw.get("last_task") or None})
    return rows


def schedule_frame(backend: RedisBackend) -> Any:
    """:func:`schedule_rows` as a DataFrame; the rows without pandas."""
    return _frame(schedule_rows(backend), SCHEDULE_COLUMNS, ("next_run",))


def _frame(rows: list[dict[str, Any]], columns: list[str], times: Sequence[str]) -> Any:
    try:
        pandas = importlib.import_module("pandas")
    except ImportError:
        return rows
    frame = pandas.DataFrame(rows, columns=columns)
    for column in times:
        frame[column] = pandas.to_datetime(frame[column], unit="s", utc=True)
    return frame


class ScheduleMethods:
    """The client's schedule methods (mixed into ``Client``, which provides its backend,
    ``get``, ``_check_open`` and ``_acceptance``)."""

    backend: RedisBackend
    _acceptance: Acceptance
    get: Callable[[str], Any]
    _check_open: Callable[[], None]

    def schedule(self, name: str, task: Callable[..., Any] | str, /, *, cron: str | None = None,
                 every: float | None = None, args: Sequence[Any] = (),
                 kwargs: dict[str, Any] | None = None, tz: str = "UTC", catchup: str = "one",
                 overlap: str = "skip", **options: Any) -> Schedule:
        """Store (or replace) schedule ``name``: ``task(*args, **kwargs)`` on a ``cron``
        expression in zone ``tz``, or ``every`` seconds, fired by any live worker, one task
        an occurrence. ``options`` as for :meth:`submit_with`; policies: ``docs/time.md``.

        Raises:
            ValueError: a bad name, timing, zone, policy or option.
            TypeError, UntrustedCode, MessageTooLarge: as :meth:`submit` raises them.
            SecretMismatch: as for :meth:`submit`: the live workers would refuse its
                tasks (nothing is stored).
        """
        self._check_open()
        create(self.backend, name, task, cron=cron, every=every, args=args, kwargs=kwargs,
               tz=tz, catchup=catchup, overlap=overlap, options=options,
               accepted=self._acceptance.check)
        return Schedule(name, self.backend, self.get)

    def schedules(self) -> Any:
        """The queue's schedules, next to fire first: a DataFrame, or rows without pandas."""
        return schedule_frame(self.backend)
