"""Producing the tasks whose parents all finished (worker runtime, workflows), on a thread
of its own.

A child leaves ``blocked`` in the step that ends its last parent (``lua/lib/edges.lua``);
nothing is on Kafka for it until then. The worker whose outcome readied it produces it at
once (its outcome store hands the ids over with :meth:`Unblocking.put`), holding it in the
queue's ``unblocked`` set meanwhile; should that worker die first, the hold lapses and any
worker's next look produces it, as it does children readied by a cancel, a workflow's retry
or a repair. A look (every ``LOOK_INTERVAL`` while there is dependent work about, every
``IDLE_LOOK_INTERVAL`` once there has been none for a while, so an idle worker costs
little, and at once after readied children) also goes on moving the edges of wide fan-outs
that one step could not move, round after round while there are any: one ``settle.lua`` call
a round moves up to 500 edges and takes what is due.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from yadtq import protocol
from yadtq.backend import RedisBackend
from yadtq.errors import BackendUnavailable, BrokerUnavailable

logger = logging.getLogger(__name__)

LOOK_INTERVAL = 0.2  # seconds between looks while there has been work lately
IDLE_LOOK_INTERVAL = 1.0  # seconds between looks once there has been none for a while
BUSY_SPELL = 10.0  # seconds after the last work during which looks stay frequent
ROUNDS = 100  # rounds one look may take, at most (a look of a wide fan-out is long)
WARN_EVERY = 30.0  # seconds between warnings while Redis or Kafka is away


class Unblocking:
    """Produces readied children; ``produce(messages)`` sends them and wakes their workers."""

    def __init__(self, backend: RedisBackend,
                 produce: Callable[[list[protocol.TaskMessage]], None], worker: str) -> None:
        self._backend = backend
        self._produce = produce
        self._worker = worker
        self._readied: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._warned_at = 0.0
        self._worked_at = -BUSY_SPELL  # monotonic time of the last look that found work
        self._thread = threading.Thread(target=self._run, name=f"{worker}-unblocking",
                                        daemon=True)

    def start(self) -> None:
        """Start looking."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current look."""
        self._readied.put(None)
        self._thread.join(timeout=5)

    def put(self, task_ids: Sequence[str]) -> None:
        """Produce these readied children (held for this worker) now; returns at once."""
        self._readied.put(list(task_ids))

    def wake(self) -> None:
        """Look now (children were readied elsewhere: a repair, say)."""
        self._readied.put([])

    def _run(self) -> None:
        while True:
            busy = time.monotonic() - self._worked_at < BUSY_SPELL
            try:
                readied = self._readied.get(timeout=LOOK_INTERVAL if busy else IDLE_LOOK_INTERVAL)
            except queue.Empty:
                readied = []
            while readied is not None and not self._readied.empty():
                more = self._readied.get()
                readied = None if more is None else readied + more
            if readied is None:
                return
            try:
                if readied:
                    self.send(readied)
                if self.look() or readied:
                    self._worked_at = time.monotonic()
            except (BackendUnavailable, BrokerUnavailable) as exc:
                if time.monotonic() - self._warned_at > WARN_EVERY:
                    self._warned_at = time.monotonic()
                    logger.warning("Worker %s: readied tasks wait for the next look: %s",
                                   self._worker, exc)
            except Exception:  # noqa: BLE001 - the thread must outlive any one failure
                logger.exception("Worker %s: producing readied tasks failed", self._worker)

    def send(self, task_ids: Sequence[str]) -> int:
        """Produce children held for this worker; returns how many (none of those that no
        longer wait)."""
        unblocked = self._backend.unblocked
        messages = unblocked.messages(task_ids)
        if messages:
            self._produce(messages)
        unblocked.sent(task_ids)
        return len(messages)

    def look(self) -> int:
        """Move on wide fan-outs and take the readied children due (judged on Redis's
        clock), round after round while there are any; returns how many were produced."""
        produced = 0
        for _ in range(ROUNDS):
            taken = self._backend.edges.settle()
            if not taken:
                break
            produced += self.send(taken)
        return produced
