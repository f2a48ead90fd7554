"""Task handles (core layer): :class:`TaskFuture` for one task, and the store it reads.

A ``TaskFuture`` is a :class:`concurrent.futures.Future`, so ``wait``,
``as_completed`` and ``add_done_callback`` work, and it is awaitable in
asyncio. Its only producer is the client's event listener (``yadtq.events``),
which moves it along as Redis publishes status changes; callers only read.
What a future asks of Redis (its record, its result, a cancel, why a wait timed
out) goes through the :class:`TaskStore` it is given, so futures never reach
back into the client that made them. Nothing here imports ipywidgets or pandas.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Generator, Sequence
from typing import Any, Protocol

from yadtq.errors import TaskCancelled, TaskFailed, TaskSkipped, YadtqError
from yadtq.status import TaskStatus


class TaskStore(Protocol):
    """What futures and batches read and change in the result store.

    The client hands one to every handle it makes (``yadtq.store.RedisTaskStore``),
    so a handle needs no client: only these calls.
    """

    def task_record(self, task_id: str) -> dict[str, Any]:
        """The task's record, decoded; raises ``TaskNotFound`` when there is none."""
        ...

    def task_records(self, task_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The tasks' records in order, None for a missing one."""
        ...

    def batch_counts(self, batch_id: str) -> dict[str, int]:
        """The batch counters: total and one per status."""
        ...

    def load_result(self, task_id: str, value: Any, leave_large: bool = False) -> Any:
        """A result as stored, made the value the task returned."""
        ...

    def cancel(self, task_id: str, batch_id: str | None) -> bool:
        """Cancel an unfinished task of ``batch_id``; False if it had already finished."""
        ...

    def no_worker_hint(self) -> str:
        """Why a wait timed out, when no live worker serves the queue; else ""."""
        ...

    def workflow(self, workflow_id: str) -> Any:
        """A handle on workflow ``workflow_id``."""
        ...


class TaskFuture(concurrent.futures.Future):
    """A handle on one task, resolved from Redis change events."""

    def __init__(
        self,
        task_id: str,
        task: str,
        store: TaskStore,
        *,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        batch: str | None = None,
        index: int | None = None,
        status: TaskStatus = TaskStatus.QUEUED,
        workflow_id: str | None = None,
    ) -> None:
        super().__init__()
        self.workflow_id = workflow_id
        self.id = task_id
        self.task = task
        self.args = tuple(args)
        self.kwargs = kwargs if kwargs is not None else {}
        self.batch = batch
        self.index = index
        self._store = store
        self._status = status  # scheduled, for a task submitted to run later
        self.due_at: float | None = None  # when it is due (Redis's clock), if it was scheduled
        self.waits_for: str | None = None  # the limit it last waited for ("rate 20/s")
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._worker: str | None = None
        self._attempt = 1
        self._owner: Sequence[TaskFuture] | None = None  # its batch, kept alive with it
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

    @property
    def workflow(self) -> Any:
        """The :class:`~yadtq.workflow.Workflow` the task belongs to, or None."""
        return self._store.workflow(self.workflow_id) if self.workflow_id else None

    def cancel(self) -> bool:
        """Cancel the task in Redis: a queued task never runs; a running one is stopped
        (process mode) or its result discarded (thread mode). Returns True if it was
        cancelled, False if it had already finished."""
        if self.done():
            return self.cancelled()
        cancelled = self._store.cancel(self.id, self.batch)
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
            TaskCancelled: the task was cancelled (a ``CancelledError`` that names it).
            TimeoutError: the task did not finish within ``timeout``; says so when no
                live worker serves the queue.
        """
        try:
            return super().result(timeout)
        except concurrent.futures.TimeoutError:
            raise self._timed_out(timeout) from None
        except concurrent.futures.CancelledError:
            raise TaskCancelled(f"task {self.id} was cancelled") from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the task and return the exception it raised, or None on success.

        Raises:
            TaskCancelled, TimeoutError: as :meth:`result`.
        """
        try:
            return super().exception(timeout)
        except concurrent.futures.TimeoutError:
            raise self._timed_out(timeout) from None
        except concurrent.futures.CancelledError:
            raise TaskCancelled(f"task {self.id} was cancelled") from None

    def _timed_out(self, timeout: float | None) -> TimeoutError:
        return TimeoutError(f"task {self.id} ({self.task}) still {self._status.value} after "
                            f"{timeout} s{self._store.no_worker_hint()}")

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def add_change_callback(self, callback: Callable[[TaskFuture], None]) -> None:
        """Call ``callback(future)`` on every status change (used by displays)."""
        self._change_callbacks.append(callback)

    def to_dict(self) -> dict[str, Any]:
        """The task's current record from Redis, decoded.

        Raises:
            TaskNotFound: Redis holds no record for the task (it expired).
        """
        return self._store.task_record(self.id)

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
        result: Any = None
        if status is TaskStatus.SUCCESS and not self.done():
            try:  # before taking the lock: a large pickled result is fetched from Redis
                result = self._store.load_result(self.id, record.get("result"))
            except YadtqError as exc:
                status, result = TaskStatus.FAILED, exc
        with self._condition:
            if self.done():
                return
            self._status = status
            self._worker = record.get("worker") or self._worker
            self._attempt = record.get("attempt") or self._attempt
            self.started_at = record.get("started_at") or self.started_at
            self.finished_at = record.get("finished_at")
            if status is TaskStatus.SUCCESS:
                self.set_result(result)
            elif isinstance(result, YadtqError):  # a pickled result that cannot be loaded
                self.set_exception(result)
            elif status is TaskStatus.CANCELLED:
                if not super().cancel():  # a running future cannot be cancelled locally
                    self.set_exception(TaskCancelled(f"task {self.id} was cancelled"))
                else:
                    self.set_running_or_notify_cancel()
            else:
                self.set_exception(failure_error(self.id, record))
        self._notify_change()

    def _notify_change(self) -> None:
        for callback in list(self._change_callbacks):
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - a display bug must not break the listener
                concurrent.futures._base.LOGGER.exception("change callback of %r raised", self)


def failure_error(task_id: str, record: dict[str, Any]) -> Exception:
    """The exception a failed or cancelled task's result raises."""
    if record["status"] == TaskStatus.CANCELLED.value:
        return TaskCancelled(f"task {task_id} was cancelled")
    if record["status"] == TaskStatus.SKIPPED.value:
        return TaskSkipped(task_id, "TaskSkipped", record.get("error") or "skipped", "",
                           root=record.get("root") or "")
    return TaskFailed(task_id, record.get("error_type") or record["status"],
                      record.get("error") or f"task ended {record['status']}",
                      record.get("traceback") or "")
