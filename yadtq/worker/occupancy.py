"""How many tasks a worker holds for its slots, and so how many more to claim (worker
runtime).

A task counts from its claim (or a slot reserved for one) until it ends. The loop claims
one task a free slot, and, while tasks are short, a group a slot more, so that a slot goes
from one task to the next without waiting for a claim; long tasks are claimed only for
free slots, so none waits claimed behind a running one. The doorbells' thread claims too,
whatever the loop does: each reserves what it claims for before the claim, so the two
never claim for one slot, and the counts take a lock (never held across a call).
"""

from __future__ import annotations

import threading

from yadtq.worker.slots import GROUP, SHORT_TASK


class Occupancy:
    """The counts of one worker's slots."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._held = 0  # claimed (or reserved) and not yet ended: waiting for a slot or in one
        self._ahead = 0  # how many claimed tasks may wait for a slot (0 while tasks are long)

    @property
    def short(self) -> bool:
        """True while tasks are short: claimed ahead and run in groups."""
        return self._ahead > 0

    def free(self) -> int:
        """How many tasks to claim now: one a free slot, and while tasks are short, a group
        a slot more."""
        with self._lock:
            return self.concurrency + self._ahead - self._held

    def reserve(self, count: int) -> int:
        """Take up to ``count`` of what may be claimed now (:meth:`free`); returns how many
        (what a claim leaves unused goes back: :meth:`release`)."""
        with self._lock:
            reserved = max(0, min(count, self.concurrency + self._ahead - self._held))
            self._held += reserved
        return reserved

    def reserve_idle(self) -> int:
        """Take every slot with nothing claimed for it; returns how many."""
        with self._lock:
            idle = max(0, self.concurrency - self._held)
            self._held += idle
        return idle

    def release(self, count: int) -> None:
        """Give back ``count`` reserved slots nothing was claimed for."""
        with self._lock:
            self._held -= count

    def kept(self, mean_run: float) -> None:
        """A task ended and its slot claimed its next itself (``next_up``): still held."""
        with self._lock:
            self._ahead = self.concurrency * GROUP if mean_run < SHORT_TASK else 0

    def ended(self, mean_run: float) -> bool:
        """Count a task ended, given how long tasks now run on average; True when the loop
        should claim again (short tasks: once half the claimed-ahead ended, that many in
        one go)."""
        with self._lock:
            self._held -= 1
            self._ahead = self.concurrency * GROUP if mean_run < SHORT_TASK else 0
            return self.concurrency + self._ahead - self._held >= max(self._ahead // 2, 1)
