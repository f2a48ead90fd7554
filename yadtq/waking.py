"""How a client wakes the workers (client layer): the doorbells it rings as it sends,
the chunks a map is sent in so that its workers are rung early, and the moment a lone
task waits for a rung worker to claim it from its record before its message is produced.

A lone task a worker claimed from its record needs no Kafka message: should the worker
die, the reaper produces it from Redis. Not producing one spares the client's producer,
the broker and a worker's reader their work for it, which on a small machine is most of
a submit's CPU time (1,500 sequential submits on 2 cores: p99 about 6 ms with the
messages, about 3.5 ms without). The record is guarded meanwhile (``backend.unsent``):
should the client die before it decides, a worker produces it.

A mixin of :class:`yadtq.client.Client`, which has the backend, producer and config.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from yadtq.backend import PIPELINE_CHUNK, RedisBackend
from yadtq.broker import TaskProducer
from yadtq.config import Config
from yadtq.errors import BackendUnavailable
from yadtq.priority import Priority

logger = logging.getLogger("yadtq.client")

FIRST_MAP_CHUNK = 32  # tasks of a map stored before its workers are rung
LONE_CLAIM_WAIT = 0.005  # seconds a lone task waits to be claimed before it is produced
CLAIMS_MISSED_PAUSE = 1.0  # seconds lone tasks are produced at once after a wait in vain


def map_chunks(total: int) -> Iterator[tuple[int, int]]:
    """Where a map's chunks start and end: ``FIRST_MAP_CHUNK`` (its workers are rung once
    it is stored, and claim its tasks from their records), then ``PIPELINE_CHUNK`` each."""
    start, end = 0, min(total, FIRST_MAP_CHUNK)
    while start < total:
        yield start, end
        start, end = end, min(total, end + PIPELINE_CHUNK)


class WorkerWaking:
    """Ringing the workers' doorbells as tasks are sent."""

    backend: RedisBackend
    config: Config
    _producer: TaskProducer
    _claim_missed_at = float("-inf")  # when a lone task last waited in vain (monotonic)

    def _awaits_claims(self) -> bool:
        """Whether a lone task is to wait for a rung worker's claim before its message is
        produced: not for a while after one waited in vain (every slot busy, no worker
        that serves it, or none at all), so that a busy queue's submits do not wait."""
        return time.monotonic() - self._claim_missed_at >= CLAIMS_MISSED_PAUSE

    def _claimed_unsent(self, task_id: str, taken: threading.Event) -> bool:
        """Wait ``LONE_CLAIM_WAIT`` for a worker to claim a guarded lone task (``taken``);
        True when it was claimed, or ended, and needs no message."""
        if taken.wait(LONE_CLAIM_WAIT):
            return True
        self._claim_missed_at = time.monotonic()
        try:
            return not self.backend.unsent.producing(task_id)
        except BackendUnavailable as exc:  # produced all the same: a copy claim skips
            logger.debug("could not forget lone task %s's guard (%s)", task_id, exc)
            return False

    def _ring_early(self, partitions: set[int], batch_id: str, priority: Priority) -> None:
        """Wake the workers before the first messages go to Kafka: a ring naming the batch
        has them claim its first tasks from their records (``backend.record_claims``)."""
        if priority is not Priority.NORMAL:
            return  # the other levels are read by every worker, not woken by partition
        try:
            self.backend.ring(partitions, task_id=batch_id)
        except BackendUnavailable as exc:  # the ring after the flush, or a poll, finds them
            logger.debug("could not ring the workers' doorbells early (%s)", exc)

    def _flush(self, partitions: set[int]) -> None:
        """Wait until Kafka has the messages sent so far, then wake the workers of
        those partitions (and every worker's reader of the other levels they went to)."""
        levels = self._producer.flush()
        try:
            self.backend.ring(partitions, levels=levels)
        except BackendUnavailable as exc:  # the tasks are on their way; workers look anyway
            logger.warning("could not ring the workers' doorbells (%s); they will find the "
                           "tasks within %.1f s", exc, self.config.idle_wait)
