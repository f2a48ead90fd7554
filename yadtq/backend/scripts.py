"""Each Lua script's keys, arguments and reply, by name (adapter layer, beside the backend).

The scripts in ``yadtq/backend/lua`` take flat KEYS and ARGV lists and answer with flat
arrays. Read by position across the backend, a field added to a script had to be
added at several offsets; here each script has one codec instead, so it is added
in one place: a frozen dataclass naming the call's values, whose ``keys`` and
``args`` lay them out as the script's header comment says, and whose ``parse``
names the reply's fields and refuses a reply of another shape. A script that
takes a group of keys and arguments per task declares the group once
(:class:`ClaimTask`, :class:`FinishTask`, :class:`FailQueuedTask`; :class:`EnqueueCall`
takes ``OWN_FIELDS`` values), with the
stride the script reads it at beside it. ``script_runner.Scripts`` registers the
scripts once and runs a call. ``tests/test_scripts.py`` runs every codec against its script.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Protocol, TypeVar

from yadtq.backend.keys import NO_BATCH, Keys
from yadtq.backend.records import OWN_FIELDS, PAYLOAD_FIELDS, payload, text
from yadtq.errors import UnknownDependency

MISSING = "missing"  # the status the scripts report for a task without a record
RETRY = "retry"  # finish.lua's outcome that queues the next attempt after a backoff
EDGE_BUDGET = 500  # edges one script call moves at most (lib/edges.lua); settle.lua goes on

R_co = TypeVar("R_co", covariant=True)


class Verdict(str, Enum):
    """The first field of a claim, finish, requeue or cancel reply."""

    OK = "ok"
    SKIP = "skip"  # claim, requeue, cancel: nothing done; the next field says why
    REFUSED = "refused"  # finish: the outcome does not match the task's claim


_VERDICTS = {verdict.value: verdict for verdict in Verdict}


class ScriptCall(Protocol[R_co]):
    """One call of a script, as the backend runs it: file name, KEYS, ARGV, reply parser."""

    script: ClassVar[str]

    def keys(self, keys: Keys) -> list[str]: ...

    def args(self, keys: Keys) -> list[Any]: ...

    def parse(self, reply: Any) -> R_co: ...


@dataclass(frozen=True)
class _Reply:
    """A reply that opens with a verdict; each script's adds its own named fields."""

    verdict: Verdict

    @property
    def ok(self) -> bool:
        """True when the script did what was asked."""
        return self.verdict is Verdict.OK


def _split(script: str, reply: Sequence[Any], shapes: Mapping[Verdict, int]
           ) -> tuple[Verdict, list[Any]]:
    """A reply's verdict and the fields after it, checked against what ``script`` answers.

    ``shapes`` gives, for each verdict the script may answer, how many fields follow it.

    Raises:
        ValueError: the reply has another verdict or another number of fields.
    """
    verdict = _VERDICTS.get(text(reply[0])) if reply else None  # per task: kept cheap
    if verdict is None or shapes.get(verdict) != len(reply) - 1:
        expected = " or ".join(f"{verdict.value!r} and {count} field(s)"
                               for verdict, count in shapes.items())
        raise ValueError(f"{script} answered {reply!r}, expected {expected}: the script "
                         "and its codec in yadtq/backend/scripts.py disagree")
    return verdict, list(reply[1:])


def _finishing_keys(keys: Keys, task_id: str, batch: str | None) -> list[str]:
    """The 4 keys per task of finish.lua and fail_queued.lua, in their order."""
    batch = batch or NO_BATCH
    return [keys.task(task_id), keys.batch(batch), keys.batch_tasks(batch),
            keys.task_history(task_id)]


# --- enqueue.lua -------------------------------------------------------------------------


@dataclass(frozen=True)
class EnqueueReply:
    """What enqueue.lua wrote: how many records, when due, which began blocked or skipped."""

    written: int
    due_at: float | None  # None: now
    blocked: list[str]
    skipped: list[str]


