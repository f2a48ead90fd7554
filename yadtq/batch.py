"""Batch handles (core layer): :class:`TaskBatch`, the tasks of one ``map`` call as one handle.

Like a future, a batch reads and changes Redis only through the
:class:`~yadtq.futures.TaskStore` it is given, never through the client. pandas
and matplotlib are imported only by the calls that return a DataFrame or a figure.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from yadtq.errors import YadtqError
from yadtq.extras import require
from yadtq.futures import TaskFuture, TaskStore, failure_error
from yadtq.status import COUNTERS, FINISHED, TaskStatus

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

DATAFRAME_COLUMNS = [
    "id", "index", "task", "args", "kwargs", "status", "result", "error", "worker", "attempt",
    "waits_for", "due_at", "queued_at", "started_at", "finished_at", "duration",
]
BATCH_COUNTERS = ("total", *COUNTERS)
RESULT_ERRORS = ("raise", "return", "skip")  # what TaskBatch.results does with a failed task


class TaskBatch(Sequence[TaskFuture]):
    """The tasks of one ``map`` call, in submission order.

    The batch keeps its tasks' state in plain lists and makes a :class:`TaskFuture`
    only when one is asked for (``batch[i]``, iteration, ``wait``, ``as_completed``):
    100,000 tasks cost a few lists, not 100,000 futures each with its own lock.
    The event listener moves the batch as a whole, and tells its displays once
    per burst of events rather than once per task.
    """

    def __init__(
        self,
        batch_id: str,
        task: str,
        task_ids: Sequence[str],
        store: TaskStore,
        *,
        args: Sequence[Sequence[Any]] | None = None,
        kwargs: Sequence[dict[str, Any] | None] | None = None,
        submitted_at: float | None = None,
        status: TaskStatus = TaskStatus.QUEUED,
        workflow_id: str | None = None,
        due_at: Sequence[float | None] | None = None,
    ) -> None:
        """``due_at``: when each task is due, for tasks re-attached from their records
        (a map with a countdown learns its tasks' from ``enqueue``: :meth:`_set_due`)."""
        self.id = batch_id
        self.workflow_id = workflow_id
        self.task = task
        self.ids = list(task_ids)
        total = len(self.ids)
        self._args = list(args) if args is not None else [()] * total
        self._kwargs = list(kwargs) if kwargs is not None else [None] * total
        self._store = store
        self.submitted_at = submitted_at or time.time()
        self.finished_at: float | None = None
        self._lock = threading.RLock()  # re-entered when a callback reads the batch
        self._all_done = threading.Condition(self._lock)
        self._position = {task_id: i for i, task_id in enumerate(self.ids)}
        self._status = [status] * total  # scheduled, for tasks submitted to run later
        # When each is due (Redis's clock), so displays can say when scheduled ones start.
        self._due_at: list[float | None] = list(due_at) if due_at is not None else [None] * total
        self._worker: list[str | None] = [None] * total
        self._waits: dict[int, str] = {}  # position -> the limit it waits for (claim.lua)
        self._attempt = [1] * total
        self._started_at: list[float | None] = [None] * total
        self._finished_at: list[float | None] = [None] * total
        self._result: list[Any] = [None] * total
        self._failure: dict[int, dict[str, Any]] = {}  # position -> final record, if not success
        self._futures: dict[int, TaskFuture] = {}  # made on demand
        self._counts: Counter[str] = Counter({status.value: total})
        self._per_worker: Counter[str] = Counter()
        self._change_callbacks: list[Callable[[TaskBatch], None]] = []

    # --- for the client and the event listener only -------------------------

    def _set_due(self, task_ids: Sequence[str], due_at: float | None) -> None:
        """Record when these tasks are due, as ``enqueue`` answered (Redis's clock)."""
        with self._lock:
            for task_id in task_ids:
                position = self._position.get(task_id)
                if position is not None:
                    self._due_at[position] = due_at

    def _set_waiting(self, task_id: str, waits_for: str, due_at: float | None) -> None:
        """Record that a task waits for a limit (and until when, for a rate)."""
        position = self._position.get(task_id)
        if position is not None:
            with self._lock:
                self._waits[position], self._due_at[position] = waits_for, due_at

    def _set_progress(self, task_id: str, status: TaskStatus, worker: str | None,
                      attempt: int | None, at: float | None) -> None:
        """Record a non-final status change of one task."""
        position = self._position.get(task_id)
        if position is None:
            return
        with self._lock:
            old = self._status[position]
            if old.is_finished:
                return
            self._move(position, old, status)
            self._worker[position] = worker or None
            self._attempt[position] = attempt or self._attempt[position]
            self._started_at[position] = at if status is TaskStatus.PROCESSING else None
            future = self._futures.get(position)
        if future is not None:
            future._set_progress(status, worker, attempt, at)

    def _resolve(self, task_id: str, record: dict[str, Any]) -> None:
        """Finish one task from its final record."""
        position = self._position.get(task_id)
        if position is None:
            return
        status = TaskStatus(record["status"])
        with self._lock:
            old = self._status[position]
            if old.is_finished:
                return
            self._move(position, old, status)
            self._worker[position] = record.get("worker") or self._worker[position]
            self._attempt[position] = record.get("attempt") or self._attempt[position]
            self._started_at[position] = record.get("started_at") or self._started_at[position]
            self._finished_at[position] = record.get("finished_at")
            if status is TaskStatus.SUCCESS:
                self._result[position] = record.get("result")
            else:
                self._failure[position] = record
            if self._worker[position]:  # cancelled or undelivered before a worker took it
                self._per_worker[self._worker[position]] += 1
            if self._done == len(self.ids):
                self.finished_at = time.time()
                self._all_done.notify_all()
            future = self._futures.get(position)
        if future is not None:
            future._resolve(record)

    @property
    def _done(self) -> int:
        """How many tasks have finished, from the counters (read with the lock held)."""
        return sum(self._counts[status.value] for status in FINISHED)

    def _move(self, position: int, old: TaskStatus, new: TaskStatus) -> None:
        self._counts[old.value] -= 1
        self._counts[new.value] += 1
        self._status[position] = new

    def _changed(self) -> None:
        """Tell the displays that tasks moved (once per burst of events)."""
        for callback in list(self._change_callbacks):
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - a display bug must not break the listener
                concurrent.futures._base.LOGGER.exception("change callback of %r raised", self)

    def _record(self, position: int) -> dict[str, Any]:
        """The task's state as the listener last heard it, in the form of a record."""
        status = self._status[position]
        if status.is_finished and status is not TaskStatus.SUCCESS:
            return self._failure[position]
        return {"status": status.value, "worker": self._worker[position],
                "attempt": self._attempt[position], "started_at": self._started_at[position],
                "finished_at": self._finished_at[position], "result": self._result[position]}

    def _pending_ids(self) -> list[str]:
        with self._lock:
            return [self.ids[i] for i, s in enumerate(self._status) if not s.is_finished]

    # --- for callers -------------------------------------------------------

    def add_change_callback(self, callback: Callable[[TaskBatch], None]) -> None:
        """Call ``callback(batch)`` after tasks of the batch change (used by displays)."""
        self._change_callbacks.append(callback)

    def snapshot(self) -> dict[str, Any]:
        """Progress as plain data: counts, rate, elapsed, ETA, tasks finished per worker,
        and when the first of the scheduled tasks is due (``due_at``, unix seconds, and
        ``due_in``, seconds from now: below 0 once overdue; both None with none scheduled)."""
        with self._lock:
            counts = dict(self._counts)
            per_worker = dict(sorted(self._per_worker.items()))
            finished_at = self.finished_at
            done = self._done
            due_at = min((due for due, status in zip(self._due_at, self._status, strict=True)
                          if due is not None and status is TaskStatus.SCHEDULED),
                         default=None) if counts.get(TaskStatus.SCHEDULED.value) else None
            waits = Counter(text for position, text in self._waits.items()
                            if self._status[position] is TaskStatus.SCHEDULED)
        total = len(self.ids)
        now = time.time()
        elapsed = (finished_at or now) - self.submitted_at
        rate = done / elapsed if elapsed > 0 else 0.0
        return {
            "id": self.id,
            "task": self.task,
            "total": total,
            **{status.value: counts.get(status.value, 0) for status in TaskStatus},
            "done": done,
            "finished": done == total,
            "elapsed": elapsed,
            "rate": rate,
            "eta": (total - done) / rate if rate > 0 and done < total else None,
            "per_worker": per_worker,
            "due_at": due_at,
            "due_in": due_at - now if due_at is not None else None,
            "waits_for": dict(waits),  # limit -> how many scheduled tasks wait for it
        }

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self._future(i) for i in range(*index.indices(len(self.ids)))]
        position = range(len(self.ids))[index]  # negative indices and IndexError as a list
        return self._future(position)

    def __iter__(self) -> Iterator[TaskFuture]:
        return (self._future(i) for i in range(len(self.ids)))

    def _future(self, position: int) -> TaskFuture:
        """The future of one task, made (with the state heard so far) on first use."""
        with self._lock:
            future = self._futures.get(position)
            if future is None:
                future = TaskFuture(self.ids[position], self.task, self._store,
                                    args=self._args[position], kwargs=self._kwargs[position],
                                    batch=self.id, index=position,
                                    workflow_id=self.workflow_id)
                future._owner = self  # the listener moves the batch, so it lives on with it
                status = self._status[position]
                if status.is_finished:
                    future._resolve(self._record(position))
                elif status is not TaskStatus.QUEUED:
                    future._set_progress(status, self._worker[position], self._attempt[position],
                                         self._started_at[position])
                self._futures[position] = future
            return future

    def finished(self) -> list[int]:
        """The indices of the tasks that have finished (any final status), at once: no
        future is made and Redis is not asked (the listener keeps the statuses)."""
        with self._lock:
            return [i for i, status in enumerate(self._status) if status.is_finished]

    def done(self) -> bool:
        """True when every task has finished."""
        with self._lock:
            return self._done == len(self.ids)

    def _wait_all(self, timeout: float | None) -> bool:
        with self._all_done:
            return self._all_done.wait_for(lambda: self._done == len(self.ids), timeout)

    def wait(
        self, timeout: float | None = None, return_when: str = concurrent.futures.ALL_COMPLETED
    ) -> tuple[set[TaskFuture], set[TaskFuture]]:
        """Wait like :func:`concurrent.futures.wait`; returns (done, not_done)."""
        if return_when == concurrent.futures.ALL_COMPLETED:
            self._wait_all(timeout)
            done, not_done = set(), set()
            for future in self:
                (done if future.done() else not_done).add(future)
            return done, not_done
        return concurrent.futures.wait(list(self), timeout, return_when)

    def as_completed(self, timeout: float | None = None) -> Iterator[TaskFuture]:
        """Yield futures as they finish, like :func:`concurrent.futures.as_completed`."""
        return concurrent.futures.as_completed(list(self), timeout)

    def results(self, timeout: float | None = None, errors: str = "raise") -> list[Any]:
        """Wait for every task and return the results in submission order.

        Args:
            timeout: seconds to wait for all of them; None waits for ever.
            errors: what a task that failed or was cancelled gives, as Dask's
                ``gather(errors=...)`` and asyncio's ``return_exceptions`` do:
                ``"raise"`` raises the first one's error, ``"return"`` puts its
                exception in its place, ``"skip"`` leaves it out (the list is then
                shorter than the batch: pair results with ``finished()`` indices or
                use ``"return"`` to keep positions).

        Raises:
            TaskFailed: with ``errors="raise"``, a task failed (the first one in
                submission order).
            TaskCancelled: with ``errors="raise"``, a task was cancelled (if it comes first).
            UntrustedCode: with ``errors="raise"``, a pickled result cannot be loaded.
            TimeoutError: not all tasks finished within ``timeout`` seconds; says so when
                no live worker serves the queue.
            ValueError: ``errors`` is not one of "raise", "return" or "skip".
        """
        if errors not in RESULT_ERRORS:
            raise ValueError(f"errors must be one of {', '.join(map(repr, RESULT_ERRORS))}, "
                             f"got {errors!r}")
        if not self._wait_all(timeout):
            raise TimeoutError(
                f"{len(self.ids) - self._done} (of {len(self.ids)}) tasks of batch {self.id} "
                f"unfinished after {timeout} s{self._store.no_worker_hint()}"
            )
        with self._lock:
            failures = dict(self._failure)
            stored = list(self._result)
        if failures and errors == "raise":
            position = min(failures)
            raise failure_error(self.ids[position], failures[position])
        outcomes, errored = list(stored), set(failures)
        for position, task_id in enumerate(self.ids):
            if position in failures:
                outcomes[position] = failure_error(task_id, failures[position])
                continue
            try:
                outcomes[position] = self._store.load_result(task_id, stored[position])
            except YadtqError as exc:  # a pickled result this client cannot load
                if errors == "raise":
                    raise
                outcomes[position] = exc
                errored.add(position)
        with self._lock:  # keep what was loaded: a large result is fetched once
            self._result = [stored[i] if i in errored else value
                            for i, value in enumerate(outcomes)]
        if errors == "skip":
            return [value for i, value in enumerate(outcomes) if i not in errored]
        return outcomes

    def cancel(self) -> int:
        """Cancel every unfinished task of the batch; returns how many were cancelled."""
        cancelled = 0
        for task_id in self._pending_ids():
            if self._store.cancel(task_id, self.id):
                cancelled += 1
                self._resolve(task_id, {"status": TaskStatus.CANCELLED.value})
        if cancelled:
            self._changed()
        return cancelled

    def status_counts(self) -> dict[str, int]:
        """Counts per status from the batch counters in Redis."""
        counts = self._store.batch_counts(self.id)
        return {name: counts.get(name, 0) for name in BATCH_COUNTERS}

    def local_counts(self) -> Counter[str]:
        """Counts per status as this client last heard them (no Redis round trip)."""
        with self._lock:
            return +self._counts

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per task with its current status, result, worker and timings."""
        pandas = require("pandas", "TaskBatch.to_dataframe()")
        records = self._store.task_records(self.ids)
        rows = [task_row(self.ids[i], i, self.task, self._args[i], self._kwargs[i], record)
                for i, record in enumerate(records)]
        for row in rows:  # pickled results: small ones loaded, large ones left in Redis
            row["result"] = self._store.load_result(row["id"], row["result"], leave_large=True)
        frame = pandas.DataFrame(rows, columns=DATAFRAME_COLUMNS)
        for column in ("due_at", "queued_at", "started_at", "finished_at"):
            frame[column] = pandas.to_datetime(frame[column], unit="s", utc=True)
        return frame

    def timeline(self, title: str | None = None) -> Figure:
        """A Gantt chart: one lane per worker, one bar per task, coloured by status."""
        from yadtq import plots

        return plots.timeline(self.to_dataframe(), title=title or f"{self.task} × {len(self)}")

    def plot_distribution(self, title: str | None = None) -> Figure:
        """A bar chart of how many tasks each worker ran, split by outcome."""
        from yadtq import plots

        return plots.distribution(self.to_dataframe(),
                                  title=title or f"{self.task} × {len(self)}: tasks per worker")

    def __repr__(self) -> str:
        counts = self.local_counts()
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        return f"<TaskBatch {self.id} {self.task} × {len(self.ids)}: {summary}>"


def task_row(task_id: str, index: int | None, task: str, args: Sequence[Any],
         kwargs: dict[str, Any] | None, record: dict[str, Any] | None) -> dict[str, Any]:
    record = record or {}
    started, finished = record.get("started_at"), record.get("finished_at")
    error = record.get("error")
    if error:
        error = f"{record.get('error_type', 'Error')}: {error}"
    return {
        "id": task_id,
        "index": index,
        "task": task,
        "args": tuple(args),
        "kwargs": kwargs or {},
        "status": record.get("status", "expired"),
        "result": record.get("result"),
        "error": error,
        "worker": record.get("worker") or None,
        "attempt": record.get("attempt"),
        "waits_for": record.get("waits_for") or None,  # a rate or concurrency limit
        "due_at": record.get("due_at"),
        "queued_at": record.get("queued_at"),
        "started_at": started,
        "finished_at": finished,
        "duration": finished - started if started and finished else None,
    }
