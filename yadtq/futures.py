"""Task handles (core layer): :class:`TaskFuture` for one task, :class:`TaskBatch` for a map.

A ``TaskFuture`` is a :class:`concurrent.futures.Future`, so ``wait``,
``as_completed`` and ``add_done_callback`` work, and it is awaitable in
asyncio. Its only producer is the client's event listener (``yadtq.events``),
which moves it along as Redis publishes status changes; callers only read.
Nothing here imports ipywidgets or pandas at import time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from yadtq.errors import TaskCancelled, TaskFailed
from yadtq.status import TaskStatus

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

    from yadtq.client import Client

DATAFRAME_COLUMNS = [
    "id", "index", "task", "args", "kwargs", "status", "result", "error", "worker", "attempt",
    "queued_at", "started_at", "finished_at", "duration",
]
BATCH_COUNTERS = ("total", "queued", "processing", "success", "failed", "cancelled")


class TaskFuture(concurrent.futures.Future):
    """A handle on one task, resolved from Redis change events."""

    def __init__(
        self,
        task_id: str,
        task: str,
        *,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        batch: str | None = None,
        index: int | None = None,
        client: Client | None = None,
    ) -> None:
        super().__init__()
        self.id = task_id
        self.task = task
        self.args = tuple(args)
        self.kwargs = kwargs if kwargs is not None else {}
        self.batch = batch
        self.index = index
        self._client = client
        self._status = TaskStatus.QUEUED
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._worker: str | None = None
        self._attempt = 1
        self._in_batch: TaskBatch | None = None  # told of every change, without a callback
        self._change_callbacks: list[Callable[[TaskFuture], None]] = []

    # --- for callers -------------------------------------------------------

    @property
    def status(self) -> TaskStatus:
        """The last status this client heard of (``q.status(id)`` asks Redis)."""
        return self._status

    @property
    def worker(self) -> str | None:
        """The worker running or that ran the task, once one has claimed it."""
        return self._worker

    @property
    def attempt(self) -> int:
        """Which attempt the task is on (1 unless it was re-run)."""
        return self._attempt

    def cancel(self) -> bool:
        """Cancel the task in Redis: a queued task never runs; a running one is stopped
        (process mode) or its result discarded (thread mode). Returns True if it was
        cancelled, False if it had already finished."""
        if self._client is None or self.done():
            return self.cancelled()
        cancelled = self._client.cancel(self.id)
        if cancelled:
            self._resolve({"status": TaskStatus.CANCELLED.value, "worker": self._worker})
        return cancelled or self.cancelled()

    def cancelled(self) -> bool:
        """True if the task was cancelled."""
        return super().cancelled() or self._status is TaskStatus.CANCELLED

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the task and return its result.

        Args:
            timeout: seconds to wait; None waits for ever.

        Returns:
            The task's return value, decoded from JSON.

        Raises:
            TaskFailed: the task raised; carries the remote type, message and traceback.
            TimeoutError: the task did not finish within ``timeout``.
        """
        try:
            return super().result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"task {self.id} ({self.task}) still {self._status.value} after {timeout} s"
            ) from None

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def add_change_callback(self, callback: Callable[[TaskFuture], None]) -> None:
        """Call ``callback(future)`` on every status change (used by displays)."""
        self._change_callbacks.append(callback)

    def to_dict(self) -> dict[str, Any]:
        """The task's current record from Redis, decoded."""
        if self._client is None:
            raise RuntimeError("this future is not attached to a client")
        return self._client.task_record(self.id)

    def __repr__(self) -> str:
        where = f" on {self._worker}" if self._worker else ""
        return f"<TaskFuture {self.id} {self.task} {self._status.value}{where}>"

    # --- for the event listener only ---------------------------------------

    def _set_progress(
        self,
        status: TaskStatus,
        worker: str | None,
        attempt: int | None,
        at: float | None = None,
    ) -> None:
        """Record a non-final status change (``at``: when it happened, unix seconds)."""
        with self._condition:
            if self.done():
                return
            self._status = status
            self._worker = worker or None
            self._attempt = attempt or self._attempt
            self.started_at = at if status is TaskStatus.PROCESSING else None
            if status is TaskStatus.PROCESSING and not self.running():
                self.set_running_or_notify_cancel()
        self._notify_change()

    def _resolve(self, record: dict[str, Any]) -> None:
        """Finish the future from a final task record."""
        status = TaskStatus(record["status"])
        with self._condition:
            if self.done():
                return
            self._status = status
            self._worker = record.get("worker") or self._worker
            self._attempt = record.get("attempt") or self._attempt
            self.started_at = record.get("started_at") or self.started_at
            self.finished_at = record.get("finished_at")
            if status is TaskStatus.SUCCESS:
                self.set_result(record.get("result"))
            elif status is TaskStatus.CANCELLED:
                if not super().cancel():  # a running future cannot be cancelled locally
                    self.set_exception(TaskCancelled(f"task {self.id} was cancelled"))
                else:
                    self.set_running_or_notify_cancel()
            else:
                self.set_exception(TaskFailed(
                    self.id, record.get("error_type") or status.value,
                    record.get("error") or f"task ended {status.value}",
                    record.get("traceback") or "",
                ))
        self._notify_change()

    def _notify_change(self) -> None:
        if self._in_batch is not None:
            self._in_batch._on_future_change(self)
        for callback in list(self._change_callbacks):
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - a display bug must not break the listener
                concurrent.futures._base.LOGGER.exception("change callback of %r raised", self)


