"""How a client wakes the workers (client layer): the doorbells it rings as it sends,
and the chunks a map is sent in so that its workers are rung early.

A mixin of :class:`yadtq.client.Client`, which has the backend, producer and config.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from yadtq.backend import PIPELINE_CHUNK, RedisBackend
from yadtq.broker import TaskProducer
from yadtq.config import Config
from yadtq.errors import BackendUnavailable
from yadtq.priority import Priority

logger = logging.getLogger("yadtq.client")

FIRST_MAP_CHUNK = 32  # tasks of a map stored before its workers are rung


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
