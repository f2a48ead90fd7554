"""The worker runtime (core layer): take tasks from Kafka, claim them in Redis, run them.

The main loop reads as a list of steps: poll up to 100 messages ahead into a
local buffer (decoded; undecodable, unsigned or forged ones go to the
dead-letter topic when reached), and for the free slots take the oldest, claim
them in Redis with a lease in one round trip and hand them to the execution
slots (``yadtq.execution``); every half second, commit the offsets of what was
claimed (never of what is only buffered). The slot whose task ends stores its
outcome, with all others that ended meanwhile, in one round trip. With nothing
of its own to do, the worker takes tasks waiting in other workers' partitions
(``yadtq.stealing``), or else sleeps until a client rings one of its
partitions' doorbells in Redis; a ring that names a lone task is claimed
straight from its Redis record. A heartbeat thread records the worker in
Redis, renews the leases of what it runs, stops tasks cancelled while running,
sends due retries, and reaps expired leases of any worker (DESIGN.md,
"Delivery guarantees"). A task this worker does not serve is handed on to a
partition of a live worker that does (``yadtq.routing``). Only tasks registered
by the worker's own task modules run, and, on a worker started to trust code,
functions shipped by value whose signed pickles check out (``yadtq.shipping``).
"""

from __future__ import annotations

import hmac
import importlib
import json
import logging
import os
import queue
import random
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from yadtq import broker, execution, protocol, registry, values
from yadtq.backend import UNNAMED_RING, Claim, Outcome, RedisBackend
from yadtq.config import Config
from yadtq.errors import BackendUnavailable, ProtocolError, UnknownTask, UntrustedCode
from yadtq.routing import Routes
from yadtq.status import TaskStatus
from yadtq.stealing import Stealer

logger = logging.getLogger(__name__)

DEFAULT_TASK_MODULES = ("worker_node.tasks",)
FINISH_RETRY_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 300.0
REDIS_RETRY_MAX_DELAY = 5.0
COMMIT_INTERVAL = 0.5  # seconds; a claim, not the offset, is what keeps a task from running twice
READ_AHEAD = 100  # messages polled ahead: one poll feeds many claims, oldest first
POLL_RETRY_SECONDS = 0.5  # after a poll that failed
POLL_MS = 20  # a poll returns as soon as records arrive; this is how long it looks when none do
JOIN_POLL_MS = 200  # a group join completes over polls this long
GROUP_POLL_INTERVAL = 0.1  # seconds; with every slot busy, a poll only serves the group
STEAL_BACKOFF_MIN, STEAL_BACKOFF_MAX = 0.05, 5.0  # seconds between looks that find nothing
ROUTES_MAX_AGE = 0.5  # seconds; how stale the queue's workers' tasks may be when routing
JOINING_PEER_WAIT = 0.05  # seconds; a task handed on to a worker still joining comes back

T = TypeVar("T")


class _GaveUp:
    """What :meth:`Worker._retry_redis` returns when Redis stayed unreachable."""


GAVE_UP = _GaveUp()


@dataclass
class _Running:
    message: protocol.TaskMessage
    attempt: int
    future: Future[None] | None = None
    runner: Any = None


def _option(message: protocol.TaskMessage, name: str, default: Any) -> Any:
    """A task option: the call's value, else the task's declared one, else ``default``."""
    for value in (getattr(message, name), getattr(registry.options(message.task), name)):
        if value is not None:
            return value
    return default


Decoded = tuple[Any, "protocol.TaskMessage | ProtocolError"]  # a record and what it holds


def _submitted(item: Decoded) -> tuple[float, float]:
    record, decoded = item
    return record.timestamp, getattr(decoded, "submitted_at", None) or 0.0


class _ReadAhead:
    """Polled, decoded records not yet taken, handed out oldest first across partitions.

    Each partition's records leave in offset order, so committing up to the
    last one taken never skips a record. Between partitions, the one whose next
    task was submitted first goes first: tasks run in about the order they were
    submitted, not one partition after another.
    """

    def __init__(self) -> None:
        self._partitions: dict[Any, deque[Decoded]] = {}

    def add(self, partition: Any, items: list[Decoded]) -> None:
        if items:
            self._partitions.setdefault(partition, deque()).extend(items)

    def take(self, count: int) -> list[Decoded]:
        taken = []
        while len(taken) < count and self._partitions:
            oldest = min(self._partitions, key=lambda p: _submitted(self._partitions[p][0]))
            waiting = self._partitions[oldest]
            taken.append(waiting.popleft())
            if not waiting:
                del self._partitions[oldest]
        return taken

    def __bool__(self) -> bool:
        return bool(self._partitions)


class PythonVersionMismatch(RuntimeError):
    """Shipped code was pickled by another Python version than the worker's."""


