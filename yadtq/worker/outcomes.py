"""What a finished attempt becomes, and the thread that stores it (worker runtime).

:func:`outcome` turns a slot's :class:`~yadtq.worker.execution.Attempt` into the
:class:`~yadtq.backend.Outcome` Redis stores: a JSON result, a signed pickled
one (a large one stored as a blob first), or a failure with its retry time.
:class:`OutcomeStore` is the one thread that writes outcomes: slots hand theirs
over through a queue and go on to their next task, and whatever ended
meanwhile is stored in one round trip. While Redis is away only this thread
waits.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from yadtq import protocol, registry, values
from yadtq.backend import Outcome, RedisBackend
from yadtq.config import Config
from yadtq.status import TaskStatus
from yadtq.worker.execution import Attempt
from yadtq.worker.redis_retry import GAVE_UP, retry_redis

logger = logging.getLogger(__name__)

FINISH_RETRY_SECONDS = 60.0  # then the leases expire and the tasks run again elsewhere
MAX_BACKOFF_SECONDS = 300.0

Ended = tuple[protocol.TaskMessage, Outcome]


def option(message: protocol.TaskMessage, name: str, default: Any) -> Any:
    """A task option: the call's value, else the task's declared one, else ``default``."""
    for value in (getattr(message, name), getattr(registry.options(message.task), name)):
        if value is not None:
            return value
    return default


def max_retries(message: protocol.TaskMessage) -> int:
    """How many times the task may run again after a retryable failure."""
    return option(message, "max_retries", 0)


def backoff(message: protocol.TaskMessage, attempt: int, default_base: float) -> float:
    """Exponential backoff with full jitter around the base: base * 2^(n-1) * [0.5, 1.5)."""
    base = option(message, "retry_backoff", default_base)
    return min(base * 2 ** (attempt - 1) * random.uniform(0.5, 1.5), MAX_BACKOFF_SECONDS)


def failed(message: protocol.TaskMessage, attempt: int, error: Exception,
           retryable: bool = False) -> Outcome:
    """A failure the worker itself found (not the task), named by its exception type."""
    return Outcome(message.id, message.batch, attempt, TaskStatus.FAILED,
                   error_type=type(error).__name__, error=str(error), retryable=retryable)


def outcome(message: protocol.TaskMessage, attempt: int, result: Attempt, *,
            config: Config, backend: RedisBackend, now: float, stopping: threading.Event,
            worker: str) -> Outcome:
    """The outcome to store for one attempt of ``message`` that produced ``result``."""
    if result.ok and result.pickled:
        return _pickled(message, attempt, result.value, result.value_type, config=config,
                        backend=backend, stopping=stopping, worker=worker)
    if result.ok:
        try:
            encoded = json.dumps(result.value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return Outcome(message.id, message.batch, attempt, TaskStatus.FAILED,
                           error_type="TypeError",
                           error=f"task {message.task!r} returned "
                           f"{type(result.value).__name__}, which is not JSON-serialisable "
                           f"({exc}); return JSON types only")
        return Outcome(message.id, message.batch, attempt, TaskStatus.SUCCESS,
                       result=result.value, result_json=encoded)
    retry_at = None
    if result.retryable and attempt <= max_retries(message):
        retry_at = now + backoff(message, attempt, config.retry_backoff)
    return Outcome(message.id, message.batch, attempt, TaskStatus.FAILED,
                   error_type=result.error_type, error=result.error,
                   traceback=result.traceback, retry_at=retry_at,
                   retryable=result.retryable)


def _pickled(message: protocol.TaskMessage, attempt: int, pickled: bytes, type_name: str, *,
             config: Config, backend: RedisBackend, stopping: threading.Event,
             worker: str) -> Outcome:
    """A trusted task's result: signed, inline when small, else a blob stored first."""
    if len(pickled) > config.max_payload_bytes:
        return Outcome(message.id, message.batch, attempt, TaskStatus.FAILED,
                       error_type="PayloadTooLarge",
                       error=f"task {message.task!r} returned {len(pickled)} bytes pickled, "
                       f"over max_payload_bytes={config.max_payload_bytes}; return less "
                       "(or a reference to it), or raise YADTQ_MAX_PAYLOAD_BYTES")
    ref = values.Ref.of(pickled, config.inline_bytes, type_name)
    if not ref.inline:
        stored = retry_redis(lambda: backend.put_blobs({ref.sha256: pickled}),
                             "store a result", worker=worker, stopping=stopping,
                             within=FINISH_RETRY_SECONDS)
        if stored is GAVE_UP:
            return Outcome(message.id, message.batch, attempt, TaskStatus.FAILED,
                           error_type="BackendUnavailable", retryable=True,
                           error="could not store the task's result in Redis")
    assert config.secret is not None  # a worker that trusts code has one
    stored = values.stored_result(replace(
        ref, sig=values.result_signature(config.secret, message.id, ref.sha256)))
    return Outcome(message.id, message.batch, attempt, TaskStatus.SUCCESS,
                   result=stored, result_json=json.dumps(stored))