class TaskBatch(Sequence[TaskFuture]):
    """The futures of one ``map`` call, in submission order."""

    def __init__(
        self,
        batch_id: str,
        futures: Sequence[TaskFuture],
        client: Client,
        submitted_at: float | None = None,
    ) -> None:
        self.id = batch_id
        self.futures = list(futures)
        self.task = self.futures[0].task if self.futures else "?"
        self._client = client
        self.submitted_at = submitted_at or time.time()
        self.finished_at: float | None = None
        self._lock = threading.Lock()
        self._position = {f.id: i for i, f in enumerate(self.futures)}
        self._counted: list[TaskStatus] = [f.status for f in self.futures]
        self._counts: Counter[str] = Counter(status.value for status in self._counted)
        self._per_worker: Counter[str] = Counter(
            f.worker or "?" for f in self.futures if f.status.is_finished)
        self._change_callbacks: list[Callable[[TaskBatch], None]] = []
        for future in self.futures:
            future._in_batch = self
        if self.futures and self._counts["success"] + self._counts["failed"] \
                + self._counts["cancelled"] == len(self.futures):
            self.finished_at = time.time()

    def _on_future_change(self, future: TaskFuture) -> None:
        self._count(future)
        for callback in list(self._change_callbacks):
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - a display bug must not break the listener
                concurrent.futures._base.LOGGER.exception("change callback of %r raised", self)

    def _count(self, future: TaskFuture) -> None:
        """Move ``future`` to its current status in the counters; idempotent."""
        with self._lock:
            position = self._position[future.id]
            old, new = self._counted[position], future.status
            if old is new:
                return
            self._counts[old.value] -= 1
            self._counts[new.value] += 1
            self._counted[position] = new
            if new.is_finished and not old.is_finished:
                self._per_worker[future.worker or "?"] += 1
                if self._counts["success"] + self._counts["failed"] \
                        + self._counts["cancelled"] == len(self.futures):
                    self.finished_at = time.time()

    def add_change_callback(self, callback: Callable[[TaskBatch], None]) -> None:
        """Call ``callback(batch)`` after any task of the batch changes (used by displays)."""
        self._change_callbacks.append(callback)

    def snapshot(self) -> dict[str, Any]:
        """Progress as plain data: counts, rate, elapsed, ETA, tasks finished per worker."""
        with self._lock:
            counts = dict(self._counts)
            per_worker = dict(sorted(self._per_worker.items()))
            finished_at = self.finished_at
        total = len(self.futures)
        done = counts.get("success", 0) + counts.get("failed", 0) + counts.get("cancelled", 0)
        elapsed = (finished_at or time.time()) - self.submitted_at
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
        }

    def __len__(self) -> int:
        return len(self.futures)

    def __getitem__(self, index: Any) -> Any:
        return self.futures[index]

    def __iter__(self) -> Iterator[TaskFuture]:
        return iter(self.futures)

    def done(self) -> bool:
        """True when every task has finished."""
        return all(f.done() for f in self.futures)

    def wait(
        self, timeout: float | None = None, return_when: str = concurrent.futures.ALL_COMPLETED
    ) -> tuple[set[TaskFuture], set[TaskFuture]]:
        """Wait like :func:`concurrent.futures.wait`; returns (done, not_done)."""
        return concurrent.futures.wait(self.futures, timeout, return_when)

    def as_completed(self, timeout: float | None = None) -> Iterator[TaskFuture]:
        """Yield futures as they finish, like :func:`concurrent.futures.as_completed`."""
        return concurrent.futures.as_completed(self.futures, timeout)

    def results(self, timeout: float | None = None) -> list[Any]:
        """Wait for every task and return the results in submission order.

        Raises:
            TaskFailed: a task failed (the first one in submission order).
            TimeoutError: not all tasks finished within ``timeout`` seconds.
        """
        _, not_done = self.wait(timeout)
        if not_done:
            raise TimeoutError(
                f"{len(not_done)} (of {len(self.futures)}) tasks of batch {self.id} unfinished "
                f"after {timeout} s"
            )
        return [f.result() for f in self.futures]

    def cancel(self) -> int:
        """Cancel every unfinished task of the batch; returns how many were cancelled."""
        return sum(f.cancel() for f in self.futures if not f.done())

    def status_counts(self) -> dict[str, int]:
        """Counts per status from the batch counters in Redis."""
        counts = self._client.backend.batch_counts(self.id)
        return {name: counts.get(name, 0) for name in BATCH_COUNTERS}

    def local_counts(self) -> Counter[str]:
        """Counts per status as this client last heard them (no Redis round trip)."""
        with self._lock:
            return +self._counts

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per task with its current status, result, worker and timings."""
        import pandas

        records = self._client.backend.task_records([f.id for f in self.futures])
        rows = [_row(f, r) for f, r in zip(self.futures, records, strict=True)]
        frame = pandas.DataFrame(rows, columns=DATAFRAME_COLUMNS)
        for column in ("queued_at", "started_at", "finished_at"):
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
        return f"<TaskBatch {self.id} {self.task} × {len(self.futures)}: {summary}>"


def _row(future: TaskFuture, record: dict[str, Any] | None) -> dict[str, Any]:
    record = record or {}
    started, finished = record.get("started_at"), record.get("finished_at")
    error = record.get("error")
    if error:
        error = f"{record.get('error_type', 'Error')}: {error}"
    return {
        "id": future.id,
        "index": future.index,
        "task": future.task,
        "args": future.args,
        "kwargs": future.kwargs,
        "status": record.get("status", "expired"),
        "result": record.get("result"),
        "error": error,
        "worker": record.get("worker") or None,
        "attempt": record.get("attempt"),
        "queued_at": record.get("queued_at"),
        "started_at": started,
        "finished_at": finished,
        "duration": finished - started if started and finished else None,
    }