@dataclass(frozen=True)
class EnqueueCall:
    """enqueue.lua: write queued records that share ``shared`` fields, each with its own
    ``OWN_FIELDS`` values (and its edges), list their ids in the batch and the workflow,
    and ring a lone task's doorbell."""

    script: ClassVar[str] = "enqueue.lua"
    batch: str | None  # list the tasks' ids in this batch; None: in none
    shared: Mapping[str, str]
    tasks: Sequence[tuple[str, Sequence[str]]]  # task id, its OWN_FIELDS values ("" unset)
    ring: int | None = None  # ring this partition's doorbell with the (one) task's id
    rings_kept: int = 16  # how many rings a doorbell keeps
    due: str = ""  # "in:<seconds>" or "at:<unix seconds>": write them scheduled
    now: float = 0.0
    ttl: float = 1.0  # seconds a record lives after it finishes (of one skipped at once)
    edges: Sequence[str] | None = None  # per task: "" or JSON {"p": [...], "t": [...]}
    workflow: str | None = None  # the workflow the tasks join
    unsent_grace: float | None = None  # a lone task its client may not produce: guarded

    def keys(self, keys: Keys) -> list[str]:
        return [keys.batch_tasks(self.batch or NO_BATCH),
                keys.doorbell(self.ring if self.ring is not None else -1), keys.scheduled,
                keys.blocked, keys.workflow_tasks(self.workflow or NO_BATCH), keys.unsent,
                *(keys.task(task_id) for task_id, _ in self.tasks)]

    def args(self, keys: Keys) -> list[Any]:
        ring = self.tasks[0][0] if self.ring is not None else ""
        edges = self.edges
        return ["1" if self.batch else "", ring, self.rings_kept, self.due, self.now, self.ttl,
                "1" if edges is not None else "", keys.events, self.workflow or "",
                "" if self.unsent_grace is None else self.unsent_grace,
                len(self.shared), *(item for pair in self.shared.items() for item in pair),
                len(OWN_FIELDS), *OWN_FIELDS,
                *(value for i, (task_id, own) in enumerate(self.tasks)
                  for value in (task_id, *own, *([edges[i]] if edges is not None else [])))]

    def parse(self, reply: Sequence[Any]) -> EnqueueReply:
        """What was written.

        Raises:
            UnknownDependency: a parent has no record (nothing was written).
        """
        if int(reply[0]) < 0:
            raise UnknownDependency(
                f"task {text(reply[1])} is not in Redis (it never existed, or its record "
                "expired), so nothing can depend on it; nothing was submitted")
        return EnqueueReply(int(reply[0]), float(text(reply[1])) if text(reply[1]) else None,
                            [text(i) for i in reply[2]], [text(i) for i in reply[3]])


# --- claim.lua ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimTask:
    """One task of a claim: claim.lua reads task i's 3 KEYS from ``KEYS[3 * i + 2]`` and
    its 4 ARGV from ``ARGV[4 * i + 6]``."""

    task_id: str
    batch: str | None  # the batch the message names
    fields: Mapping[str, str] | None = None  # the record to create if none exists; None: skip
    limits: str = ""  # the call's limits (``Limits.claim_spec``); "": none

    def keys(self, keys: Keys) -> list[str]:
        return [keys.task(self.task_id), keys.batch(self.batch or NO_BATCH),
                keys.task_history(self.task_id)]

    def args(self) -> list[Any]:
        return [self.task_id, self.batch or "",
                "" if self.fields is None else json.dumps(self.fields), self.limits]


@dataclass(frozen=True)
class ClaimReply(_Reply):
    """claim.lua's answer for one task: ``{"ok", attempt}`` or ``{"skip", reason}``."""

    attempt: int | None = None  # the attempt this worker now holds, when ok
    reason: str = ""  # when skipped: the task's status, MISSING, "over the limit",
    # "rate limited" or "concurrency limited" (now scheduled), ...

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> ClaimReply:
        verdict, [value] = _split("claim.lua", reply, {Verdict.OK: 1, Verdict.SKIP: 1})
        if verdict is Verdict.OK:
            return cls(verdict, attempt=int(value))
        return cls(verdict, reason=text(value))

    @property
    def missing(self) -> bool:
        """True when skipped for want of a record (claim again with its fields)."""
        return self.verdict is Verdict.SKIP and self.reason == MISSING


@dataclass(frozen=True)
class ClaimCall:
    """claim.lua: queued -> processing with a lease, for each task in order, up to ``limit``."""

    script: ClassVar[str] = "claim.lua"
    worker_id: str
    lease_expiry: float
    now: float
    limit: int
    tasks: Sequence[ClaimTask]
    served: Sequence[str] | None = None  # claim only tasks of these names; None: any
    limits_now: float | None = None  # the limits' clock; None: Redis's
    need_message: Sequence[str] = ()  # names whose limits a claim from the record lacks

    def keys(self, keys: Keys) -> list[str]:
        return [keys.leases, keys.scheduled, keys.limits, keys.unsent,
                *(key for task in self.tasks for key in task.keys(keys))]

    def args(self, keys: Keys) -> list[Any]:
        served = "" if self.served is None else json.dumps(list(self.served))
        return [self.worker_id, self.lease_expiry, self.now, keys.events, self.limit, served,
                "" if self.limits_now is None else self.limits_now, keys.limit_base,
                json.dumps(list(self.need_message)) if self.need_message else "",
                *(arg for task in self.tasks for arg in task.args())]

    def parse(self, reply: Sequence[Any]) -> list[ClaimReply]:
        return [ClaimReply.parse(one) for one in reply]