def load_task_modules(modules: Iterable[str]) -> list[str]:
    """Import the modules whose ``@yadtq.task`` functions this worker may run."""
    for module in modules:
        importlib.import_module(module)
    return registry.registered_names()


class Worker:
    """One worker process's runtime: a consumer-group member with N execution slots."""

    def __init__(
        self,
        config: Config,
        *,
        name: str | None = None,
        concurrency: int = 4,
        task_modules: Sequence[str] = DEFAULT_TASK_MODULES,
        mode: str = "process",
        steal: bool = True,
        shutdown_grace: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.config = config
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.concurrency = concurrency
        self.mode = mode
        self.shutdown_grace = shutdown_grace
        self.clock = clock
        self.task_names = load_task_modules(task_modules)
        self.trust_code = config.trust_code
        # Message routes this worker runs: its task names, and shipped code if it trusts it.
        self._served = frozenset(self.task_names) | (
            {protocol.SHIPPED_CODE} if self.trust_code else set())
        self._code_cache: dict[str, bytes] = {}  # shipped functions by digest
        self._routes: Routes | None = None  # the queue's other workers, read when needed
        self._routes_read_at = 0.0
        self.started_at = clock()
        self.processed = 0
        self.failed = 0
        self._running: dict[str, _Running] = {}  # claimed, outcome not yet stored
        self._executing = 0  # claimed and not yet ended: the slots in use
        self._buffer = _ReadAhead()  # polled records not yet taken
        self._claimed_through: dict[TopicPartition, int] = {}  # next offset to commit
        self._commit_due = False
        self._last_commit = 0.0
        self._outcomes: queue.SimpleQueue[tuple[protocol.TaskMessage, Outcome]] = (
            queue.SimpleQueue()
        )
        self._storing = threading.Lock()  # held by the thread storing outcomes
        self._lock = threading.Lock()
        self._slot_freed = threading.Event()
        self._stopping = threading.Event()
        self._stop_reason = "stopped"
        self._heartbeat_now = threading.Event()
        self._partitions: list[int] = []
        self._topic_partitions = 0
        self._assignment_news = False  # set by the rebalance callback, cleared by _poll
        self._paused = False
        self._runners: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for runner in execution.make_runners(mode, concurrency, task_modules):
            self._runners.put(runner)
        self.backend = RedisBackend(config)
        self.backend.check_connection()
        broker.create_topics(config)
        self.producer = broker.make_producer(config, linger_ms=2)
        self.consumer = broker.make_consumer(
            config, client_id=self.name, on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        self._stealer = Stealer(config, self.name, self.backend.claimed_offsets) if steal else None
        self._steal_backoff = 0.0
        self._next_steal_at = 0.0
        self._poll_ms = POLL_MS  # how long the next poll waits for records to arrive
        self._polled_at = 0.0
        # One thread more than slots: a slot thread storing outcomes must not hold up the
        # next task (the runners still bound how many run at once).
        self.executor = ThreadPoolExecutor(concurrency + 1,
                                           thread_name_prefix=f"{self.name}-slot")
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, name=f"{self.name}-heartbeat", daemon=True
        )

    # --- lifecycle ---------------------------------------------------------

    def run(self) -> None:
        """Serve tasks until :meth:`stop` is called or a signal stops the worker."""
        logger.info(
            "Worker %s: serving queue %r (topic %s) with %d %s slots; tasks: %s",
            self.name, self.config.queue, self.config.tasks_topic, self.concurrency, self.mode,
            ", ".join(self.task_names) or "none",
        )
        self._heartbeat_thread.start()
        try:
            while not self._stopping.is_set():
                free = self._free_slots()
                if free and self._buffer:
                    self._take(free)
                elif free == 0:
                    self._pause()
                    if time.monotonic() - self._polled_at > GROUP_POLL_INTERVAL:
                        self._poll(0)  # takes part in a rebalance; the partitions are paused
                    self._slot_freed.wait(0.2)
                    self._slot_freed.clear()
                else:
                    self._resume()
                    # Short polls only with partitions: a group join needs longer ones.
                    if not self._poll(self._poll_ms if self._partitions else JOIN_POLL_MS) \
                            and not self._steal(free):
                        self._sleep_until_rung()
                self._commit()
        finally:
            self._shutdown()

    def stop(self, reason: str = "stop requested") -> None:
        """Ask the worker to stop taking work; :meth:`run` then winds down."""
        self._stop_reason = reason
        self._stopping.set()
        self._slot_freed.set()

    def install_signal_handlers(self) -> None:
        """Stop gracefully on SIGTERM and SIGINT."""

        def handle(signum: int, _frame: Any) -> None:
            self.stop(f"received {signal.Signals(signum).name}")

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    # --- the loop's steps --------------------------------------------------

    def _free_slots(self) -> int:
        with self._lock:
            return self.concurrency - self._executing

    def _sleep_until_rung(self) -> None:
        """Nothing to do: sleep until a client rings one of our partitions' doorbells.

        A poll that finds nothing is not repeated at once: the embedded broker
        would be asked hundreds of times a second. Tasks from clients that ring
        no doorbell are found within ``idle_wait``.
        """
        partitions = self._partitions
        if not partitions:
            return  # joining the group: the next poll waits
        try:
            rang = self.backend.wait_for_ring(partitions, self.config.idle_wait)
            if rang not in (None, UNNAMED_RING):
                self._claim_named(rang)
                self._poll_ms = 0  # lone tasks come by doorbell: back to it soon
            else:
                self._poll_ms = POLL_MS  # a batch, or a task from a client that rings not
        except BackendUnavailable as exc:
            logger.warning("Worker %s: cannot wait on Redis (%s)", self.name, exc)
            self._stopping.wait(self.config.idle_wait)

    def _claim_named(self, task_id: str) -> None:
        """Claim and start a lone task a doorbell named, straight from its Redis record.

        Its Kafka message is on the topic too; when this worker (or another)
        reaches it, the claim finds the task taken and skips it.
        """
        with self._lock:
            message, claim = self.backend.claim_named(task_id, self.name, sorted(self._served),
                                                      now=self.clock())
            if message is None or claim.attempt is None:
                return
            self._hold(message, claim.attempt)
        self._start(message, claim.attempt)

    def _pause(self) -> None:
        if not self._paused:
            self.consumer.pause(*self.consumer.assignment())
            self._paused = True

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            # Not just what was paused then: kafka-python keeps a kept partition paused
            # across a rebalance.
            self.consumer.resume(*self.consumer.paused())

    def _steal(self, free: int) -> bool:
        """Claim and start tasks waiting in other workers' partitions; True if any.

        One claim goes through the candidates in order and takes the first ``free``
        still queued (others may have been stolen already). After a look that
        found nothing the next one waits longer, up to 5 s, so an idle worker
        mostly sleeps on its doorbells and answers a lone task at once.
        """
        if self._stealer is None or not self._partitions:
            return False  # joining the group comes first
        if time.monotonic() < self._next_steal_at:
            return False
        try:
            records = self._stealer.take(set(self._partitions), self._topic_partitions)
        except BackendUnavailable as exc:  # counts as a look that found nothing: backs off
            logger.warning("Worker %s: cannot look for tasks to steal: %s", self.name, exc)
            records = []
        # Owners dead-letter the bad ones, and hand on the tasks this worker does not serve.
        candidates = [m for m in map(self._decode, records)
                      if not isinstance(m, ProtocolError) and m.route in self._served]
        started = 0
        if candidates:
            started = self._start_claimed(candidates,
                                          self._claim(candidates, limit=free) or [])
        if started:
            logger.debug("Worker %s: stole %d task(s) from other partitions", self.name,
                         started)
            self._steal_backoff = 0.0
        else:
            self._steal_backoff = min(max(2 * self._steal_backoff, STEAL_BACKOFF_MIN),
                                      STEAL_BACKOFF_MAX)
            self._next_steal_at = time.monotonic() + self._steal_backoff
        return started > 0

    def _poll(self, timeout_ms: int) -> bool:
        """Poll Kafka into the read-ahead buffer; True if records came."""
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=READ_AHEAD)
        except KafkaError as exc:  # a failed rebalance or fetch: the next poll retries it
            logger.warning("Worker %s: polling Kafka failed (%s); retrying", self.name, exc)
            self._stopping.wait(POLL_RETRY_SECONDS)
            return False
        self._polled_at = time.monotonic()
        if self._assignment_news:
            self._report_assignment()
        for partition, records in polled.items():
            self._buffer.add(partition, [(r, self._decode(r)) for r in records])
        return bool(polled)

    def _take(self, free: int) -> None:
        """Claim up to ``free`` buffered messages and start what was claimed.

        The ones that are not task messages go to the dead-letter topic.
        """
        taken = self._buffer.take(free)
        offsets = {record.partition: record.offset + 1 for record, _ in taken}
        messages = []
        for record, decoded in taken:
            if isinstance(decoded, ProtocolError):
                self._dead_letter(str(decoded), record=record)
            else:
                messages.append(decoded)
        routed = self._hand_on_unserved(messages)
        claims = None if routed is None else self._claim(routed, offsets)
        if claims is None:
            return  # stopping while Redis is down: nothing committed, so nothing is lost
        messages = routed
        if self._start_claimed(messages, claims):
            self._poll_ms = POLL_MS  # busy: the next poll waits for more
            self._next_steal_at = self._steal_backoff = 0.0  # and steal at once when idle
        else:
            self._poll_ms = 0  # only copies of tasks taken by doorbell or stolen
        topic = self.config.tasks_topic
        self._claimed_through.update(
            (TopicPartition(topic, partition), offset) for partition, offset in offsets.items())
        self._commit_due = True

    def _hand_on_unserved(
        self, messages: list[protocol.TaskMessage]
    ) -> list[protocol.TaskMessage] | None:
        """Hand tasks this worker does not serve to live workers that do; returns the rest.

        Kafka deals partitions without regard to a worker's task modules. A task
        that another live worker serves is produced again, unclaimed, to one of
        that worker's partitions (flushed before its offset here can be committed,
        so it is never lost; its claim still happens once, wherever it lands). A
        task no live worker serves is kept: claimed, it fails at once with
        UnknownTask naming what the queue serves. None: stopping while Redis is down.
        """
        unserved = [m for m in messages if m.route not in self._served]
        if not unserved:
            return messages
        routes = self._current_routes()
        if routes is None:
            return None
        handed_on = set()
        to_joining = False
        for message in unserved:
            if not routes.serves(message.route):
                continue
            partitions = routes.partitions_for(message.route)
            to_joining |= not partitions
            self._produce(message, partition=random.choice(partitions) if partitions else None)
            handed_on.add(message.id)
            logger.debug("Worker %s: handed task %s (%s) on to partition(s) %s", self.name,
                         message.id, message.task, partitions or "any")
        if handed_on:
            self.producer.flush()
        if to_joining:  # its workers are joining the group: such a task may come back at once
            self._stopping.wait(JOINING_PEER_WAIT)
        return [m for m in messages if m.id not in handed_on]

    def _current_routes(self) -> Routes | None:
        """The queue's other live workers, read from Redis at most every ROUTES_MAX_AGE."""
        if self._routes is None or time.monotonic() - self._routes_read_at > ROUTES_MAX_AGE:
            records = self._retry_redis(self.backend.workers, "read the queue's workers")
            if records is GAVE_UP:
                return None
            self._routes = Routes(records, self.clock(), exclude=self.name)
            self._routes_read_at = time.monotonic()
        return self._routes

    def _decode(self, record: Any) -> protocol.TaskMessage | ProtocolError:
        """The record's task message, or why it is not one."""
        try:
            return protocol.decode(record.value, self.config.max_message_bytes,
                                   self.config.secret)
        except ProtocolError as exc:
            return exc

    def _start_claimed(self, messages: list[protocol.TaskMessage], claims: list[Claim]) -> int:
        """Start every message this worker claimed; returns how many."""
        started = 0
        for message, claim in zip(messages, claims, strict=True):
            if claim.claimed:
                self._start(message, claim.attempt)
                started += 1
            else:
                logger.debug("Worker %s: skipped task %s: %s", self.name, message.id,
                             claim.skipped_because)
        return started

    def _claim(
        self,
        messages: list[protocol.TaskMessage],
        offsets: dict[int, int] | None = None,
        limit: int | None = None,
    ) -> list[Claim] | None:
        if not messages and not offsets:
            return []
        # Not under the lock: while Redis is away, the heartbeat and the slots go on.
        claims = self._retry_redis(
            lambda: self.backend.claim_many(messages, self.name, now=self.clock(),
                                            offsets=offsets, limit=limit),
            "claim tasks",
        )
        if claims is GAVE_UP:
            return None
        with self._lock:
            for message, claim in zip(messages, claims, strict=True):
                if claim.attempt is not None:
                    self._hold(message, claim.attempt)
        return claims

    def _hold(self, message: protocol.TaskMessage, attempt: int) -> None:
        """Count a claimed task as this worker's (call with the lock held)."""
        self._running[message.id] = _Running(message, attempt)
        self._executing += 1

    def _retry_redis(
        self, step: Callable[[], T], what: str, within: float | None = None
    ) -> T | _GaveUp:
        """Run ``step``, retrying with backoff while Redis is unreachable.

        Gives up (returning ``GAVE_UP``) after ``within`` seconds, or, with no
        limit, once the worker is stopping.
        """
        deadline = None if within is None else time.monotonic() + within
        delay = 0.1
        while True:
            try:
                return step()
            except BackendUnavailable as exc:
                out_of_time = deadline is not None and time.monotonic() > deadline
                if out_of_time or (deadline is None and self._stopping.is_set()):
                    logger.error("Worker %s: could not %s: %s", self.name, what, exc)
                    return GAVE_UP
                logger.warning("Worker %s: Redis unreachable, cannot %s (%s); retrying in "
                               "%.1f s", self.name, what, exc, delay)
                if deadline is None:
                    self._stopping.wait(delay)  # wakes at once when the worker stops
                else:
                    time.sleep(delay)  # an outcome is worth waiting for, even when stopping
                delay = min(delay * 2, REDIS_RETRY_MAX_DELAY)

    def _commit(self, now: bool = False) -> None:
        """Commit the offsets of what was claimed, at most every ``COMMIT_INTERVAL``.

        Only claimed records count, not buffered ones: a worker that dies with
        messages in its buffer leaves them to the partition's next owner.
        """
        if not self._commit_due or not self._claimed_through:
            return
        if not now and time.monotonic() - self._last_commit < COMMIT_INTERVAL:
            return
        owned = set(self._partitions)
        offsets = {tp: OffsetAndMetadata(offset, "", -1)
                   for tp, offset in self._claimed_through.items() if tp.partition in owned}
        if not offsets:
            return
        self._commit_due = False
        self._last_commit = time.monotonic()
        try:
            if now:
                self.consumer.commit(offsets)
            else:
                self.consumer.commit_async(offsets, callback=self._on_commit)
        except (CommitFailedError, KafkaError) as exc:
            self._on_commit(None, exc)

    def _on_commit(self, _offsets: Any, result: Any) -> None:
        if isinstance(result, Exception):
            # A redelivered copy of a claimed task will be skipped.
            logger.warning("Worker %s: offset commit failed (%s); claims still hold",
                           self.name, result)

    def _start(self, message: protocol.TaskMessage, attempt: int) -> None:
        refusal = self._refusal(message)
        if refusal is not None:
            self._ended(message, Outcome(message.id, message.batch, attempt, TaskStatus.FAILED,
                                         error_type=type(refusal).__name__, error=str(refusal)))
            return
        running = self._running[message.id]
        running.future = self.executor.submit(self._execute, message, attempt)

    def _refusal(self, message: protocol.TaskMessage) -> Exception | None:
        """Why this worker will not run a task it claimed (no live worker of the queue
        serves it, or it does not trust code), or None."""
        if message.needs_trust and not self.trust_code:
            what = "a function shipped by value" if message.code else "called with pickled " \
                "arguments"
            return UntrustedCode(
                f"this worker ({self.name}) does not trust shipped code, and task "
                f"{message.task!r} is {what}; start workers with "
                "--trust-code (YADTQ_TRUST_CODE=1) and the client's YADTQ_SECRET, or register "
                "the function with @yadtq.task in the workers' task modules")
        if message.route not in self._served:  # and no live worker of the queue serves it
            routes = self._routes
            served = sorted(set(self.task_names) | set(routes.served if routes else ()))
            return UnknownTask(message.task, served, queue=self.config.queue)
        return None

    def _shipped(self, message: protocol.TaskMessage) -> execution.Shipped | None:
        """A trusted task's function and arguments as checked pickles (None: a plain task).

        Raises:
            UntrustedCode: a pickle is gone from Redis, or does not match its digest.
            RuntimeError: the client's Python version is not this worker's.
        """
        if not message.needs_trust:
            return None
        assert self.config.secret is not None  # a worker that trusts code has one
        expected = values.pickles_signature(self.config.secret, message.id, message.code,
                                            message.pickled)
        if not hmac.compare_digest(message.pickles_sig or "", expected):
            raise UntrustedCode(f"the pickles of task {message.id} are not signed with this "
                                "worker's secret; nothing was loaded")
        code = None
        if message.code is not None:
            if message.python != values.PYTHON:
                raise PythonVersionMismatch(
                    f"task {message.task!r} was pickled by Python {message.python} on the "
                    f"client, and this worker runs Python {values.PYTHON}; run both on the "
                    "same Python version")
            code = self._code_cache.get(message.code.sha256)
            if code is None:
                if len(self._code_cache) >= execution.LOADED_CODE_LIMIT:
                    self._code_cache.clear()
                code = self._code_cache[message.code.sha256] = self._pickle(message.code)
        arguments = self._pickle(message.pickled) if message.pickled else None
        return execution.Shipped(message.code.sha256 if message.code else None, code, arguments)

    def _pickle(self, ref: values.Ref) -> bytes:
        """The bytes ``ref`` names, inline or from Redis, checked against its digest."""
        if ref.inline:
            return ref.inline_bytes()
        data = self.backend.blob(ref.sha256)
        if data is None:
            raise UntrustedCode(f"pickled data {ref.sha256[:12]}… is no longer in Redis (it "
                                f"lives result_ttl={self.config.result_ttl:g} s); submit again")
        return ref.checked(data)

    def _execute(self, message: protocol.TaskMessage, attempt: int) -> None:
        try:
            shipped = self._shipped(message)
        except (UntrustedCode, PythonVersionMismatch, BackendUnavailable) as exc:
            self._ended(message, Outcome(message.id, message.batch, attempt, TaskStatus.FAILED,
                                         error_type=type(exc).__name__, error=str(exc),
                                         retryable=isinstance(exc, BackendUnavailable)))
            return
        runner = self._runners.get()
        with self._lock:
            running = self._running.get(message.id)
            if running is not None:
                running.runner = runner
        try:
            result = runner.run(message.task, message.args, dict(message.kwargs),
                                message.retry_on,
                                _option(message, "timeout", self.config.default_timeout),
                                shipped)
        finally:
            self._runners.put(runner)
        self._ended(message, self._outcome(message, attempt, result))

    def _ended(self, message: protocol.TaskMessage, report: Outcome) -> None:
        """Free the slot, then store the outcome with any others that ended meanwhile.

        The outcome keeps when its slot was freed as the task's finish time: storing
        it may wait for another thread's round trip, while the slot runs the next task.
        """
        report = replace(report, ended_at=self.clock())
        with self._lock:
            self._executing -= 1
        self._outcomes.put((message, report))
        self._slot_freed.set()
        self._store_ended()

    def _store_ended(self) -> None:
        """Store every queued outcome in one round trip, unless another thread is at it.

        The thread that holds ``_storing`` takes all that is queued; after letting
        go it looks again, so an outcome queued meanwhile is never left behind and
        no thread waits for another's round trip.
        """
        while not self._outcomes.empty() and self._storing.acquire(blocking=False):
            try:
                ended = []
                while not self._outcomes.empty():
                    ended.append(self._outcomes.get())
                self._store_outcomes(ended)
            except Exception:  # noqa: BLE001 - one failure must not stop later outcomes
                logger.exception("Worker %s: storing outcomes failed; their leases will "
                                 "expire and they will run again", self.name)
            finally:
                self._storing.release()

    def _outcome(
        self, message: protocol.TaskMessage, attempt: int, result: execution.Attempt
    ) -> Outcome:
        if result.ok and result.pickled:
            return self._pickled_outcome(message, attempt, result.value, result.value_type)
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
        max_retries = self._max_retries(message)
        if result.retryable and attempt <= max_retries:
            retry_at = self.clock() + self._backoff(message, attempt)
        return Outcome(message.id, message.batch, attempt, TaskStatus.FAILED,
                       error_type=result.error_type, error=result.error,
                       traceback=result.traceback, retry_at=retry_at,
                       retryable=result.retryable)

    def _pickled_outcome(self, message: protocol.TaskMessage, attempt: int,
                         pickled: bytes, type_name: str) -> Outcome:
        """A trusted task's result: signed, inline when small, else a blob stored first."""
        if len(pickled) > self.config.max_payload_bytes:
            return Outcome(message.id, message.batch, attempt, TaskStatus.FAILED,
                           error_type="PayloadTooLarge",
                           error=f"task {message.task!r} returned {len(pickled)} bytes pickled, "
                           f"over max_payload_bytes={self.config.max_payload_bytes}; return less "
                           "(or a reference to it), or raise YADTQ_MAX_PAYLOAD_BYTES")
        ref = values.Ref.of(pickled, self.config.inline_bytes, type_name)
        if not ref.inline:
            stored = self._retry_redis(lambda: self.backend.put_blobs({ref.sha256: pickled}),
                                       "store a result", within=FINISH_RETRY_SECONDS)
            if stored is GAVE_UP:
                return Outcome(message.id, message.batch, attempt, TaskStatus.FAILED,
                               error_type="BackendUnavailable", retryable=True,
                               error="could not store the task's result in Redis")
        assert self.config.secret is not None  # a worker that trusts code has one
        stored = values.stored_result(replace(
            ref, sig=values.result_signature(self.config.secret, message.id, ref.sha256)))
        return Outcome(message.id, message.batch, attempt, TaskStatus.SUCCESS,
                       result=stored, result_json=json.dumps(stored))

    def _max_retries(self, message: protocol.TaskMessage) -> int:
        return _option(message, "max_retries", 0)

    def _backoff(self, message: protocol.TaskMessage, attempt: int) -> float:
        """Exponential backoff with full jitter around the base: base * 2^(n-1) * [0.5, 1.5)."""
        base = _option(message, "retry_backoff", self.config.retry_backoff)
        return min(base * 2 ** (attempt - 1) * random.uniform(0.5, 1.5), MAX_BACKOFF_SECONDS)

    def _store_outcomes(self, ended: list[tuple[protocol.TaskMessage, Outcome]]) -> None:
        """Store outcomes, retrying for a while if Redis is unreachable, then account for them."""
        refusals = self._retry_redis(
            lambda: self.backend.finish_many([report for _, report in ended], self.name,
                                             now=self.clock()),
            f"store {len(ended)} outcome(s) (their leases will expire and they will run again)",
            within=FINISH_RETRY_SECONDS,
        )
        if refusals is GAVE_UP:
            refusals = ["Redis unreachable"] * len(ended)
        for (message, report), refused in zip(ended, refusals, strict=True):
            self._finished(message, report, refused)

    def _finished(self, message: protocol.TaskMessage, report: Outcome, refused: str | None
                  ) -> None:
        with self._lock:
            self._running.pop(message.id, None)
            if report.status is TaskStatus.SUCCESS:
                self.processed += 1
            else:
                self.failed += 1
        if refused:
            logger.warning("Worker %s: outcome of task %s attempt %d refused: %s",
                           self.name, message.id, report.attempt, refused)
        elif report.retry_at is not None:
            logger.info("Worker %s: task %s attempt %d failed (%s); retry in %.1f s",
                        self.name, message.id, report.attempt, report.error_type,
                        report.retry_at - self.clock())
        elif report.retryable and 0 < self._max_retries(message) < report.attempt:
            self._dead_letter(f"retries exhausted after attempt {report.attempt}: "
                              f"{report.error_type}: {report.error}", message=message)

    def _dead_letter(
        self, reason: str, *, record: Any = None, message: protocol.TaskMessage | None = None
    ) -> None:
        """Send a message no worker can accept to the dead-letter topic, with the reason."""
        letter: dict[str, Any] = {"reason": reason, "worker": self.name, "at": self.clock()}
        key = None
        if record is not None:
            raw = record.value or b""
            letter |= {"topic": record.topic, "partition": record.partition,
                       "offset": record.offset,
                       "value": raw.decode("utf-8", errors="replace")[:10_000]}
            key = record.key
            where = f"{record.topic}[{record.partition}]@{record.offset}"
        else:
            assert message is not None
            letter |= {"task_id": message.id, "value": json.dumps(message.to_dict())[:10_000]}
            key = message.id.encode()
            where = f"task {message.id}"
        logger.warning("Worker %s: dead-lettered %s: %s", self.name, where, reason)
        self.producer.send(self.config.dead_letter_topic, json.dumps(letter).encode(), key=key)

    def _produce(self, message: protocol.TaskMessage, to_own_partition: bool = False,
                 partition: int | None = None) -> None:
        """Produce a task again, to ``partition`` if given; ``to_own_partition`` keeps it
        away from a dead worker's."""
        if partition is None and to_own_partition and self._partitions:
            partition = random.choice(self._partitions)
        self.producer.send(
            self.config.tasks_topic,
            protocol.encode(message, self.config.max_message_bytes, self.config.secret),
            key=message.id.encode(), partition=partition,
        )

    # --- group membership --------------------------------------------------

    # kafka-python calls these two from its network thread, in the middle of a poll:
    # they only note the new assignment. The read-ahead buffer is kept: a message in it
    # from a partition now someone else's is still claimed at most once, and kafka-python
    # keeps its position in a partition this worker keeps, so dropping it would skip it.

    def _on_assign(self, assigned: set[Any]) -> None:
        self._partitions = sorted(tp.partition for tp in assigned)
        self._assignment_news = True  # reported by _poll: no blocking call may run here

    def _report_assignment(self) -> None:
        """Log a new assignment and learn the topic's partition count (after the poll)."""
        self._assignment_news = False
        total = broker.partition_count(self.consumer, self.config.tasks_topic)
        self._topic_partitions = total
        if not total:
            logger.info("Worker %s: %s has no partitions in this worker's metadata yet; the "
                        "group rebalances once it has", self.name, self.config.tasks_topic)
        elif not self._partitions:
            logger.warning(
                "Worker %s: got no partitions of %s: the group has more members than its %d "
                "partitions, so this worker idles; create the topic with more partitions",
                self.name, self.config.tasks_topic, total,
            )
        else:
            logger.info("Worker %s: assigned partitions %s of %d", self.name,
                        self._partitions, total)
        self._heartbeat_now.set()

    def _on_revoke(self, revoked: set[Any]) -> None:
        self._partitions = []

    # --- heartbeat, leases, cancellations, retries and the reaper ----------

    def _heartbeat_loop(self) -> None:
        """Beat, send due retries and reap every interval; Redis being away skips a round.

        The interval is the backoff: leases need renewing the moment Redis is back.
        One warning when Redis goes away and one line when it is back, not one a beat.
        """
        unavailable_since: float | None = None
        while True:
            now = self.clock()
            for step in (self._beat, self.send_due_retries, self.reap):
                try:
                    step(now)
                except BackendUnavailable as exc:
                    if unavailable_since is None:
                        unavailable_since = time.monotonic()
                        logger.warning("Worker %s: Redis unreachable, %s skipped; trying again "
                                       "every %.1f s: %s",
                                       self.name, step.__name__.strip("_"),
                                       self.config.heartbeat_interval, exc)
                    break
                except Exception:  # noqa: BLE001 - the heartbeat must outlive any one failure
                    logger.exception("Worker %s: %s failed", self.name, step.__name__)
            else:
                if unavailable_since is not None:
                    logger.info("Worker %s: Redis is back after %.1f s; heartbeats resumed",
                                self.name, time.monotonic() - unavailable_since)
                    unavailable_since = None
            if self._heartbeat_now.wait(self.config.heartbeat_interval):
                self._heartbeat_now.clear()
            if self._stopping.is_set() and not self._running:
                return

    def _beat(self, now: float) -> None:
        """Heartbeat, then stop what was cancelled (the heartbeat's reply names it)."""
        self._stop_cancelled(self._heartbeat(now))

    def _heartbeat(self, now: float, status: str | None = None) -> list[str]:
        """Record this worker in Redis and renew its leases; returns cancelled task ids."""
        if status is None:
            status = "stopping" if self._stopping.is_set() else "running"
        with self._lock:
            leased = list(self._running)
            info = {
                "name": self.name,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": self.started_at,
                "concurrency": self.concurrency,
                "mode": self.mode,
                "in_flight": len(self._running),
                "processed": self.processed,
                "failed": self.failed,
                "tasks": ",".join(self.task_names),
                "partitions": ",".join(map(str, self._partitions)),
                "topic_partitions": self._topic_partitions,
                "heartbeat_interval": self.config.heartbeat_interval,
                "settings": json.dumps(self.config.shared_settings(), sort_keys=True),
                "trusts_code": "1" if self.trust_code else "0",
                "status": status,
            }
        return self.backend.heartbeat(self.name, info, leased, now)

    def _stop_cancelled(self, task_ids: list[str]) -> None:
        """Stop running tasks that were cancelled (process mode kills their child)."""
        for task_id in task_ids:
            with self._lock:
                task = self._running.get(task_id)
            if task is None or task.runner is None:
                continue
            stopped = task.runner.stop()
            logger.info("Worker %s: task %s was cancelled; %s", self.name, task_id,
                        "stopped it" if stopped else "its result will be discarded")

    def send_due_retries(self, now: float) -> int:
        """Produce again the tasks whose retry backoff is over; returns how many."""
        taken = self.backend.take_due_retries(now)
        sent = 0
        for task_id in taken:
            message = self.backend.retry_message(task_id)
            if message is not None:
                self._produce(message, to_own_partition=True)
                sent += 1
        if taken:
            self.producer.flush()
            self.backend.retries_sent(taken)
        return sent

    def reap(self, now: float) -> int:
        """Re-queue tasks whose lease expired before ``now``; returns how many.

        Safe in every worker at once: each step is a compare-and-set in Redis.
        One task's failure is logged and skipped, never stops the sweep.
        """
        reaped = 0
        for task_id, batch in self.backend.expired_leases(now):
            try:
                message = self.backend.requeue(task_id, batch, worker_id=self.name, now=now)
                if message is None:
                    continue
                # The dead worker's partitions wait for a rebalance; ours are served now.
                self._produce(message, to_own_partition=True)
                reaped += 1
                logger.warning("Worker %s: lease of task %s expired; queued again as attempt %d",
                               self.name, task_id, message.attempt)
            except Exception:  # noqa: BLE001
                logger.exception("Worker %s: could not reap task %s", self.name, task_id)
        if reaped:
            self.producer.flush()
        return reaped

    # --- shutdown ----------------------------------------------------------

    def _shutdown(self) -> None:
        logger.info("Worker %s: stopping (%s); %d task(s) in flight", self.name,
                    self._stop_reason, len(self._running))
        with self._lock:
            futures = [r.future for r in self._running.values() if r.future is not None]
        wait_futures(futures, timeout=self.shutdown_grace)
        self._store_ended()  # what a slot left for a storer that had just let go
        self._commit(now=True)
        self._hand_back()
        self.executor.shutdown(wait=False, cancel_futures=True)
        try:
            self.consumer.close()
        except KafkaError as exc:
            logger.warning("Worker %s: leaving the group failed: %s", self.name, exc)
        self._stopping.set()
        self._heartbeat_now.set()
        self._heartbeat_thread.join(timeout=5)
        try:
            self._heartbeat(self.clock(), status="stopped")
        except BackendUnavailable as exc:
            logger.warning("Worker %s: could not record the stop: %s", self.name, exc)
        self.producer.flush()
        self.producer.close()
        if self._stealer is not None:
            self._stealer.close()
        self.backend.close()
        while not self._runners.empty():
            self._runners.get().close()
        logger.info("Worker %s: stopped (%s); processed %d, failed %d", self.name,
                    self._stop_reason, self.processed, self.failed)

    def _hand_back(self) -> None:
        """Give unfinished tasks back to the queue so other workers run them now."""
        with self._lock:
            unfinished = list(self._running.values())
        for running in unfinished:
            try:
                message = self.backend.requeue(running.message.id, running.message.batch,
                                               worker_id=self.name, handback=True,
                                               now=self.clock())
            except BackendUnavailable as exc:
                logger.error("Worker %s: could not hand back task %s (%s); its lease will "
                             "expire and another worker will run it", self.name,
                             running.message.id, exc)
                continue
            if message is not None:
                self._produce(message)
                logger.info("Worker %s: handed back task %s as attempt %d", self.name,
                            message.id, message.attempt)
