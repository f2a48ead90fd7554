"""After Redis fails over, put back what the lost writes broke (core layer, a maintenance
duty of the worker).

Every worker notes the server's run id at each heartbeat. When it changes (a failover, or a
restart), one worker (whichever takes the repair's key first) waits for the live workers to
reconnect, then recounts the recent batches' counters and produces again the queued tasks
that nothing holds and nothing will produce (``backend.failover``): a claim the failover
took back after its worker had committed the task's Kafka offset would otherwise leave the
task queued forever. A copy of a task whose message was still in Kafka is skipped by claim.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from yadtq.backend import RedisBackend
from yadtq.protocol import TaskMessage

logger = logging.getLogger(__name__)


class FailoverRepair:
    """The duty: watch the server's run id; repair once after it changes."""

    def __init__(self, backend: RedisBackend, produce: Callable[[list[TaskMessage]], None],
                 worker: str, grace: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``produce(messages)``: send tasks to Kafka and wake their workers; ``grace``:
        seconds live workers get to reconnect before the repair looks."""
        self._backend = backend
        self._produce = produce
        self._worker = worker
        self._grace = grace
        self._monotonic = monotonic
        self._run_id: str | None = None
        self._changed_at: float | None = None  # when a new run id was seen, until repaired

    @property
    def server(self) -> str:
        """The run id of the server as last seen ("" before the first look)."""
        return self._run_id or ""

    def look(self) -> int:
        """Note the run id; repair if it changed ``grace`` ago; returns tasks produced."""
        run_id = self._backend.failover.run_id()
        if self._run_id is None:
            self._run_id = run_id  # the server this worker started with
            return 0
        if run_id != self._run_id:
            self._run_id, self._changed_at = run_id, self._monotonic()
            logger.warning("Worker %s: Redis is a new server (run id %s): a failover or a "
                           "restart; repairing in %.0f s", self._worker, run_id, self._grace)
            return 0
        if self._changed_at is None or self._monotonic() - self._changed_at < self._grace:
            return 0
        self._changed_at = None
        if not self._backend.failover.claim_repair(run_id, self._worker):
            return 0
        recounted = self._backend.failover.recount_batches()
        stranded = self._backend.failover.stranded()
        if stranded:
            self._produce(stranded)
        logger.warning("Worker %s: after Redis changed, %d batch(es) recounted and %d queued "
                       "task(s) produced again", self._worker, recounted, len(stranded))
        return len(stranded)