# --- finish.lua --------------------------------------------------------------------------


@dataclass(frozen=True)
class FinishTask:
    """One task's outcome: finish.lua reads task i's 4 KEYS from ``KEYS[4 * i + 2]`` and
    its 9 ARGV from ``ARGV[9 * i - 2]``."""

    task_id: str
    batch: str | None
    attempt: int  # the attempt the worker holds: the fence
    outcome: str  # "success", "failed" or RETRY
    retry_at: float | None  # for RETRY: when to run again
    summary: str  # one line for the attempts history, or ""
    result_or_error_type: str  # the result as JSON (success), else the error's type
    error: str
    traceback: str
    ended_at: float  # when the attempt ended: a final outcome's finished_at

    def keys(self, keys: Keys) -> list[str]:
        return _finishing_keys(keys, self.task_id, self.batch)

    def args(self) -> list[Any]:
        return [self.task_id, self.attempt, self.outcome,
                "" if self.retry_at is None else self.retry_at, self.summary,
                self.result_or_error_type, self.error, self.traceback, self.ended_at]


@dataclass(frozen=True)
class FinishReply(_Reply):
    """finish.lua's answer for one task: ``{"ok"}`` or ``{"refused", status, attempt, worker}``."""

    status: str = ""  # when refused: the task's status, or MISSING
    attempt: int | None = None  # when refused: the attempt the task is at
    worker: str = ""  # when refused: the worker that holds it, or ""

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> FinishReply:
        verdict, fields = _split("finish.lua", reply, {Verdict.OK: 0, Verdict.REFUSED: 3})
        if verdict is Verdict.OK:
            return cls(verdict)
        status, attempt, worker = map(text, fields)
        return cls(verdict, status, int(attempt) if attempt else None, worker)


@dataclass(frozen=True)
class Finished:
    """finish.lua's answer: one reply per task, and the children its outcomes readied."""

    replies: list[FinishReply]
    readied: list[str]  # queued, held for the caller to produce (``unblocked`` set)


@dataclass(frozen=True)
class FinishCall:
    """finish.lua: store each outcome, fenced by attempt and worker; final ones tell the
    tasks' children (``lib/edges.lua``)."""

    script: ClassVar[str] = "finish.lua"
    worker_id: str
    now: float
    ttl: float  # seconds a record lives after it finishes
    tasks: Sequence[FinishTask]
    hold: float = 5.0  # seconds the caller holds readied children to produce them
    budget: int = EDGE_BUDGET  # edges the call may move

    def keys(self, keys: Keys) -> list[str]:
        return [keys.leases, keys.retries, keys.blocked, keys.unblocked, keys.settling,
                *(key for task in self.tasks for key in task.keys(keys))]

    def args(self, keys: Keys) -> list[Any]:
        return [self.worker_id, self.now, self.ttl, keys.events, self.hold, self.budget,
                *(arg for task in self.tasks for arg in task.args())]

    def parse(self, reply: Sequence[Any]) -> Finished:
        replies, readied = reply
        return Finished([FinishReply.parse(one) for one in replies], [text(i) for i in readied])


# --- requeue.lua -------------------------------------------------------------------------


@dataclass(frozen=True)
class RequeueReply(_Reply):
    """requeue.lua's answer: ``{"ok", attempt, *payload}`` or ``{"skip", reason}``."""

    attempt: int | None = None  # when ok: the new attempt
    payload: Mapping[str, str] | None = None  # when ok: the PAYLOAD_FIELDS by name
    reason: str = ""  # when skipped: the task's status, "lease live", "held by ...", ...

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> RequeueReply:
        verdict, fields = _split("requeue.lua", reply,
                                 {Verdict.OK: 1 + len(PAYLOAD_FIELDS), Verdict.SKIP: 1})
        if verdict is Verdict.OK:
            return cls(verdict, attempt=int(fields[0]), payload=payload(fields[1:]))
        return cls(verdict, reason=text(fields[0]))


