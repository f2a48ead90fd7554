"""Producing the tasks whose parents all finished (worker runtime, workflows).

A child leaves ``blocked`` in the step that ends its last parent (``lua/lib/edges.lua``);
nothing is on Kafka for it until then. The worker whose outcome readied it produces it at
once, holding it in the queue's ``unblocked`` set meanwhile; should that worker die first,
the hold lapses and any worker's next look (every ``DUE_CHECK_INTERVAL``) produces it, as
it does children readied by a cancel or a workflow's retry. Each look also goes on moving
the edges of wide fan-outs that one step could not move (``settle.lua``). Every heartbeat,
:meth:`Unblocking.repair` moves any blocked task whose parents all ended without moving it,
with a warning: a hidden bug becomes a warning, not a hang.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from yadtq import protocol
from yadtq.backend import RedisBackend

logger = logging.getLogger(__name__)


class Unblocking:
    """Produces readied children; ``produce(messages)`` sends them and wakes their workers."""

    def __init__(self, backend: RedisBackend,
                 produce: Callable[[list[protocol.TaskMessage]], None]) -> None:
        self._backend = backend
        self._produce = produce

    def send(self, task_ids: Sequence[str]) -> int:
        """Produce children this worker's outcomes readied (and holds); returns how many."""
        unblocked = self._backend.unblocked
        messages = unblocked.messages(task_ids)
        if messages:
            self._produce(messages)
        unblocked.sent(task_ids)
        return len(messages)

    def send_due(self, _now: float) -> int:
        """Move on wide fan-outs, then produce every readied child no worker holds (judged
        on Redis's clock); returns how many were produced."""
        self._backend.edges.settle()
        taken = self._backend.unblocked.take_due()
        return self.send(taken) if taken else 0

    def repair(self, _now: float) -> int:
        """Move blocked tasks nothing would move, warning of each; returns how many."""
        repaired = self._backend.edges.repair()
        for task_id in repaired:
            logger.warning("task %s was blocked though its parents had all ended; it was "
                           "moved on now (queued, or skipped if a parent failed)", task_id)
        if repaired:
            self.send_due(_now)
        return len(repaired)

