"""The event listener (core layer): one pub/sub subscription that resolves every future.

A client with 10,000 pending tasks holds one subscription to the queue's
events channel, not 10,000 polls. Events are drained in bursts: a batch is told
of each of its tasks' changes and its displays once per burst, and final
events without a short result have their records read back in one pipelined
round trip. After a lost connection the listener
subscribes again and re-reads the state of every pending future, so an event
published while it was away is not missed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from yadtq.backend import RedisBackend
from yadtq.batch import TaskBatch
from yadtq.errors import BackendUnavailable
from yadtq.futures import TaskFuture
from yadtq.status import FINISHED, TaskStatus
from yadtq.workflow import Workflow

logger = logging.getLogger(__name__)

DRAIN_LIMIT = 5000
SERVER_LOOK_INTERVAL = 1.0  # seconds between checks that the primary did not change
RECONNECT_DELAY_MAX = 5.0


class EventListener:
    """Subscribes to the queue's events and moves the futures it watches."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self._futures: weakref.WeakValueDictionary[str, TaskFuture] = (
            weakref.WeakValueDictionary()
        )
        self._batches: weakref.WeakValueDictionary[str, TaskBatch] = (
            weakref.WeakValueDictionary()
        )
        self._workflows: weakref.WeakValueDictionary[str, Workflow] = (
            weakref.WeakValueDictionary()
        )
        self._subscribed = threading.Event()
        self._closed = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._server = ""  # the run id of the primary the subscription is on

    def start(self) -> None:
        """Subscribe (once) and return when the subscription is live.

        Raises:
            BackendUnavailable: the subscription was not confirmed in time.
        """
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="yadtq-events",
                                                daemon=True)
                self._thread.start()
        if not self._subscribed.wait(self.backend.config.connect_timeout + 1):
            config = self.backend.config
            raise BackendUnavailable(
                f"could not subscribe to {self.backend.keys.events} on Redis at "
                f"{config.redis_address} within {config.connect_timeout:g} s; check that it is "
                "running and reachable, then try again"
            )

    def watch(self, futures: Iterable[TaskFuture]) -> None:
        """Resolve these futures from now on (call before their tasks are produced)."""
        for future in futures:
            self._futures[future.id] = future

    def watch_batch(self, batch: TaskBatch) -> None:
        """Move this batch's tasks from now on (call before they are produced)."""
        self._batches[batch.id] = batch

    def attach_batch(self, batch: TaskBatch, records: Sequence[dict[str, Any] | None]) -> None:
        """Watch a batch of existing tasks, starting from their ``records`` (read before).

        What those leave unfinished is read again once watched, so a change in
        between is not missed; a finished batch is not read twice.
        """
        _apply_to_batch(batch, batch.ids, records)
        self.watch_batch(batch)
        self.sync(batches=[batch])

    def watch_workflow(self, workflow: Workflow) -> None:
        """Keep a workflow's counts current from now on (it reads them once itself)."""
        self._workflows[workflow.id] = workflow

    def watched(self, task_id: str) -> TaskFuture | None:
        """The future this listener already resolves for ``task_id``, if any."""
        return self._futures.get(task_id)

    def sync(self, futures: Iterable[TaskFuture] = (), batches: Iterable[TaskBatch] = ()) -> None:
        """Bring futures and batches up to date from Redis (for re-attached or missed tasks)."""
        pending = [f for f in futures if not f.done()]
        records = self.backend.task_records([f.id for f in pending])
        for future, record in zip(pending, records, strict=True):
            if record is not None:
                _apply(record, future.id, future=future)
        for batch in batches:
            ids = batch._pending_ids()
            _apply_to_batch(batch, ids, self.backend.task_records(ids))
            batch._changed()

    def close(self) -> None:
        """Stop listening; pending futures stay pending."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def _run(self) -> None:
        delay = 0.1
        first = True
        while not self._closed.is_set():
            pubsub = self.backend.pubsub()
            try:
                pubsub.subscribe(self.backend.keys.events)
                self._server = self.backend.failover.run_id()
                if not first:
                    self.sync(list(self._futures.values()), list(self._batches.values()))
                    logger.info("event listener: re-subscribed to %s", self.backend.keys.events)
                first = False
                delay = 0.1
                self._listen(pubsub)
            except (redis.RedisError, BackendUnavailable) as exc:  # pub/sub's, the backend's
                self._subscribed.clear()
                logger.warning("event listener: Redis connection lost (%s); retrying in %.1f s",
                               exc, delay)
                self._closed.wait(delay)
                delay = min(delay * 2, RECONNECT_DELAY_MAX)
            finally:
                pubsub.close()

    def _listen(self, pubsub: redis.client.PubSub) -> None:
        next_look = time.monotonic() + SERVER_LOOK_INTERVAL
        while not self._closed.is_set():
            message = pubsub.get_message(timeout=0.1)
            if time.monotonic() >= next_look:
                self._look_at_server()
                next_look = time.monotonic() + SERVER_LOOK_INTERVAL
            if message is None:
                continue
            events = [message]
            while len(events) < DRAIN_LIMIT:
                more = pubsub.get_message(timeout=0)
                if more is None:
                    break
                events.append(more)
            self._dispatch(events)

    def _look_at_server(self) -> None:
        """While anything is pending, check that the primary is still the server this
        subscription is on: after a failover the old primary's connection may stay open
        (it was stalled, or it became a replica), and events published on the new one
        meanwhile never reach it. A new server means subscribing again and re-reading.

        Raises:
            redis.ConnectionError: the primary changed.
        """
        if not (self._futures or self._batches):
            return
        if self.backend.failover.run_id() != self._server:
            raise redis.ConnectionError("Redis's primary changed (a failover or a restart)")

    def _dispatch(self, messages: list[dict[str, Any]]) -> None:
        finished: list[tuple[str, TaskBatch | None, TaskFuture | None]] = []
        moved: dict[str, TaskBatch] = {}
        touched: dict[str, Workflow] = {}
        for message in messages:
            if message["type"] == "subscribe":
                self._subscribed.set()
                continue
            if message["type"] != "message":
                continue
            try:
                changes = json.loads(message["data"])  # a JSON array: one script's changes
                if not isinstance(changes, list):
                    raise TypeError("not an array")
            except (ValueError, TypeError):
                logger.warning("event listener: ignored malformed event %r", message["data"])
                continue
            for change in changes:
                self._move(change, finished, moved)
                self._move_workflows(change, touched)
        if finished:
            records = self.backend.task_records([task_id for task_id, _, _ in finished])
            for (task_id, batch, future), record in zip(finished, records, strict=True):
                if record is not None:
                    _apply(record, task_id, batch, future)
        for batch in moved.values():
            batch._changed()
        for workflow in touched.values():
            workflow._changed()

    def _move_workflows(self, change: Any, touched: dict[str, Workflow]) -> None:
        """Tell the watched workflows a task of theirs changed status."""
        if not self._workflows or not isinstance(change, dict):
            return
        task_id, status = change.get("id"), change.get("status")
        for workflow in list(self._workflows.values()):
            if workflow.has(task_id):
                workflow._apply(task_id, status)
                touched[workflow.id] = workflow

    def _move(
        self,
        change: Any,
        finished: list[tuple[str, TaskBatch | None, TaskFuture | None]],
        moved: dict[str, TaskBatch],
    ) -> None:
        """Apply one task's change; final ones without a result go to ``finished``."""
        try:
            task_id = change["id"]
            status = TaskStatus(change["status"])
        except (ValueError, KeyError, TypeError):
            logger.warning("event listener: ignored malformed change %r", change)
            return
        batch = self._batches.get(change["batch"]) if change.get("batch") else None
        future = self._futures.get(task_id)
        if future is not None and future.done():
            future = None
        if batch is None and future is None:
            return
        if batch is not None:
            moved[batch.id] = batch
        if status is TaskStatus.SUCCESS and "result" in change:
            record = {"status": status.value, "result": json.loads(change["result"]),
                      "worker": change.get("worker"), "attempt": change.get("attempt"),
                      "finished_at": change.get("at")}
        elif status in FINISHED:
            finished.append((task_id, batch, future))
            return
        else:
            record = {"status": status.value, "worker": change.get("worker"),
                      "attempt": change.get("attempt"), "started_at": change.get("at")}
            if change.get("waits_for"):  # over a rate or concurrency limit (claim.lua)
                record.update(waits_for=change["waits_for"], due_at=change.get("due_at") or None)
        _apply(record, task_id, batch, future)


def _apply_to_batch(
    batch: TaskBatch, task_ids: Sequence[str], records: Sequence[dict[str, Any] | None]
) -> None:
    for task_id, record in zip(task_ids, records, strict=True):
        if record is not None:
            _apply(record, task_id, batch=batch)


def _apply(
    record: dict[str, Any],
    task_id: str,
    batch: TaskBatch | None = None,
    future: TaskFuture | None = None,
) -> None:
    """Move a batch's task and/or a future to the state ``record`` shows."""
    status = TaskStatus(record["status"])
    if status in FINISHED:
        if batch is not None:
            batch._resolve(task_id, record)
        if future is not None:
            future._resolve(record)
        return
    worker, attempt, at = record.get("worker"), record.get("attempt"), record.get("started_at")
    if batch is not None:
        batch._set_progress(task_id, status, worker, attempt, at)
        if "waits_for" in record:
            batch._set_waiting(task_id, record["waits_for"], record.get("due_at"))
    if future is not None:
        if "waits_for" in record:
            future.waits_for, future.due_at = record["waits_for"], record.get("due_at")
        future._set_progress(status, worker, attempt, at)
