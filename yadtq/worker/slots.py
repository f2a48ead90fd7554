"""A worker's execution slots (worker runtime): threads that run claimed tasks.

Each of the N slot threads takes the next claimed task from a queue, gets it ready
(shipped code unpacked and checked), runs it on a free runner (``execution``: a task
process, or this thread) and hands the outcome back to the worker. While tasks are
short, the worker claims ahead, and a slot hands the untimed tasks waiting together
(up to ``GROUP``) to its task process in one round trip; a group stopped midway (a task
cancelled, or one that ended the process) runs again task by task, but for the
cancelled ones.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from yadtq import protocol
from yadtq.backend import Outcome, RedisBackend
from yadtq.config import Config
from yadtq.errors import BackendUnavailable, UntrustedCode
from yadtq.worker import execution, outcomes
from yadtq.worker.parents import InputsUnavailable, ParentValues, Read
from yadtq.worker.shipped import PythonVersionMismatch, ShippedCode
from yadtq.worker.spans import NO_SPANS, Spans
from yadtq.worker.worker_metrics import NO_METRICS, NoMetrics, WorkerMetrics

SHORT_TASK = 0.005  # seconds; tasks this short on average are claimed ahead and grouped
GROUP = 8  # short untimed tasks a slot hands its task process in one round trip, at most


@dataclass(frozen=True)
class _Ready:
    """A claimed task about to run in a slot."""

    message: protocol.TaskMessage
    attempt: int
    call: execution.Call
    timeout: float | None


class Slots:
    """N threads running claimed tasks; the worker claims, the slots run and report."""

    def __init__(
        self,
        config: Config,
        backend: RedisBackend,
        *,
        worker: str,
        runners: Sequence[Any],
        ended: Callable[[protocol.TaskMessage, Outcome], None],
        grouping: Callable[[], bool],
        attach: Callable[[str, Any], None],
        cancelled: Callable[[str], bool],
        clock: Callable[[], float],
        stopping: threading.Event,
        metrics: WorkerMetrics | NoMetrics = NO_METRICS,
        spans: Spans = NO_SPANS,
    ) -> None:
        """``ended(message, outcome)``: an attempt ended; ``grouping()``: whether tasks
        waiting may run together (the worker claims ahead); ``attach(task_id, runner)``:
        the runner a task runs on, for cancelling it; ``cancelled(task_id)``: whether it
        was cancelled while it ran; ``metrics``: where each task that ran is observed;
        ``spans``: told of every attempt ended (tracing)."""
        self.config = config
        self._backend = backend
        self._worker = worker
        self._ended = ended
        self._grouping = grouping
        self._attach = attach
        self._cancelled = cancelled
        self._clock = clock
        self._stopping = stopping
        self._metrics = metrics
        self._spans = spans
        self._shipped = ShippedCode(config, backend)
        self._parents = ParentValues(config, backend)
        self.mean_run = SHORT_TASK * 10  # seconds a task ran, on average of the recent ones
        self._claimed: queue.SimpleQueue[tuple[protocol.TaskMessage, int] | None] = (
            queue.SimpleQueue())  # what the slots take their next task from
        self._runners: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for runner in runners:
            self._runners.put(runner)
        self._threads = [threading.Thread(target=self._slot, name=f"{worker}-slot-{i}",
                                          daemon=True) for i in range(len(runners))]

    def start(self) -> None:
        """Start the slot threads."""
        for thread in self._threads:
            thread.start()

    def busy(self) -> int:
        """How many slots are running a task now."""
        return len(self._threads) - self._runners.qsize()

    def put(self, message: protocol.TaskMessage, attempt: int) -> None:
        """Run a claimed task in the next free slot."""
        self._claimed.put((message, attempt))

    def stop(self, grace: float) -> None:
        """Drop claimed tasks no slot has begun, and wait up to ``grace`` seconds for the
        running ones to end."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._claimed.get_nowait()
        for _ in self._threads:
            self._claimed.put(None)
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Close the runners (their task processes)."""
        while not self._runners.empty():
            self._runners.get().close()

    def _slot(self) -> None:
        """A slot's thread: run claimed tasks until handed None; short untimed ones that
        wait together go to the task process in one round trip."""
        while (claimed := self._claimed.get()) is not None:
            group = [claimed, *self._waiting()]
            read = None
            with contextlib.suppress(BackendUnavailable):  # each then reads its own
                read = self._parents.prefetch([message for message, _ in group])
            ready = [r for r in (self._ready(one, read) for one in group) if r is not None]
            together = [r for r in ready if r.timeout is None]
            alone = [r for r in ready if r.timeout is not None]
            if len(together) == 1:
                together, alone = [], ready
            if together:
                self._run_together(together)
            for task in alone:
                self._run_alone(task)

    def _waiting(self) -> list[tuple[protocol.TaskMessage, int]]:
        """Claimed tasks waiting for a slot, up to a group's worth less one, while tasks
        are short (a long one waits for the next free slot)."""
        waiting: list[tuple[protocol.TaskMessage, int]] = []
        while self._grouping() and len(waiting) < GROUP - 1:
            try:
                claimed = self._claimed.get_nowait()
            except queue.Empty:
                break
            if claimed is None:  # the worker is stopping: leave that to the next slot
                self._claimed.put(None)
                break
            waiting.append(claimed)
        return waiting

    def _ready(self, claimed: tuple[protocol.TaskMessage, int], read: Read | None = None
               ) -> _Ready | None:
        """What a slot needs to run a claimed task (its shipped code, its parents' values);
        None: it cannot run here, and has ended (shipped code that does not check out, a
        parent's result gone, say)."""
        message, attempt = claimed
        started = self._clock()
        try:
            shipped = self._shipped.unpack(message)
            parents = self._parents.read(message, read)
        except (UntrustedCode, PythonVersionMismatch, BackendUnavailable,
                InputsUnavailable) as exc:
            report = outcomes.failed(message, attempt, exc,
                                     retryable=isinstance(exc, BackendUnavailable))
            self._spans.ran(message, attempt, report, started, self._clock() - started)
            self._ended(message, report)
            return None
        call = execution.Call(message.task, message.args, dict(message.kwargs),
                              message.retry_on, shipped, parents)
        return _Ready(message, attempt, call,
                      outcomes.option(message, "timeout", self.config.default_timeout))

    def _run_alone(self, ready: _Ready) -> None:
        """Run one claimed task in a slot and hand over its outcome."""
        call = ready.call
        started = self._clock()
        attempts = self._run([ready], lambda runner: [runner.run(call, ready.timeout)])
        self._ended_all([ready], attempts, started)

    def _run_together(self, group: list[_Ready]) -> None:
        """Run untimed claimed tasks in one round trip and hand over their outcomes. If
        the task process did not finish them all (one was cancelled, or one ended the
        process), each runs again alone, but for the cancelled ones."""
        started = self._clock()
        attempts = self._run(group, lambda runner: runner.run_group([r.call for r in group]))
        if attempts is not None:
            self._ended_all(group, attempts, started)
            return
        for ready in group:
            if self._cancelled(ready.message.id):
                self._ended_all([ready], [execution.cancelled()], started)
            else:
                self._run_alone(ready)

    def _run(self, group: list[_Ready], run: Callable[[Any], list[execution.Attempt] | None]
             ) -> list[execution.Attempt] | None:
        """Run tasks on a free runner (which cancelling them stops), timing them."""
        runner = self._runners.get()
        for ready in group:
            self._attach(ready.message.id, runner)
        started = time.monotonic()
        try:
            return run(runner)
        finally:
            self._runners.put(runner)
            self.mean_run = 0.8 * self.mean_run + 0.2 * (
                (time.monotonic() - started) / len(group))

    def _ended_all(self, group: list[_Ready], attempts: list[execution.Attempt],
                   started: float) -> None:
        """Hand over the outcomes of tasks run one after another from ``started``; each
        ran for the time measured where it ran, or, if it was stopped, until now."""
        for ready, result in zip(group, attempts, strict=True):
            report = outcomes.outcome(
                ready.message, ready.attempt, result, config=self.config,
                backend=self._backend, now=self._clock(), stopping=self._stopping,
                worker=self._worker)
            seconds = self._clock() - started if result.seconds is None else result.seconds
            self._metrics.ran(ready.message, report, started, seconds)
            self._spans.ran(ready.message, ready.attempt, report, started, seconds)
            started += seconds
            self._ended(ready.message, report)