class OutcomeStore:
    """The thread that stores outcomes, many in one round trip.

    ``on_stored(message, outcome, refusal)`` is called on this thread for each
    outcome once Redis took it (``refusal`` None) or refused it (why), or once
    Redis stayed away for a minute (``"Redis unreachable"``). ``on_readied(ids)`` gets
    the children that final outcomes readied, for the worker to produce at once.

    It alone counts them (``processed``: successes, ``failed``: the rest) and writes
    the totals into the worker's record with the outcomes, so the workers table is
    current when a task's result arrives; it zeroes them first, over any counts an
    earlier run of the same worker name left.
    """

    def __init__(self, backend: RedisBackend, worker: str,
                 on_stored: Callable[[protocol.TaskMessage, Outcome, str | None], None],
                 clock: Callable[[], float], stopping: threading.Event,
                 on_readied: Callable[[list[str]], None] = lambda ids: None) -> None:
        self._backend = backend
        self._worker = worker
        self._on_stored = on_stored
        self._on_readied = on_readied
        self._clock = clock
        self._stopping = stopping
        self.processed = 0
        self.failed = 0
        self._ended: queue.SimpleQueue[Ended | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"{worker}-outcomes",
                                        daemon=True)

    def start(self) -> None:
        """Start storing."""
        self._thread.start()

    def put(self, message: protocol.TaskMessage, report: Outcome) -> None:
        """Hand over an outcome to store; returns at once."""
        self._ended.put((message, report))

    def close(self, timeout: float) -> None:
        """Store what was handed over, then stop (waits up to ``timeout`` seconds)."""
        self._ended.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        self._store_or_log([])  # the counts start at zero
        closing = False
        while not closing:
            first = self._ended.get()
            ended = [] if first is None else [first]
            closing = first is None
            while not self._ended.empty():
                item = self._ended.get()
                if item is None:
                    closing = True
                else:
                    ended.append(item)
            if ended:
                self._store_or_log(ended)

    def _store_or_log(self, ended: list[Ended]) -> None:
        try:
            self._store(ended)
        except Exception:  # noqa: BLE001 - one failure must not stop later outcomes
            logger.exception("Worker %s: storing outcomes failed; their leases will "
                             "expire and they will run again", self._worker)

    def _store(self, ended: list[Ended]) -> None:
        succeeded = sum(1 for _, report in ended if report.status is TaskStatus.SUCCESS)
        counts = {"processed": self.processed + succeeded,
                  "failed": self.failed + len(ended) - succeeded}
        stored = retry_redis(
            lambda: self._backend.finish_many([report for _, report in ended], self._worker,
                                              now=self._clock(), counts=counts),
            f"store {len(ended)} outcome(s) (their leases will expire and they will run again)",
            worker=self._worker, stopping=self._stopping, within=FINISH_RETRY_SECONDS,
        )
        self.processed, self.failed = counts["processed"], counts["failed"]
        if stored is GAVE_UP:
            refusals: list[str | None] = ["Redis unreachable"] * len(ended)
        else:
            refusals = stored.refusals
            if stored.readied:
                self._on_readied(stored.readied)
        for (message, report), refused in zip(ended, refusals, strict=True):
            self._on_stored(message, report, refused)
