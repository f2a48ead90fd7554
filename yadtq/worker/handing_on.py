"""Handing on tasks this worker does not serve (worker runtime).

Workers of one queue may be started with different task modules, while Kafka
deals partitions without regard to what a worker can run. A task another live
worker serves is produced again, unclaimed, to one of that worker's partitions
(``yadtq.routing`` reads who holds which from the heartbeat records); its
claim still happens once, wherever it lands. A high priority task is not: every
worker reads the high level (``broker.high_lane``), so one that serves it takes it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable

from yadtq import protocol
from yadtq.backend import RedisBackend
from yadtq.config import Config
from yadtq.errors import BackendUnavailable
from yadtq.priority import Priority
from yadtq.routing import Routes
from yadtq.worker.redis_retry import GAVE_UP, retry_redis

logger = logging.getLogger(__name__)

ROUTES_MAX_AGE = 0.5  # seconds; how stale the queue's workers' tasks may be when routing
JOINING_PEER_WAIT = 0.05  # seconds; a task handed on to a worker still joining comes back


class HandOn:
    """Finds, for tasks this worker does not serve, a live worker of the queue that does."""

    def __init__(
        self,
        config: Config,
        backend: RedisBackend,
        *,
        worker: str,
        served: Iterable[str],
        send: Callable[[protocol.TaskMessage, int | None], None],
        flushed: Callable[[str], bool],
        clock: Callable[[], float],
        stopping: threading.Event,
    ) -> None:
        """``send(message, partition)`` produces a task; ``flushed(what)`` waits until
        Kafka has it, False if it did not take it."""
        self.config = config
        self._backend = backend
        self._worker = worker
        self._served = frozenset(served)
        self._send = send
        self._flushed = flushed
        self._clock = clock
        self._stopping = stopping
        self._routes: Routes | None = None  # the queue's other workers, read when needed
        self._routes_read_at = 0.0

    def unserved(
        self, messages: list[protocol.TaskMessage]
    ) -> list[protocol.TaskMessage] | None:
        """Hand tasks this worker does not serve to live workers that do; returns the rest.

        A handed-on task is flushed before its offset here can be committed, so it
        is never lost. A task no live worker serves is kept: claimed, it fails at
        once with UnknownTask naming what the queue serves. None: the worker is
        stopping (with Redis down, or Kafka not taking the handed-on tasks).
        """
        unserved = [m for m in messages if m.route not in self._served]
        if not unserved:
            return messages
        routes = self._current_routes()
        if routes is None:
            return None
        handed_on = set()
        to_joining = False
        rings = set()
        for message in unserved:
            if not routes.serves(message.route):
                continue
            if message.priority is Priority.HIGH:  # they read the high level too: drop it
                handed_on.add(message.id)
                continue
            partitions = routes.partitions_for(message.route)
            to_joining |= not partitions
            partition = random.choice(partitions) if partitions else None
            self._send(message, partition)
            rings |= {partition} - {None}
            handed_on.add(message.id)
            logger.debug("Worker %s: handed task %s (%s) on to partition(s) %s", self._worker,
                         message.id, message.task, partitions or "any")
        if handed_on and not self._flushed("handed-on tasks"):
            return None
        if rings:
            self._ring(rings)
        if to_joining:  # its workers are joining the group: such a task may come back at once
            self._stopping.wait(JOINING_PEER_WAIT)
        return [m for m in messages if m.id not in handed_on]

    def _ring(self, partitions: set[int]) -> None:
        try:
            self._backend.ring(partitions)
        except BackendUnavailable as exc:  # they are on their way; the workers look anyway
            logger.warning("Worker %s: could not ring doorbells (%s)", self._worker, exc)

    def served_elsewhere(self) -> list[str]:
        """The task names the queue's other live workers serve, as last read."""
        return self._routes.served if self._routes else []

    def _current_routes(self) -> Routes | None:
        """The queue's other live workers, read from Redis at most every ROUTES_MAX_AGE."""
        if self._routes is None or time.monotonic() - self._routes_read_at > ROUTES_MAX_AGE:
            records = retry_redis(self._backend.workers, "read the queue's workers",
                                  worker=self._worker, stopping=self._stopping)
            if records is GAVE_UP:
                return None
            self._routes = Routes(records, self._clock(), exclude=self._worker)
            self._routes_read_at = time.monotonic()
        return self._routes
