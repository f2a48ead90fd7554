"""The event listener (core layer): one pub/sub subscription that resolves every future.

A client with 10,000 pending futures holds one subscription to the queue's
events channel, not 10,000 polls. Final events are gathered and their records
read back in one pipelined round trip. After a lost connection the listener
subscribes again and re-reads the state of every pending future, so an event
published while it was away is not missed.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Iterable
from typing import Any

import redis

from yadtq.backend import RedisBackend
from yadtq.errors import BackendUnavailable
from yadtq.futures import TaskFuture
from yadtq.status import FINISHED, TaskStatus

logger = logging.getLogger(__name__)

DRAIN_LIMIT = 5000
RECONNECT_DELAY_MAX = 5.0


class EventListener:
    """Subscribes to the queue's events and moves the futures it watches."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self._futures: weakref.WeakValueDictionary[str, TaskFuture] = (
            weakref.WeakValueDictionary()
        )
        self._subscribed = threading.Event()
        self._closed = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

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
            raise BackendUnavailable(
                f"could not subscribe to {self.backend.keys.events} on Redis within "
                f"{self.backend.config.connect_timeout} s"
            )

    def watch(self, futures: Iterable[TaskFuture]) -> None:
        """Resolve these futures from now on (call before their tasks are produced)."""
        for future in futures:
            self._futures[future.id] = future

    def watched(self, task_id: str) -> TaskFuture | None:
        """The future this listener already resolves for ``task_id``, if any."""
        return self._futures.get(task_id)

    def sync(self, futures: Iterable[TaskFuture]) -> None:
        """Bring futures up to date from Redis (for re-attached or missed tasks)."""
        pending = [f for f in futures if not f.done()]
        records = self.backend.task_records([f.id for f in pending])
        for future, record in zip(pending, records, strict=True):
            if record is not None:
                _apply_record(future, record)

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
                if not first:
                    self.sync(list(self._futures.values()))
                    logger.info("event listener: re-subscribed to %s", self.backend.keys.events)
                first = False
                delay = 0.1
                self._listen(pubsub)
            except redis.RedisError as exc:
                self._subscribed.clear()
                logger.warning("event listener: Redis connection lost (%s); retrying in %.1f s",
                               exc, delay)
                self._closed.wait(delay)
                delay = min(delay * 2, RECONNECT_DELAY_MAX)
            finally:
                pubsub.close()

    def _listen(self, pubsub: redis.client.PubSub) -> None:
        while not self._closed.is_set():
            message = pubsub.get_message(timeout=0.1)
            if message is None:
                continue
            events = [message]
            while len(events) < DRAIN_LIMIT:
                more = pubsub.get_message(timeout=0)
                if more is None:
                    break
                events.append(more)
            self._dispatch(events)

    def _dispatch(self, messages: list[dict[str, Any]]) -> None:
        finished: list[TaskFuture] = []
        for message in messages:
            if message["type"] == "subscribe":
                self._subscribed.set()
                continue
            if message["type"] != "message":
                continue
            try:
                event = json.loads(message["data"])
                future = self._futures.get(event["id"])
                status = TaskStatus(event["status"])
            except (ValueError, KeyError, TypeError):
                logger.warning("event listener: ignored malformed event %r", message["data"])
                continue
            if future is None or future.done():
                continue
            if status is TaskStatus.SUCCESS and "result" in event:
                future._resolve({"status": status.value, "result": json.loads(event["result"]),
                                 "worker": event.get("worker"), "attempt": event.get("attempt"),
                                 "finished_at": event.get("at")})
            elif status in FINISHED:
                finished.append(future)
            else:
                future._set_progress(status, event.get("worker"), event.get("attempt"),
                                     event.get("at"))
        if finished:
            records = self.backend.task_records([f.id for f in finished])
            for future, record in zip(finished, records, strict=True):
                if record is not None:
                    future._resolve(record)


def _apply_record(future: TaskFuture, record: dict[str, Any]) -> None:
    status = TaskStatus(record["status"])
    if status in FINISHED:
        future._resolve(record)
    else:
        future._set_progress(status, record.get("worker"), record.get("attempt"),
                             record.get("started_at"))
