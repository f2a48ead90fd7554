"""Workflows (core layer): dependent work grouped under one id that outlives its client.

``with q.workflow("etl") as wf:`` groups what is submitted inside it; a task submitted with
parents outside one joins its first parent's workflow. Everything a workflow is lives in
Redis (``backend.workflows``): the tasks' records with their edges, and the list of their
ids. So :class:`Workflow` is only a view: any process re-attaches it by id
(``q.get_workflow``), finds it among ``q.workflows()``, waits for it, cancels it, or runs
its failed and skipped tasks again (``retry``); nothing is cancelled because a client went
away. Counts are read from the tasks' records, and kept current from change events while
the handle is watched (the live widget, ``wait``).
"""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from yadtq import protocol
from yadtq.backend import RedisBackend
from yadtq.backend.workflows import parents_of
from yadtq.batch import DATAFRAME_COLUMNS, task_row
from yadtq.config import Config
from yadtq.errors import TaskNotFound
from yadtq.extras import require
from yadtq.status import COUNTERS, FINISHED

if TYPE_CHECKING:
    import pandas

    from yadtq.futures import TaskStore

WORKFLOW_COLUMNS = [*DATAFRAME_COLUMNS, "parents"]
RESYNC_SECONDS = 1.0  # while waiting, how often to read the tasks again (new ones, missed events)
RECENT = 20  # how many workflows ``Client.workflows()`` lists by default

_active: contextvars.ContextVar[Workflow | None] = contextvars.ContextVar(
    "yadtq_workflow", default=None)


def new_workflow_id() -> str:
    """A fresh unique workflow id."""
    return "w-" + uuid.uuid4().hex


def active() -> Workflow | None:
    """The workflow whose ``with`` block this code runs in, if any."""
    return _active.get()


