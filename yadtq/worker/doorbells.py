"""The worker's doorbells (worker runtime): rings heard on a thread of their own.

Clients ring a Redis doorbell for each partition they produce to
(``RedisBackend.ring``); a lone task's ring names it, so that its worker claims it
straight from its Redis record, and a map's first ring names its batch, so that the
woken workers claim its first tasks from their records (``backend.record_claims``)
while Kafka still takes the messages. :class:`Doorbells` listens on its own thread, so no
turn of the worker's loop (a Kafka read, a steal look, the claim of what those found)
keeps a rung task waiting: traces put the loop's p99 spikes in exactly those turns,
when it listened between them. The loop only sleeps until a batch's ring says to look
in Kafka. While no slot is free the thread does not listen: a ring waits in Redis, or
its task's Kafka message reaches a slot first.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from yadtq.backend import UNNAMED_RING, RedisBackend
from yadtq.backend.record_claims import BATCH_RING_PREFIX
from yadtq.errors import BackendUnavailable

logger = logging.getLogger(__name__)

LISTEN_SECONDS = 1.0  # the longest wait on the doorbells; new partitions are heard within it
HEARD_BATCHES = 64  # batches remembered as rung: a batch's rings after its first are stale


class Doorbells:
    """Listens to this worker's partitions' doorbells and claims what a ring names.

    ``partitions()``: the partitions whose doorbells to listen to; ``free()``: whether a
    slot is free for a rung task; ``claim(name)``: claim and start a lone task (or a
    batch's first tasks) from its record (on this thread; it may raise
    ``BackendUnavailable``).
    """

    def __init__(self, backend: RedisBackend, *, worker: str,
                 partitions: Callable[[], list[int]], free: Callable[[], bool],
                 claim: Callable[[str], None], reserve: Callable[[], int],
                 claim_batch: Callable[[str, int], None], retry_wait: float,
                 stopping: threading.Event) -> None:
        """``reserve()``: take every idle slot for a batch's first tasks (how many);
        ``claim_batch(batch_id, reserved)``: claim and start them, freeing what is left."""
        self._backend = backend
        self._worker = worker
        self._partitions = partitions
        self._free = free
        self._claim = claim
        self._reserve = reserve
        self._claim_batch = claim_batch
        self._retry_wait = retry_wait
        self._stopping = stopping
        self._heard = threading.Condition()  # guards the flags below
        self._batch_rang = False  # a batch's ring since the loop last slept: look in Kafka
        self._named_rang = False  # and it named the batch (its messages may not be in Kafka)
        self._heard_batches: OrderedDict[str, None] = OrderedDict()  # (this thread's own)
        self._wake = threading.Event()  # a slot freed, new partitions, or stopping
        self._thread = threading.Thread(target=self._listen, name=f"{worker}-doorbells",
                                        daemon=True)

    def start(self) -> None:
        """Start listening."""
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (call once the worker is stopping); waits for the thread, which
        claims nothing more."""
        self._wake.set()
        self._thread.join(LISTEN_SECONDS + self._backend.config.connect_timeout)

    def wake(self) -> None:
        """A slot was freed, the partitions changed, or the worker is stopping: listen
        again if paused (and end the loop's sleep if stopping)."""
        self._wake.set()
        with self._heard:
            self._heard.notify_all()

    def sleep(self, timeout: float) -> bool:
        """Sleep until a batch's ring, or ``timeout`` seconds (the worker's loop); True if
        a batch's ring came since the last sleep (lone tasks' rings are claimed here)."""
        with self._heard:
            self._heard.wait_for(lambda: self._batch_rang or self._stopping.is_set(), timeout)
            rang, self._batch_rang, self._named_rang = self._batch_rang, False, False
        return rang

    def looking(self) -> None:
        """The loop looks in Kafka now: rings that only said messages were produced (not
        naming a batch, whose messages may be on their way) are answered by this look, so
        its next sleep need not end at once for them."""
        with self._heard:
            if not self._named_rang:
                self._batch_rang = False

    def _listen(self) -> None:
        while not self._stopping.is_set():
            partitions = self._partitions()
            if not partitions or not self._free():  # joining the group, or every slot busy
                self._wake.wait(LISTEN_SECONDS)
                self._wake.clear()  # then look again at what it waited for
                continue
            try:
                self._hear(partitions)
            except BackendUnavailable as exc:
                logger.warning("Worker %s: cannot wait on Redis (%s)", self._worker, exc)
                self._stopping.wait(self._retry_wait)
            except Exception:  # noqa: BLE001 - one bad ring must not leave the worker deaf
                logger.exception("Worker %s: a doorbell's ring failed; listening on",
                                 self._worker)
                self._stopping.wait(self._retry_wait)

    def _hear(self, partitions: list[int]) -> None:
        """Wait for one ring; claim the task it names, while a slot is free for it (else
        its Kafka message is read as any other)."""
        rang = self._backend.wait_for_ring(partitions, LISTEN_SECONDS)
        if rang is None:
            return
        batch = rang.startswith(BATCH_RING_PREFIX)
        if batch and self._heard_before(rang):
            return
        if batch:
            # Whatever the loop does (a Kafka read, a steal look): its claims reserve their
            # slots too, so none is claimed for twice.
            reserved = 0 if self._stopping.is_set() else self._reserve()
            if reserved:
                self._claim_batch(rang, reserved)
        elif rang != UNNAMED_RING and not self._stopping.is_set() and self._free():
            self._claim(rang)  # before the loop is told: it then counts the slots taken
        if rang == UNNAMED_RING or batch:
            with self._heard:
                self._batch_rang = True
                self._named_rang = self._named_rang or batch
                self._heard.notify_all()

    def _heard_before(self, batch_ring: str) -> bool:
        """Whether this batch was rung for already: a map rings each of its partitions, and
        those heard after the first (often after waiting out a busy slot, the batch long
        done) would only wake the loop to look for what it has looked for."""
        if batch_ring in self._heard_batches:
            return True
        self._heard_batches[batch_ring] = None
        if len(self._heard_batches) > HEARD_BATCHES:
            self._heard_batches.popitem(last=False)
        return False