@dataclass(frozen=True)
class RequeueCall:
    """requeue.lua: processing -> queued with attempt + 1 (a reaped lease, a dead worker's
    task, or a handback)."""

    script: ClassVar[str] = "requeue.lua"
    task_id: str
    batch: str | None
    handback: bool  # the holder gives it back; else a reaper takes an expired lease
    now: float
    worker_id: str  # the holder handing back, or the reaper
    dead_holder: str = ""  # a reaper takes the live lease of this worker, found dead

    def keys(self, keys: Keys) -> list[str]:
        return [keys.task(self.task_id), keys.leases, keys.batch(self.batch or NO_BATCH),
                keys.task_history(self.task_id)]

    def args(self, keys: Keys) -> list[Any]:
        mode = "handback" if self.handback else "orphaned" if self.dead_holder else "expired"
        return [self.task_id, mode, self.now, self.worker_id, keys.events, self.dead_holder,
                *PAYLOAD_FIELDS]

    def parse(self, reply: Sequence[Any]) -> RequeueReply:
        return RequeueReply.parse(reply)


# --- cancel.lua --------------------------------------------------------------------------


@dataclass(frozen=True)
class CancelReply(_Reply):
    """cancel.lua's answer: ``{"ok", previous status, worker}`` or ``{"skip", status}``."""

    status: str  # the status it had (ok) or has (skipped), or MISSING
    worker: str = ""  # when ok: the worker that held it, or ""

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> CancelReply:
        verdict, fields = _split("cancel.lua", reply, {Verdict.OK: 2, Verdict.SKIP: 1})
        return cls(verdict, *map(text, fields))


@dataclass(frozen=True)
class CancelCall:
    """cancel.lua: blocked | scheduled | queued | processing -> cancelled."""

    script: ClassVar[str] = "cancel.lua"
    task_id: str
    batch: str | None
    now: float
    ttl: float  # seconds the record lives after it finishes
    requested_by: str
    budget: int = EDGE_BUDGET  # edges the call may move

    def keys(self, keys: Keys) -> list[str]:
        return [keys.task(self.task_id), keys.leases, keys.batch(self.batch or NO_BATCH),
                keys.task_history(self.task_id), keys.retries, keys.scheduled, keys.blocked,
                keys.unblocked, keys.settling]

    def args(self, keys: Keys) -> list[Any]:
        return [self.task_id, self.now, self.ttl, keys.events, self.requested_by, self.budget]

    def parse(self, reply: Sequence[Any]) -> CancelReply:
        return CancelReply.parse(reply)


# --- fail_queued.lua ---------------------------------------------------------------------


@dataclass(frozen=True)
class FailQueuedTask:
    """One queued task nothing will run: fail_queued.lua reads task i's 4 KEYS from
    ``KEYS[4 * i]`` and its 2 ARGV from ``ARGV[6 + 2 * i]``."""

    task_id: str
    batch: str | None
    create_as: str = ""  # with no record, write a failed one for a task of this name

    def keys(self, keys: Keys) -> list[str]:
        return _finishing_keys(keys, self.task_id, self.batch)

    def args(self) -> list[Any]:
        return [self.task_id, self.create_as]


@dataclass(frozen=True)
class FailQueuedCall:
    """fail_queued.lua: queued -> failed for tasks whose messages never reached Kafka
    (``why`` "undelivered") or that every worker refuses (``why`` "refused")."""

    script: ClassVar[str] = "fail_queued.lua"
    now: float
    ttl: float  # seconds a record lives after it finishes
    error_type: str
    error: str
    why: str
    tasks: Sequence[FailQueuedTask]
    budget: int = EDGE_BUDGET  # edges the call may move

    def keys(self, keys: Keys) -> list[str]:
        return [keys.blocked, keys.unblocked, keys.settling,
                *(key for task in self.tasks for key in task.keys(keys))]

    def args(self, keys: Keys) -> list[Any]:
        return [self.now, self.ttl, keys.events, self.error_type, self.error, self.why,
                self.budget, *(arg for task in self.tasks for arg in task.args())]

    def parse(self, reply: Any) -> int:
        """How many tasks were failed."""
        return int(reply)


# --- renew.lua ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RenewCall:
    """renew.lua: extend the leases this worker still holds (task i: ``KEYS[i + 1]``,
    ``ARGV[i + 2]``)."""

    script: ClassVar[str] = "renew.lua"
    worker_id: str
    lease_expiry: float
    task_ids: Sequence[str]

    def keys(self, keys: Keys) -> list[str]:
        return [keys.leases, *map(keys.task, self.task_ids)]

    def args(self, keys: Keys) -> list[Any]:
        return [self.worker_id, self.lease_expiry, *self.task_ids]

    def parse(self, reply: Sequence[Any]) -> list[str]:
        """The ids among ``task_ids`` that were cancelled."""
        return [text(task_id) for task_id in reply]