class Workflow:
    """A handle on a workflow: its tasks, their counts, waiting, cancelling and re-running."""

    def __init__(self, workflow_id: str, name: str, backend: RedisBackend, store: TaskStore,
                 created_at: float | None = None,
                 send: Callable[[list[str]], None] | None = None) -> None:
        """``send(ids)``: produce queued tasks now (the client's producer); without it the
        workers' next look does."""
        self.id = workflow_id
        self.name = name
        self.created_at = created_at
        self._backend = backend
        self._store = store
        self._lock = threading.Lock()
        self._changes = threading.Condition(self._lock)
        self._ids: list[str] = []
        self._known: set[str] = set()
        self._status: dict[str, str] = {}
        self._task: dict[str, str] = {}
        self._batch: dict[str, str | None] = {}  # each task's batch, for its counters
        self._callbacks: list[Callable[[Workflow], None]] = []
        self._version = 0  # how many change events it has heard of
        self._token: contextvars.Token[Workflow | None] | None = None
        self._send = send

    # --- grouping ---------------------------------------------------------------

    def __enter__(self) -> Workflow:
        self._token = _active.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _active.reset(self._token)
            self._token = None

    # --- reading ----------------------------------------------------------------

    @property
    def task_ids(self) -> list[str]:
        """The workflow's tasks, in the order they were submitted (read from Redis)."""
        self.refresh()
        with self._lock:
            return list(self._ids)

    def refresh(self) -> None:
        """Read the workflow's tasks and their statuses from Redis again."""
        ids = self._backend.workflows.task_ids(self.id)
        states = self._backend.workflows.states(ids)
        with self._changes:
            self._ids = ids
            self._known = set(ids)
            for task_id, (status, task, batch) in zip(ids, states, strict=True):
                self._status[task_id] = status or "expired"
                self._task[task_id] = task or "?"
                self._batch[task_id] = batch or None
            self._changes.notify_all()

    def status_counts(self) -> dict[str, int]:
        """How many of its tasks are in each status (``blocked`` and ``skipped`` too), and
        ``total``; read from Redis."""
        self.refresh()
        return self.local_counts()

    def local_counts(self) -> dict[str, int]:
        """Counts per status as this handle last heard them (no Redis round trip)."""
        with self._lock:
            counts = Counter(self._status.get(i, "queued") for i in self._ids)
            return {"total": len(self._ids), **{name: counts.get(name, 0) for name in COUNTERS}}

    def counts_by_task(self) -> dict[str, dict[str, int]]:
        """Counts per status for each function (task name) in the workflow."""
        with self._lock:
            table: dict[str, Counter[str]] = {}
            for task_id in self._ids:
                name = self._task.get(task_id, "?")
                table.setdefault(name, Counter())[self._status.get(task_id, "queued")] += 1
            return {name: dict(counts) for name, counts in table.items()}

    @property
    def finished(self) -> bool:
        """True when every task it has is in a final status (as last heard)."""
        with self._lock:
            return bool(self._ids) and all(self._status.get(i) in _FINAL for i in self._ids)

    def wait(self, timeout: float | None = None) -> dict[str, int]:
        """Wait until every task of the workflow is final; returns the counts.

        Raises:
            TimeoutError: it was not finished within ``timeout`` seconds; says what was left.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            seen = self._version  # a change heard from here on ends the wait below
        self.refresh()
        while not self.finished:
            left = RESYNC_SECONDS if deadline is None else min(
                RESYNC_SECONDS, deadline - time.monotonic())
            if left <= 0:
                counts = {k: v for k, v in self.local_counts().items() if v and k != "total"}
                raise TimeoutError(f"workflow {self.id} ({self.name}) not finished after "
                                   f"{timeout} s: {counts}{self._store.no_worker_hint()}")
            with self._changes:
                self._changes.wait_for(lambda seen=seen: self._version != seen, left)
                seen = self._version
            if not self.finished:
                self.refresh()  # tasks added since, or an event missed
        return self.local_counts()

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per task (in submission order) with its status, result, worker,
        timings and ``parents`` (the ids it waited on)."""
        pandas = require("pandas", "Workflow.to_dataframe()")
        ids = self.task_ids
        rows = []
        for task_id, record in zip(ids, self._store.task_records(ids), strict=True):
            record = record or {}
            row = task_row(task_id, record.get("index"), record.get("task", "?"),
                           record.get("args") or (), record.get("kwargs") or None, record)
            row["result"] = self._store.load_result(task_id, row["result"], leave_large=True)
            row["parents"] = parents_of(record)
            rows.append(row)
        frame = pandas.DataFrame(rows, columns=WORKFLOW_COLUMNS)
        for column in ("due_at", "queued_at", "started_at", "finished_at"):
            frame[column] = pandas.to_datetime(frame[column], unit="s", utc=True)
        return frame

    # --- changing ---------------------------------------------------------------

    def cancel(self) -> int:
        """Cancel every task that has not finished (their children are skipped); returns
        how many were cancelled."""
        cancelled = 0
        for task_id, status in zip(self.task_ids, self._statuses(), strict=True):
            if status not in _FINAL and self._store.cancel(task_id, self._batch.get(task_id)):
                cancelled += 1
        return cancelled

    def retry(self) -> int:
        """Run the failed and skipped tasks again (same ids, attempt + 1); succeeded tasks
        keep their results. Returns how many will run again."""
        queued, blocked = self._backend.workflows.retry(self.task_ids)
        if queued and self._send is not None:
            self._send(queued)  # else the workers' next look produces them
        self.refresh()
        return len(queued) + len(blocked)

    def _statuses(self) -> list[str]:
        with self._lock:
            return [self._status.get(i, "") for i in self._ids]

    # --- for the event listener and displays --------------------------------------

    def has(self, task_id: str) -> bool:
        """True if ``task_id`` is one of the tasks this handle knows."""
        return task_id in self._known

    def _apply(self, task_id: str, status: str) -> None:
        with self._lock:
            self._status[task_id] = status
            self._version += 1

    def _changed(self) -> None:
        with self._changes:
            self._changes.notify_all()
        for callback in list(self._callbacks):
            callback(self)

    def add_change_callback(self, callback: Callable[[Workflow], None]) -> None:
        """Call ``callback(workflow)`` after its tasks change (used by displays)."""
        self._callbacks.append(callback)

    def __iter__(self) -> Iterator[str]:
        return iter(self.task_ids)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def __repr__(self) -> str:
        counts = {k: v for k, v in self.local_counts().items() if v and k != "total"}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no tasks yet"
        return f"<Workflow {self.id} {self.name!r}: {summary}>"


