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

from yadtq.errors import TaskFailed
from yadtq.status import TaskStatus

if TYPE_CHECKING:
    import pandas

    from yadtq.client import Client

DATAFRAME_COLUMNS = [
    "id", "index", "task", "args", "kwargs", "status", "result", "error", "worker", "attempt",
    "queued_at", "started_at", "finished_at", "duration",
]
BATCH_COUNTERS = ("total", "queued", "processing", "success", "failed")


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
        self.kwargs = dict(kwargs or {})
        self.batch = batch
        self.index = index
        self._client = client
        self._status = TaskStatus.QUEUED
        self._worker: str | None = None
        self._attempt = 1
        self._progress_lock = threading.Lock()
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
        """Tasks cannot be cancelled yet; always returns False, like a running future."""
        return False

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

    def _set_progress(self, status: TaskStatus, worker: str | None, attempt: int | None) -> None:
        """Record a non-final status change."""
        with self._progress_lock:
            if self.done():
                return
            self._status = status
            self._worker = worker or None
            self._attempt = attempt or self._attempt
            if status is TaskStatus.PROCESSING and not self.running():
                self.set_running_or_notify_cancel()
        self._notify_change()

    def _resolve(self, record: dict[str, Any]) -> None:
        """Finish the future from a final task record."""
        status = TaskStatus(record["status"])
        with self._progress_lock:
            if self.done():
                return
            self._status = status
            self._worker = record.get("worker") or self._worker
            self._attempt = record.get("attempt") or self._attempt
            if status is TaskStatus.SUCCESS:
                self.set_result(record.get("result"))
            else:
                self.set_exception(TaskFailed(
                    self.id, record.get("error_type") or status.value,
                    record.get("error") or f"task ended {status.value}",
                    record.get("traceback") or "",
                ))
        self._notify_change()

    def _notify_change(self) -> None:
        for callback in list(self._change_callbacks):
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - a display bug must not break the listener
                concurrent.futures._base.LOGGER.exception("change callback of %r raised", self)


class TaskBatch(Sequence[TaskFuture]):
    """The futures of one ``map`` call, in submission order."""

    def __init__(self, batch_id: str, futures: Sequence[TaskFuture], client: Client) -> None:
        self.id = batch_id
        self.futures = list(futures)
        self._client = client
        self.submitted_at = time.time()

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

    def status_counts(self) -> dict[str, int]:
        """Counts per status from the batch counters in Redis."""
        counts = self._client.backend.batch_counts(self.id)
        return {name: counts.get(name, 0) for name in BATCH_COUNTERS}

    def local_counts(self) -> Counter[str]:
        """Counts per status as this client last heard them (no Redis round trip)."""
        return Counter(f.status.value for f in self.futures)

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per task with its current status, result, worker and timings."""
        import pandas

        records = self._client.backend.task_records([f.id for f in self.futures])
        rows = [_row(f, r) for f, r in zip(self.futures, records, strict=True)]
        frame = pandas.DataFrame(rows, columns=DATAFRAME_COLUMNS)
        for column in ("queued_at", "started_at", "finished_at"):
            frame[column] = pandas.to_datetime(frame[column], unit="s", utc=True)
        return frame

    def __repr__(self) -> str:
        counts = self.local_counts()
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        return f"<TaskBatch {self.id} {len(self.futures)} tasks: {summary}>"


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
