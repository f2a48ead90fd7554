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
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from yadtq import protocol
from yadtq.acceptance import Acceptance
from yadtq.backend import PIPELINE_CHUNK, RedisBackend
from yadtq.batch import TaskBatch
from yadtq.broker import TaskProducer, create_topics
from yadtq.config import Config
from yadtq.due import due_spec
from yadtq.errors import (
    BackendUnavailable,
    BrokerUnavailable,
    ClientClosed,
    MessageTooLarge,
    TaskNotFound,
    YadtqError,
)
from yadtq.events import EventListener
from yadtq.extras import require
from yadtq.futures import TaskFuture
from yadtq.schedules import Schedule, create, schedule_frame
from yadtq.shipping import Shipment
from yadtq.status import TaskStatus
from yadtq.store import RedisTaskStore
from yadtq.worker_table import WORKER_COLUMNS, format_rows, settled, worker_row

if TYPE_CHECKING:
    import pandas

TaskRef = Callable[..., Any] | str

logger = logging.getLogger(__name__)


class Client:
    """A connection to one queue: submit tasks, look them up, list workers."""

    def __init__(self, config: Config, *, on_close: Callable[[], None] | None = None) -> None:
        self.config = config
        self.backend = RedisBackend(config)
        self.backend.check_connection()
        create_topics(config)
        self._producer = TaskProducer(config, linger_ms=1000, batch_size=1 << 20)  # maps
        self._lone_producer = TaskProducer(config)  # submits: each message sent at once
        self._events = EventListener(self.backend)
        self._store = RedisTaskStore(self.backend)
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
    ) -> TaskFuture:
        """Submit with per-call options that override the task's declared defaults.

        Args:
            timeout: seconds the task may run before it is stopped and fails
                with ``TaskTimeout``.
            max_retries: how many times a failed task runs again.
            retry_on: exception types (or their names) worth retrying; all when empty.
            retry_backoff: base seconds between attempts, doubled each time, with jitter.
            countdown: run it this many seconds from now (on Redis's clock), not at once.
            eta: run it at this timezone-aware datetime. Until then the task is
                ``scheduled``: in Redis only, not on Kafka, and it can be cancelled.

        Raises:
            TypeError: an argument is not JSON-serialisable (nothing is sent).
            ValueError: ``countdown`` or ``eta`` is not a valid due time.
            ClientClosed: the client was closed (nothing is sent).
        """
        self._check_open()
        due = due_spec(countdown, eta)
        shipment = Shipment(task, self.config)
        message = shipment.message(args, kwargs, **_options(
            timeout, max_retries, retry_on, retry_backoff))
        self._acceptance.check(message.needs_trust)
        payload = protocol.encode(message, self.config.max_message_bytes, self.config.secret)
        future = self._future(message, args, kwargs or {}, scheduled=bool(due))
        self._events.start()
        self._events.watch([future])
        if shipment.blobs:
            self.backend.put_blobs(shipment.blobs)
        if due:  # a worker produces it when it is due
            self.backend.enqueue([message], due=due)
            return future
        # A worker claims the task from its record as soon as the doorbell rings, while
        # Kafka takes its message (which the worker then skips, the task being taken).
        # Submit returns once either has happened: a claimed task is safe in Redis
        # (should its worker die, the reaper produces it again).
        taken = threading.Event()
        future.add_change_callback(lambda _: taken.set())
        partition = self._lone_producer.next_partition()
        self.backend.enqueue([message], ring=partition)
        try:
            self._lone_producer.send_until(message.id, payload, partition, taken)
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
    ) -> TaskBatch:
        """Submit one task per item: a tuple is star-args, a dict is kwargs, else one argument.

        Every message is validated before anything is sent, so a bad item
        sends nothing. The options apply to every task (see :meth:`submit_with`);
        with ``countdown`` or ``eta`` all of them are due at the same moment.

        Raises:
            TypeError: an item's argument is not JSON-serialisable; names the item.
            ValueError: ``countdown`` or ``eta`` is not a valid due time.
            SecretMismatch: as for :meth:`submit` (nothing is sent).
            ClientClosed: the client was closed (nothing is sent).
        """
        self._check_open()
        due = due_spec(countdown, eta)
        shipment = Shipment(task, self.config)
        batch_id = protocol.new_batch_id()
        options = _options(timeout, max_retries, retry_on, retry_backoff)
        messages, payloads, calls = [], [], []
        for index, item in enumerate(items):
            args, kwargs = _split_item(item)
            try:
                message = shipment.message(args, kwargs, batch=batch_id, index=index, **options)
            except (TypeError, MessageTooLarge) as exc:
                raise type(exc)(f"item {index} of map: {exc}") from None
            messages.append(message)
            calls.append((args, kwargs))
            payloads.append(protocol.encode(message, self.config.max_message_bytes,
                                            self.config.secret))
        self._acceptance.check(any(m.needs_trust for m in messages))
        batch = TaskBatch(batch_id, shipment.name, [m.id for m in messages], self._store,
                          args=[args for args, _ in calls],
                          kwargs=[kwargs or None for _, kwargs in calls],
                          status=TaskStatus.SCHEDULED if due else TaskStatus.QUEUED)
        self._events.start()
        self._events.watch_batch(batch)
        if shipment.blobs:  # the function and large arguments, before any message names them
            self.backend.put_blobs(shipment.blobs)
        if due:  # workers produce them when they are due
            for start in range(0, len(messages), PIPELINE_CHUNK):
                self.backend.enqueue(messages[start:start + PIPELINE_CHUNK], batch_id=batch_id,
                                     batch_total=len(messages) if start == 0 else None, due=due)
            return batch
        # Chunk by chunk, so Kafka sends one chunk while Redis stores the next. After
        # chunks 1, 2, 4, 8, ... the workers are woken to what Kafka has so far: they
        # start on a large map while the rest is still being sent.
        partitions: set[int] = set()
        written = 0
        try:
            for number, start in enumerate(range(0, len(messages), PIPELINE_CHUNK), 1):
                chunk = messages[start:start + PIPELINE_CHUNK]
                self.backend.enqueue(chunk, batch_id=batch_id,
                                     batch_total=len(messages) if start == 0 else None)
                written += len(chunk)
                partitions |= self._producer.deal([m.id for m in chunk],
                                                  payloads[start:start + PIPELINE_CHUNK])
                if number & (number - 1) == 0 or written == len(messages):
                    self._flush(partitions)
        except BrokerUnavailable as exc:
            error = self._failed_undelivered(exc, messages[:written], batch_id,
                                             unwritten=len(messages) - written)
            if error is not None:
                raise error from None
        return batch

    def _future(self, message: protocol.TaskMessage, args: Sequence[Any],
                kwargs: dict[str, Any], scheduled: bool = False) -> TaskFuture:
        return TaskFuture(message.id, message.task, self._store, args=tuple(args),
                          kwargs=kwargs, batch=message.batch, index=message.index,
                          status=TaskStatus.SCHEDULED if scheduled else TaskStatus.QUEUED)

    def _flush(self, partitions: set[int]) -> None:
        """Wait until Kafka has the messages sent so far, then wake the workers of
        those partitions."""
        self._producer.flush()
        try:
            self.backend.ring(partitions)
        except BackendUnavailable as exc:  # the tasks are on their way; workers look anyway
            logger.warning("could not ring the workers' doorbells (%s); they will find the "
                           "tasks within %.1f s", exc, self.config.idle_wait)

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
            failed = self.backend.fail_undelivered(written, str(exc), batch_id, unwritten)
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

    def schedule(self, name: str, task: TaskRef, /, *, cron: str | None = None,
                 every: float | None = None, args: Sequence[Any] = (),
                 kwargs: dict[str, Any] | None = None, tz: str = "UTC", catchup: str = "one",
                 overlap: str = "skip", **options: Any) -> Schedule:
        """Store (or replace) schedule ``name``: ``task(*args, **kwargs)`` on a ``cron``
        expression in zone ``tz``, or ``every`` seconds, fired by any live worker, one task
        an occurrence. ``options`` as for :meth:`submit_with`; policies: ``docs/time.md``.

        Raises:
            ValueError: a bad name, timing, zone, policy or option.
            TypeError, UntrustedCode, MessageTooLarge: as :meth:`submit` raises them.
        """
        self._check_open()
        create(self.backend, name, task, cron=cron, every=every, args=args, kwargs=kwargs,
               tz=tz, catchup=catchup, overlap=overlap, options=options)
        return Schedule(name, self.backend, self.get)

    def schedules(self) -> Any:
        """The queue's schedules, next to fire first: a DataFrame, or rows without pandas."""
        return schedule_frame(self.backend)

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
                          submitted_at=self.backend.batch_created_at(batch_id))
        self._events.start()
        self._events.attach_batch(batch, records)
        return batch

    def _attach(self, task_id: str, record: dict[str, Any]) -> TaskFuture:
        """A future for an existing task (the one this client already watches, if any).

        It is watched before ``sync`` reads its state again, so a change between
        the first read and the subscription is not missed.
        """
        future = self._events.watched(task_id) or TaskFuture(
            task_id, record.get("task", "?"), self._store, args=record.get("args") or (),
            kwargs=record.get("kwargs") or {}, batch=record.get("batch") or None,
            index=record.get("index"),
        )
        self._events.start()
        self._events.watch([future])
        self._events.sync([future])
        return future

    def worker_rows(self) -> list[dict[str, Any]]:
        """The queue's workers as dicts of :data:`WORKER_COLUMNS` (no pandas needed).

        ``status`` is judged from the heartbeats (alive, dead or stopped);
        ``heartbeat_age`` is seconds, never negative (a worker's clock may run ahead);
        ``started_at`` and ``last_heartbeat`` are unix seconds; ``settings_differ``
        names the shared settings (key prefix, lease, TTL, secret, ...) in which the
        worker disagrees with this client, empty when they agree.
        """
        now = time.time()
        expected = self.config.shared_settings()
        return [worker_row(w, now, expected) for w in self.backend.workers()
                if w.get("queue", self.config.queue) == self.config.queue]

    def workers(self) -> pandas.DataFrame:
        """One row per registered worker (see :meth:`worker_rows`), as a DataFrame.

        ``started_at`` and ``last_heartbeat`` are UTC timestamps, as the times of
        ``TaskBatch.to_dataframe()`` are (``worker_rows`` keeps them unix seconds).

        Raises:
            ImportError: pandas is not installed (the ``notebook`` extra).
        """
        pandas = require("pandas", "Client.workers()")
        frame = pandas.DataFrame(self.worker_rows(), columns=WORKER_COLUMNS)
        for column in ("started_at", "last_heartbeat"):
            frame[column] = pandas.to_datetime(frame[column], unit="s", utc=True)
        return frame

    def wait_for_workers(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until ``count`` live workers together hold every partition of the topic.

        Use before a demo or benchmark so the first worker to join does not
        take the whole batch while the others are still joining.

        Returns:
            The live workers' rows (:meth:`worker_rows`).

        Raises:
            TimeoutError: they did not settle within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            rows = self.worker_rows()
            alive = [row for row in rows if row["status"] == "alive"]
            if settled(alive, count):
                self._warn_of_differences(alive)
                return alive
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"waited {timeout} s for {count} live workers sharing every partition of "
                    f"{self.config.tasks_topic}; last seen:\n{format_rows(rows)}"
                )
            time.sleep(0.1)

    def _warn_of_differences(self, alive: list[dict[str, Any]]) -> None:
        """Warn, once per client and worker, of settings in which a live worker differs
        but that do not stop its tasks (a secret that does is ``SecretMismatch``)."""
        for row in alive:
            differ = [name for name in row["settings_differ"].split(",")
                      if name and name != "secret_digest"]
            if differ and (row["name"], tuple(differ)) not in self._warned:
                self._warned.add((row["name"], tuple(differ)))
                logger.warning("worker %s of queue %r differs from this client in: %s; start "
                               "it with the same YADTQ_* settings", row["name"],
                               self.config.queue, ",".join(differ))

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


def _options(
    timeout: float | None,
    max_retries: int | None,
    retry_on: Sequence[type[BaseException] | str],
    retry_backoff: float | None,
) -> dict[str, Any]:
    names = tuple(r if isinstance(r, str) else r.__name__ for r in retry_on)
    return {"timeout": timeout, "max_retries": max_retries, "retry_on": names,
            "retry_backoff": retry_backoff}


def _split_item(item: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(item, tuple):
        return item, {}
    if isinstance(item, dict):
        return (), item
    return (item,), {}