_FINAL = {status.value for status in FINISHED} | {"expired"}


def workflow_rows(backend: RedisBackend, limit: int = RECENT) -> list[dict[str, Any]]:
    """The newest workflows: id, name, created_at and counts per status."""
    rows = []
    for info in backend.workflows.recent(limit):
        ids = backend.workflows.task_ids(info["id"])
        counts = Counter(status for status, _, _ in backend.workflows.states(ids))
        rows.append({**info, "total": len(ids),
                     **{name: counts.get(name, 0) for name in COUNTERS}})
    return rows


def joining(dependencies_workflow: str | None) -> str | None:
    """The workflow a task joins: the active one, else its first parent's (or none)."""
    current = active()
    return current.id if current is not None else dependencies_workflow


class WorkflowMethods:
    """The client's workflow methods (mixed into ``Client``, which provides its backend,
    event listener and store)."""

    backend: RedisBackend
    config: Config
    _store: Any
    _events: Any
    _producer: Any
    _flush: Callable[[set[int]], None]

    def workflow(self, name: str = "workflow") -> Workflow:
        """Start a workflow: tasks submitted in ``with q.workflow(name) as wf:`` join it.

        The workflow lives in Redis; ``wf.id`` re-attaches it from any process later.
        """
        workflow_id = new_workflow_id()
        created_at = self.backend.workflows.create(workflow_id, name)
        return self._watched(Workflow(workflow_id, name, self.backend, self._store, created_at,
                                      self._send_queued))

    def get_workflow(self, workflow_id: str) -> Workflow:
        """A workflow re-attached by id, e.g. after a kernel restart.

        Raises:
            TaskNotFound: Redis holds no workflow ``workflow_id`` (or it expired).
        """
        info = self.backend.workflows.info(workflow_id)
        if info is None:
            raise TaskNotFound(f"no workflow {workflow_id!r} in Redis (or it has expired); "
                               "q.workflows() lists the recent ones")
        workflow = Workflow(workflow_id, info["name"], self.backend, self._store,
                            info["created_at"], self._send_queued)
        return self._watched(workflow)

    def _send_queued(self, task_ids: list[str]) -> None:
        """Produce tasks a retry queued (in the unblocked set, due now), as a map does;
        a worker that takes one meanwhile produces a copy its claim then skips."""
        unblocked = self.backend.unblocked
        messages = unblocked.messages(task_ids)
        if messages:
            partitions: set[int] = set()
            for level in {m.priority for m in messages}:
                same = [m for m in messages if m.priority is level]
                payloads = [protocol.encode(m, self.config.max_message_bytes,
                                            self.config.secret) for m in same]
                partitions |= self._producer.deal([m.id for m in same], payloads, level,
                                                  traces=[m.trace for m in same])
            self._flush(partitions)
        unblocked.sent(task_ids)

    def _watched(self, workflow: Workflow) -> Workflow:
        self._events.start()
        self._events.watch_workflow(workflow)
        workflow.refresh()
        return workflow

    def workflow_rows(self, limit: int = RECENT) -> list[dict[str, Any]]:
        """The newest workflows as dicts: id, name, created_at (unix seconds), total and a
        count per status (no pandas needed)."""
        return workflow_rows(self.backend, limit)

    def workflows(self, limit: int = RECENT) -> pandas.DataFrame:
        """The newest workflows, one row each (see :meth:`workflow_rows`), as a DataFrame.

        Raises:
            ImportError: pandas is not installed (the ``notebook`` extra).
        """
        pandas = require("pandas", "Client.workflows()")
        frame = pandas.DataFrame(self.workflow_rows(limit),
                                 columns=["id", "name", "created_at", "total", *COUNTERS])
        frame["created_at"] = pandas.to_datetime(frame["created_at"], unit="s", utc=True)
        return frame
