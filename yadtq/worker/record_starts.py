"""Tasks a doorbell's ring names, claimed from their Redis records and started (worker
runtime).

A lone task's ring names it, a map's first ring its batch (``yadtq.waking``): the woken
worker claims the task, or the batch's first queued tasks, one an idle slot, straight
from their records (``backend.record_claims``), rather than wait for their Kafka
messages to be produced, acknowledged and fetched. Those messages, read later, are
copies: dropped by this worker (``rung_copies``), skipped by another's claim. A lone task
claimed while its client waited for a claim has no message (``Client.submit``). The
doorbells' thread does this, whatever the worker's loop is doing: each claims only for
slots it reserved first (``occupancy``), so the two never claim for one slot.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from yadtq.backend import RedisBackend
from yadtq.protocol import TaskMessage
from yadtq.worker import oldest_first
from yadtq.worker.occupancy import Occupancy
from yadtq.worker.rung_copies import RungCopies


class RecordStarts:
    """Claims of rung tasks from their records, and their start."""

    def __init__(
        self,
        backend: RedisBackend,
        *,
        worker: str,
        served: frozenset[str],
        clock: Callable[[], float],
        occupancy: Occupancy,
        hold: Callable[[TaskMessage, int], None],
        start: Callable[[TaskMessage, bool, bool], None],
        rung_copies: RungCopies,
        slot_freed: threading.Event,
    ) -> None:
        """``hold(message, attempt)``: count a claimed task the worker's (its slot was
        reserved); ``start(message, record_signed, copied)``: run it (``copied`` False:
        its message was never produced)."""
        self._backend = backend
        self._worker = worker
        self._served = sorted(served)
        self._clock = clock
        self._occupancy = occupancy
        self._hold = hold
        self._start = start
        self._rung_copies = rung_copies
        self._slot_freed = slot_freed

    def named(self, task_id: str) -> None:
        """Claim and start a lone task a doorbell named, in a slot reserved for it (none
        free: its message reaches a slot as any other's).

        Raises:
            BackendUnavailable: Redis did not answer (the slot is freed).
        """
        if not self._occupancy.reserve(1):
            return
        message = None
        try:
            message, _, signed, copied = self._backend.record_claims.named(
                task_id, self._worker, self._served, now=self._clock())
        finally:
            if message is None:
                self._freed(1)
        if message is not None:
            self._hold(message, message.attempt)
            self._started(message, signed, copied)

    def batch_head(self, batch_id: str, reserved: int) -> None:
        """Claim and start up to ``reserved`` of a batch's first tasks, in the slots
        reserved for them, and free the rest.

        Raises:
            BackendUnavailable: Redis did not answer (the slots are freed).
        """
        claimed = []
        try:
            claimed = self._backend.record_claims.batch_head(
                batch_id, self._worker, self._served, reserved, oldest_first.LOOKED_PAST,
                now=self._clock())
        finally:
            for message, _, _ in claimed:
                self._hold(message, message.attempt)
            if len(claimed) < reserved:
                self._freed(reserved - len(claimed))
        for message, _, signed in claimed:
            self._started(message, signed)

    def _freed(self, count: int) -> None:
        """Give back ``count`` reserved slots nothing was claimed for; the loop may count
        them busy, and waits for a slot no more."""
        self._occupancy.release(count)
        self._slot_freed.set()

    def _started(self, message: TaskMessage, signed: bool, copied: bool = True) -> None:
        if copied:
            self._rung_copies.claimed(message.id, message.attempt)
        self._start(message, signed, copied)
