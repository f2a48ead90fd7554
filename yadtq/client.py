"""The client (core layer): a facade that submits tasks and hands back futures.

Each method delegates to one of ``protocol`` (build the message), ``backend``
(write the ``queued`` record first, read state), ``broker`` (produce: the
Kafka adapter's :class:`~yadtq.broker.TaskProducer`) and
``events``/``futures``/``batch`` (resolve handles from change events). Handles
get a ``store.RedisTaskStore``, not the client, to read and cancel their tasks.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from yadtq import dependencies, protocol, tracing
from yadtq.acceptance import Acceptance
from yadtq.backend import PIPELINE_CHUNK, RedisBackend
from yadtq.backend.queue_stats import QueueStats
from yadtq.backend.scripts import EnqueueReply
from yadtq.batch import TaskBatch
from yadtq.broker import TaskProducer, create_topics
from yadtq.call_options import call_options, split_item
from yadtq.config import Config
from yadtq.due import due_spec
from yadtq.errors import (
    BrokerUnavailable,
    ClientClosed,
    MessageTooLarge,
    TaskNotFound,
    UnknownDependency,
    YadtqError,
)
from yadtq.events import EventListener
from yadtq.futures import TaskFuture
from yadtq.priority import Priority
from yadtq.schedules import ScheduleMethods
from yadtq.shipping import Shipment
from yadtq.status import TaskStatus
from yadtq.store import RedisTaskStore
from yadtq.waking import WorkerWaking, map_chunks
from yadtq.worker_table import WorkerViews
from yadtq.workflow import WorkflowMethods, joining

TaskRef = Callable[..., Any] | str

logger = logging.getLogger(__name__)


class Client(WorkerViews, WorkflowMethods, ScheduleMethods, WorkerWaking):
    """A connection to one queue: submit tasks, look them up, list workers."""

    def __init__(self, config: Config, *, on_close: Callable[[], None] | None = None) -> None:
        self.config = config
        self.backend = RedisBackend(config)
        self.backend.check_connection()
        create_topics(config)
        self._producer = TaskProducer(config, linger_ms=1000, batch_size=1 << 20)  # maps
        self._lone_producer = TaskProducer(config)  # submits: each message sent at once
        self._events = EventListener(self.backend)
        self._store = RedisTaskStore(self.backend, self.get_workflow)
        self._acceptance = Acceptance(config, self.backend.workers)
        self._warned: set[tuple[str, tuple[str, ...]]] = set()  # (worker, settings) told of
        self._on_close = on_close
        self._closed = False

    # --- submitting --------------------------------------------------------

    def submit(self, task: TaskRef, /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Submit ``task(*args, **kwargs)``; returns its future at once.

        ``task`` is a registered task (or its name), sent by name; any other
        function is shipped by value to workers that trust code, which needs the
        shared secret, as do arguments that are not JSON (``yadtq.shipping``).

        Raises:
            TypeError: an argument is not JSON-serialisable and there is no secret
                to pickle it with (nothing is sent).
            UntrustedCode: ``task`` is not registered and there is no secret.
            MessageTooLarge: the message is over ``max_message_bytes``, or pickled
                arguments over ``max_payload_bytes``.
            SecretMismatch: the queue has live workers, and none would run a task
                signed (or not) as this client signs it (nothing is sent).
        """
        return self.submit_with(task, args, kwargs)

    def submit_with(
        self,
        task: TaskRef,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_on: Sequence[type[BaseException] | str] = (),
        retry_backoff: float | None = None,
        countdown: float | None = None,
        eta: datetime.datetime | None = None,
        depends_on: Iterable[Any] = (),
        priority: Priority | str | None = None,
    ) -> TaskFuture:
        """Submit with per-call options that override the task's declared defaults.

        Futures and batches in the arguments (in lists, tuples and dicts too) are its
        parents: it waits ``blocked`` until they finish, and runs with their results.

        Args:
            timeout: seconds the task may run before it is stopped and fails
                with ``TaskTimeout``.
            max_retries: how many times a failed task runs again.
            retry_on: exception types (or their names) worth retrying; all when empty.
            retry_backoff: base seconds between attempts, doubled each time, with jitter.
            countdown: run it this many seconds from now (on Redis's clock), not at once.
            eta: run it at this timezone-aware datetime. Until then the task is
                ``scheduled``: in Redis only, not on Kafka, and it can be cancelled.
            depends_on: futures and batches (or ``yadtq.allow_failure`` of them) it waits
                for without taking their results.
            priority: "high", "normal" or "low" (default: the task's declared one, else
                normal). Workers start higher levels first; see docs/priorities.md.

        Raises:
            TypeError: an argument is not JSON-serialisable (nothing is sent).
            ValueError: ``countdown`` or ``eta`` is not a valid due time, or is given
                with parents; ``priority`` is not a level.
            UnknownDependency: a parent is not in Redis (nothing is sent).
            ClientClosed: the client was closed (nothing is sent).
        """
        self._check_open()
        due = due_spec(countdown, eta)
        found = dependencies.find(args, kwargs, depends_on)
        _no_due_with_parents(due, found)
        workflow = joining(found.workflow)
        shipment = Shipment(task, self.config)
        options = call_options(shipment.name, timeout, max_retries, retry_on, retry_backoff,
                               priority)
        with tracing.producing("submit", shipment.name,
                               options["priority"].topic(self.config.tasks_topic)) as trace:
            message = shipment.message(found.args, found.kwargs, inputs=found.inputs,
                                       trace=trace, **options)
            self._acceptance.check(message.needs_trust)
            payload = protocol.encode(message, self.config.max_message_bytes, self.config.secret)
            future = self._future(message, args, kwargs or {}, scheduled=bool(due),
                                  workflow=workflow)
            self._events.start()
            self._events.watch([future])
            if shipment.blobs:
                self.backend.put_blobs(shipment.blobs)
            if due:  # a worker produces it when it is due
                future.due_at = self.backend.enqueue([message], due=due, workflow=workflow).due_at
                return future
            if found.parents:  # blocked until its parents finish: their workers produce it
                started = self.backend.enqueue([message], edges=[found.spec], workflow=workflow)
                if self._waits(started, [future]):
                    return future
            # A worker claims the task from its record as soon as the doorbell rings; until
            # then, or for a moment, its message waits (``waking``). Submit returns once
            # either is done: a claimed task is safe in Redis (should its worker die, the
            # reaper produces it again).
            taken = threading.Event()
            future.add_change_callback(lambda _: taken.set())
            partition = self._lone_producer.next_partition()
            if not found.parents:
                unsent = self._awaits_claims()
                self.backend.enqueue([message], ring=partition, workflow=workflow,
                                     unsent=unsent)
                if unsent and self._claimed_unsent(message.id, taken):
                    return future
            try:
                self._lone_producer.send_until(message.id, payload, partition, taken,
                                               message.priority, message.trace)
                self.backend.level_news.announce([message.priority])
            except BrokerUnavailable as exc:
                error = self._failed_undelivered(exc, [message])
                if error is not None:
                    raise error from None
            return future

    def map(
        self,
        task: TaskRef,
        items: Iterable[Any],
        /,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_on: Sequence[type[BaseException] | str] = (),
        retry_backoff: float | None = None,
        countdown: float | None = None,
        eta: datetime.datetime | None = None,
        depends_on: Iterable[Any] = (),
        priority: Priority | str | None = None,
    ) -> TaskBatch:
        """Submit one task per item: a tuple is star-args, a dict is kwargs, else one argument.

        Every message is validated before anything is sent, so a bad item
        sends nothing. The options apply to every task (see :meth:`submit_with`);
        with ``countdown`` or ``eta`` all of them are due at the same moment. Futures in
        an item are that task's parents; ``depends_on`` are every task's.

        Raises:
            TypeError: an item's argument is not JSON-serialisable; names the item.
            ValueError: ``countdown`` or ``eta`` is not a valid due time (or has parents).
            UnknownDependency: a parent is not in Redis (nothing is sent).
            SecretMismatch: as for :meth:`submit` (nothing is sent).
            ClientClosed: the client was closed (nothing is sent).
        """
        self._check_open()
        due = due_spec(countdown, eta)
        shipment = Shipment(task, self.config)
        batch_id = protocol.new_batch_id()
        options = call_options(shipment.name, timeout, max_retries, retry_on, retry_backoff,
                               priority)
        topic = options["priority"].topic(self.config.tasks_topic)
        with tracing.producing("map", shipment.name, topic, batch_id) as trace:
            depends_on = list(depends_on)
            messages, payloads, calls, edges = [], [], [], []
            workflow, parents = None, []
            for index, item in enumerate(items):
                args, kwargs = split_item(item)
                found = dependencies.find(args, kwargs, depends_on)
                _no_due_with_parents(due, found)
                workflow = workflow or found.workflow
                parents.extend(found.parents)
                try:
                    message = shipment.message(found.args, found.kwargs, batch=batch_id,
                                               index=index, inputs=found.inputs, trace=trace,
                                               **options)
                except (TypeError, MessageTooLarge) as exc:
                    raise type(exc)(f"item {index} of map: {exc}") from None
                messages.append(message)
                calls.append((args, kwargs))
                edges.append(found.spec)
                payloads.append(protocol.encode(message, self.config.max_message_bytes,
                                                self.config.secret))
            self._acceptance.check(any(m.needs_trust for m in messages))
            workflow = joining(workflow)
            with_edges = edges if any(edges) else None
            if with_edges:  # a map is written chunk by chunk: refuse before the first one
                _refuse_unknown(self.backend.edges.unknown(parents))
            batch = TaskBatch(batch_id, shipment.name, [m.id for m in messages], self._store,
                              args=[args for args, _ in calls],
                              kwargs=[kwargs or None for _, kwargs in calls],
                              status=TaskStatus.SCHEDULED if due else TaskStatus.QUEUED,
                              workflow_id=workflow)
            self._events.start()
            self._events.watch_batch(batch)
            if shipment.blobs:  # the function and large arguments, before any message names them
                self.backend.put_blobs(shipment.blobs)
            if due:  # workers produce them when they are due
                for start in range(0, len(messages), PIPELINE_CHUNK):
                    chunk = messages[start:start + PIPELINE_CHUNK]
                    reply = self.backend.enqueue(
                        chunk, batch_id=batch_id, batch_total=len(messages) if start == 0 else None,
                        due=due, workflow=workflow)
                    batch._set_due([m.id for m in chunk], reply.due_at)
                return batch
            # Chunk by chunk, so Kafka sends one chunk while Redis stores the next. Workers
            # are rung once the small first is stored (they claim its tasks from their
            # records), then after chunks 2, 4, 8, ... to what Kafka has so far. Tasks that
            # began blocked (or skipped) are not sent: their parents' workers produce them.
            partitions: set[int] = set()
            written = 0
            try:
                for number, (start, end) in enumerate(map_chunks(len(messages)), 1):
                    chunk = messages[start:end]
                    started = self.backend.enqueue(
                        chunk, batch_id=batch_id, batch_total=len(messages) if start == 0 else None,
                        edges=with_edges[start:end] if with_edges else None, workflow=workflow)
                    written += len(chunk)
                    waiting = set(started.blocked) | set(started.skipped)
                    if waiting:
                        self._waits(started, [], batch)
                    send = [(m.id, p) for m, p in zip(chunk, payloads[start:start + len(chunk)],
                                                       strict=True) if m.id not in waiting]
                    if send:
                        if number == 1:  # its first tasks are claimed from their records
                            self._ring_early(self._producer.partitions_ahead(
                                len(messages) - len(waiting), messages[0].priority), batch_id,
                                messages[0].priority)
                        partitions |= self._producer.deal(
                            [i for i, _ in send], [p for _, p in send], messages[0].priority,
                            trace)
                    if partitions and (number > 1 and number & (number - 1) == 0
                                       or written == len(messages)):
                        self._flush(partitions)
            except BrokerUnavailable as exc:
                error = self._failed_undelivered(exc, messages[:written], batch_id,
                                                 unwritten=len(messages) - written)
                if error is not None:
                    raise error from None
            return batch

    def _future(self, message: protocol.TaskMessage, args: Sequence[Any],
                kwargs: dict[str, Any], scheduled: bool = False,
                workflow: str | None = None) -> TaskFuture:
        return TaskFuture(message.id, message.task, self._store, args=tuple(args),
                          kwargs=kwargs, batch=message.batch, index=message.index,
                          status=TaskStatus.SCHEDULED if scheduled else TaskStatus.QUEUED,
                          workflow_id=workflow)

    def _waits(self, started: EnqueueReply, futures: Sequence[TaskFuture],
               batch: TaskBatch | None = None) -> bool:
        """Move the handles of tasks that began blocked or skipped; True if none of
        ``futures`` is left for the caller to produce."""
        for task_id in started.blocked:
            if batch is not None:
                batch._set_progress(task_id, TaskStatus.BLOCKED, None, None, None)
        for future in futures:
            if future.id in started.blocked:
                future._set_progress(TaskStatus.BLOCKED, None, None)
        if started.skipped:
            self._events.sync([f for f in futures if f.id in started.skipped],
                              [batch] if batch is not None else [])
        waiting = set(started.blocked) | set(started.skipped)
        return all(future.id in waiting for future in futures)

    def _failed_undelivered(
        self,
        exc: BrokerUnavailable,
        written: list[protocol.TaskMessage],
        batch_id: str | None = None,
        unwritten: int = 0,
    ) -> BrokerUnavailable | None:
        """Fail the records a submit or map wrote for messages Kafka did not take.

        Left ``queued``, nothing would ever run them. Returns the error to raise,
        saying what became of them and what to do; None when workers had taken
        every task already (a lone task by its doorbell), so nothing was lost.
        """
        what = f"batch {batch_id}" if batch_id else f"task {written[0].id}"
        try:
            failed = self.backend.unrunnable.fail_undelivered(written, str(exc), batch_id,
                                                              unwritten)
        except YadtqError as also:
            fate = (f"and marking {what} failed in Redis failed too ({also}): its records "
                    "may stay 'queued'")
        else:
            if not failed and not unwritten:
                logger.warning("%s; workers had taken %s already, so it runs all the same",
                               exc, what)
                return None
            fate = f"{what} is marked failed in Redis"
        return BrokerUnavailable(f"{exc}; {fate}; check that Kafka is running and reachable, "
                                 "then submit again")

    def cancel(self, task_id: str, batch_id: str | None = None) -> bool:
        """Cancel a task that has not finished; returns False if it already had.

        ``batch_id`` saves reading the record when the caller knows the task's batch.
        """
        if batch_id is None:
            batch_id = self.task_record(task_id).get("batch") or None
        return self._store.cancel(task_id, batch_id)

    # --- looking up --------------------------------------------------------

    def task_record(self, task_id: str) -> dict[str, Any]:
        """The task's record from Redis, decoded.

        Raises:
            TaskNotFound: Redis holds no record for ``task_id``.
        """
        return self._store.task_record(task_id)

    def history(self, task_id: str) -> list[dict[str, Any]]:
        """Every attempt's events (claimed, success, failed, lease expired, refused, ...).

        A task whose record expired still shows the events kept of it; one never
        claimed has none.

        Raises:
            TaskNotFound: Redis holds neither events nor a record for ``task_id``.
        """
        events = self.backend.task_history(task_id)
        if not events:
            self.task_record(task_id)  # raises for an id Redis never knew
        return events

    def status(self, task_id: str) -> TaskStatus:
        """The task's current status in Redis.

        Raises:
            TaskNotFound: Redis holds no record for ``task_id``.
        """
        return TaskStatus(self.task_record(task_id)["status"])

    def stats(self) -> QueueStats:
        """The queue's counters: tasks submitted, in each status, outcomes per task name,
        retries, requeued, dead-lettered; exact and never reset (one Redis read)."""
        return self.backend.queue_stats()

    def get(self, task_id: str) -> TaskFuture:
        """A future re-attached to an existing task by id.

        Raises:
            TaskNotFound: Redis holds no record for ``task_id``.
        """
        return self._attach(task_id, self.task_record(task_id))

    def get_batch(self, batch_id: str) -> TaskBatch:
        """A batch re-attached by id, e.g. after a kernel restart.

        Raises:
            TaskNotFound: Redis holds no tasks for ``batch_id``.
        """
        ids = self.backend.batch_task_ids(batch_id)
        if not ids:
            raise TaskNotFound(f"no batch {batch_id!r} in Redis (or it has expired)")
        records = self.backend.task_records(ids)
        known = [r or {} for r in records]
        batch = TaskBatch(batch_id, next((r["task"] for r in known if r.get("task")), "?"),
                          ids, self._store, args=[r.get("args") or () for r in known],
                          kwargs=[r.get("kwargs") or None for r in known],
                          submitted_at=self.backend.batch_created_at(batch_id),
                          due_at=[r.get("due_at") for r in known],
                          workflow_id=next((r["workflow"] for r in known if r.get("workflow")),
                                           None))
        self._events.start()
        self._events.attach_batch(batch, records)
        return batch

    def _attach(self, task_id: str, record: dict[str, Any]) -> TaskFuture:
        """A future for an existing task (the one this client already watches, if any).

        It is watched before ``sync`` reads its state again, so a change between
        the first read and the subscription is not missed.
        """
        future = self._events.watched(task_id)
        if future is not None and future.done() and (
                not TaskStatus(record.get("status", "queued")).is_finished
                or (record.get("attempt") or 1) != future.attempt):
            future = None  # run again since (a workflow's retry): a fresh future for it
        future = future or TaskFuture(
            task_id, record.get("task", "?"), self._store, args=record.get("args") or (),
            kwargs=record.get("kwargs") or {}, batch=record.get("batch") or None,
            index=record.get("index"), workflow_id=record.get("workflow") or None,
        )
        future.due_at = future.due_at or record.get("due_at")
        self._events.start()
        self._events.watch([future])
        self._events.sync([future])
        return future

    # --- lifecycle ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def _check_open(self) -> None:
        """Refuse a submit after close: its producers are gone, and Kafka would be blamed."""
        if self._closed:
            raise ClientClosed(f"this client of queue {self.config.queue!r} is closed, so "
                               "nothing was sent; connect again with yadtq.connect(...)")

    def close(self) -> None:
        """Stop listening and close connections (and an owned local stack)."""
        if self._closed:
            return
        self._closed = True
        self._events.close()
        for producer in (self._producer, self._lone_producer):
            try:
                producer.close(timeout=5)
            except BrokerUnavailable as exc:
                # Closing must still release Redis and a local stack; every submit was
                # delivered or claimed (or raised), so nothing the caller was promised is lost.
                logger.warning("%s", exc)
        self.backend.close()
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<yadtq.Client queue={self.config.queue!r} kafka={self.config.bootstrap} "
                f"redis={self.config.redis_address}>")


def _refuse_unknown(unknown: list[str]) -> None:
    if unknown:
        more = f" (nor on {len(unknown) - 1} more)" if unknown[1:] else ""
        raise UnknownDependency(
            f"task {unknown[0]} is not in Redis (it never existed, or its record expired), "
            f"so nothing can depend on it{more}; nothing was submitted")


def _no_due_with_parents(due: str, found: dependencies.Dependencies) -> None:
    if due and found.parents:
        raise ValueError("a task with parents starts when they finish, so it cannot also "
                         "have a countdown or an eta; give the delay to a parent instead")
