"""A worker's background duties, on their own thread, and its hand-back (worker runtime).

Every heartbeat interval, and at once when asked: record the worker in Redis
and renew the leases of what it runs (the reply names tasks cancelled while
running, which the worker then stops), produce again the retries whose backoff
is over, produce the lone tasks whose client died before it produced them, and
re-queue the tasks whose lease expired (DESIGN.md, "Delivery guarantees"). More
often, every ``DEATH_CHECK_INTERVAL``: re-queue the tasks of any worker that died
(its Redis connections are gone), so they run again within a second of its death.
Like RQ's
maintenance tasks, these are safe to run in every worker at once: each step is
a compare-and-set in Redis. While Redis is away, only this thread waits. A
stopping worker hands its unfinished tasks back to the queue through the same
re-queue. Every due check, too: fire the queue's due schedules (``schedule_firing``).
Every heartbeat, wake tasks waiting for a concurrency limit that a missed wake-up left
behind (``backend.limits``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from yadtq import protocol
from yadtq.backend import RedisBackend
from yadtq.backend.due_sets import Retries
from yadtq.backend.holders import SERVER_FIELD
from yadtq.broker import TaskProducer
from yadtq.config import Config
from yadtq.errors import BackendUnavailable, BrokerUnavailable
from yadtq.worker.failover_repair import FailoverRepair
from yadtq.worker.schedule_firing import ScheduleFirer
from yadtq.worker.unblocking import Unblocking

logger = logging.getLogger(__name__)

DEATH_CHECK_INTERVAL = 0.5  # seconds between looks for workers whose connections are gone
DUE_CHECK_INTERVAL = 0.2  # seconds between looks for scheduled tasks now due


class Maintenance:
    """Heartbeat, lease renewal, due retries and the reaper, every heartbeat interval;
    dead workers' tasks, every death check; scheduled tasks now due, every due check."""

    def __init__(
        self,
        config: Config,
        backend: RedisBackend,
        producer: TaskProducer,
        *,
        worker: str,
        record: Callable[[str], tuple[dict[str, Any], list[str]]],
        on_cancelled: Callable[[list[str]], None],
        partitions: Callable[[], list[int]],
        clock: Callable[[], float],
    ) -> None:
        """``record(status)``: the worker's heartbeat record and the ids it holds leases
        for; ``partitions()``: its partitions, where retried and reaped tasks go."""
        self.config = config
        self._backend = backend
        self._producer = producer
        self._worker = worker
        self._record = record
        self._on_cancelled = on_cancelled
        self._partitions = partitions
        self._clock = clock
        self.unblocking = Unblocking(backend, self.produce_now, worker)
        self._firer = ScheduleFirer(backend, worker)
        self._failover = FailoverRepair(backend, self.produce_now, worker,
                                        grace=2 * config.heartbeat_interval)
        self._detect_deaths = True  # off when Redis refuses CLIENT LIST
        self._now = threading.Event()  # beat at once
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{worker}-maintenance",
                                        daemon=True)

    def start(self) -> None:
        """Start the duties' thread, and the one producing readied children."""
        self._thread.start()
        self.unblocking.start()

    def beat_now(self) -> None:
        """Heartbeat without waiting for the interval (a new assignment, say)."""
        self._now.set()

    def stop(self, status: str = "stopped") -> None:
        """Stop the thread, then record the worker one last time with ``status``."""
        self._stopped.set()
        self._now.set()
        self._thread.join(timeout=5)
        self.unblocking.stop()
        try:
            self.heartbeat(self._clock(), status)
        except BackendUnavailable as exc:
            logger.warning("Worker %s: could not record the stop: %s", self._worker, exc)

    def _run(self) -> None:
        """Beat, send due retries and reap every interval, and look for dead workers in
        between; Redis being away skips a round.

        The interval is the backoff: leases need renewing the moment Redis is back.
        One warning when Redis goes away and one line when it is back, not one a beat.
        """
        unavailable_since: float | None = None
        next_beat = next_death_check = time.monotonic()
        while not self._stopped.is_set():
            now = self._clock()
            if time.monotonic() >= next_beat:
                # The server first: the heartbeat names it (``backend.holders``).
                duties = (self.repair_failover, self._beat, self.send_due_retries,
                          self.send_unsent, self.fire_due_schedules, self.wake_limited,
                          self.send_due_scheduled, self.repair_blocked, self.reap)
                next_beat = time.monotonic() + self.config.heartbeat_interval
                next_death_check = time.monotonic() + DEATH_CHECK_INTERVAL
            elif time.monotonic() >= next_death_check:
                duties = (self.fire_due_schedules, self.send_due_scheduled, self.reap_dead)
                next_death_check = time.monotonic() + DEATH_CHECK_INTERVAL
            else:
                duties = (self.fire_due_schedules, self.send_due_scheduled)
            for duty in duties:
                try:
                    duty(now)
                except BackendUnavailable as exc:
                    if unavailable_since is None:
                        unavailable_since = time.monotonic()
                        logger.warning("Worker %s: Redis unreachable, %s skipped; trying again "
                                       "every %.1f s: %s",
                                       self._worker, duty.__name__.strip("_"),
                                       self.config.heartbeat_interval, exc)
                    break
                except Exception:  # noqa: BLE001 - the heartbeat must outlive any one failure
                    logger.exception("Worker %s: %s failed", self._worker, duty.__name__)
            else:
                if unavailable_since is not None:
                    logger.info("Worker %s: Redis is back after %.1f s; heartbeats resumed",
                                self._worker, time.monotonic() - unavailable_since)
                    unavailable_since = None
            if unavailable_since is not None:  # only the full round tries Redis again
                wait = max(0.0, next_beat - time.monotonic())
            else:
                wait = min(DUE_CHECK_INTERVAL, max(0.0, next_beat - time.monotonic()))
            if self._now.wait(wait):
                self._now.clear()
                next_beat = time.monotonic()

    def _beat(self, now: float) -> None:
        """Heartbeat, then stop what was cancelled (the heartbeat's reply names it)."""
        cancelled = self.heartbeat(now)
        if cancelled:
            self._on_cancelled(cancelled)

    def heartbeat(self, now: float, status: str = "running") -> list[str]:
        """Record the worker in Redis and renew its leases; returns cancelled task ids."""
        info, leased = self._record(status)
        info = {**info, "fired": self._firer.fired,  # schedule occurrences it fired
                SERVER_FIELD: self._failover.server}  # so its death is seen at once
        return self._backend.heartbeat(self._worker, info, leased, now)

    def send_due_retries(self, now: float) -> int:
        """Produce again the tasks whose retry backoff is over; returns how many."""
        return self._send_queued(self._backend.retries, self._backend.retries.take_due(now))

    def send_unsent(self, _now: float) -> int:
        """Produce the lone tasks whose client died before it produced them (on Redis's
        clock, ``backend.unsent``); returns how many."""
        return self._send_queued(self._backend.unsent, self._backend.unsent.take_due())

    def _send_queued(self, due_set: Retries, taken: list[str]) -> int:
        """Produce the taken entries of a due set of queued tasks, to this worker's
        partitions, and forget them; returns how many were still queued."""
        sent_to = [self._produce(message, self._partitions())
                   for message in due_set.messages(taken)] if taken else []
        if taken:
            self._flush_and_ring(sent_to)
            due_set.sent(taken)
        return len(sent_to)

    def send_due_scheduled(self, _now: float) -> int:
        """Produce the scheduled tasks now due, dealt over the partitions; returns how many.

        Due times are judged on Redis's clock, not this worker's (``_now``): one clock
        for every worker. Every worker looks; each due task is taken by one, and one
        that dies before producing leaves it to be taken again (``backend.scheduled``).
        """
        scheduled = self._backend.scheduled
        taken = scheduled.take_due()
        if not taken:
            return 0
        messages = scheduled.release(taken, self._worker)
        sent_to = [self._produce(message, []) for message in messages]
        if sent_to:
            self._flush_and_ring(sent_to)
        scheduled.sent(taken)
        return len(sent_to)

    def wake_limited(self, _now: float) -> int:
        """Wake tasks waiting for a concurrency limit whose shares are free though no
        wake-up reached them (on Redis's clock); returns how many. They are due at once,
        so :meth:`send_due_scheduled`, next in the round, produces them."""
        return self._backend.limits.wake_stranded()

    def repair_failover(self, _now: float) -> int:
        """After Redis changed (a failover), one worker repairs what lost writes broke."""
        return self._failover.look()

    def repair_blocked(self, _now: float) -> int:
        """Move blocked tasks nothing would move, warning of each; returns how many."""
        repaired = self._backend.edges.repair()
        for task_id in repaired:
            logger.warning("Worker %s: task %s was blocked though its parents had all ended; "
                           "it was moved on now (queued, or skipped after a parent that "
                           "failed)", self._worker, task_id)
        if repaired:
            self.unblocking.wake()
        return len(repaired)

    def fire_due_schedules(self, _now: float) -> int:
        """Fire the schedules now due, on Redis's clock (not ``_now``); returns how many
        tasks were written. They wait in the scheduled set, due at their occurrences, so
        :meth:`send_due_scheduled`, next in the round, produces them."""
        return self._firer.fire_due()

    def reap(self, now: float) -> int:
        """Re-queue the tasks of workers that died, and tasks whose lease expired before
        ``now``; returns how many.

        A worker that hangs keeps its connections, and its leases cover it.
        Either way the attempt number moves on, so a late outcome of the old
        attempt is refused: a task never has two results. One task's failure is
        logged and skipped, never stops the sweep.
        """
        sent_to = self._requeue_dead(now)
        sent_to += [self._requeue(task_id, batch, now, "its lease expired")
                    for task_id, batch in self._backend.expired_leases(now)]
        return self._produced(sent_to)

    def reap_dead(self, now: float) -> int:
        """Re-queue the tasks of workers whose process died; returns how many.

        A dead process has no connection left to Redis (the kernel closes its
        sockets at once), so its tasks run again within a death check, rather
        than after their whole lease.
        """
        return self._produced(self._requeue_dead(now))

    def _requeue_dead(self, now: float) -> list[int | None]:
        return [self._requeue(task_id, batch, now, f"its worker {holder} died", holder)
                for task_id, batch, holder in self._dead_holders()]

    def _produced(self, sent_to: list[int | None]) -> int:
        """Wake the partitions re-queued tasks went to; returns how many tasks."""
        reaped = [partition for partition in sent_to if partition is not None]
        if reaped:
            self._flush_and_ring(reaped)
        return len(reaped)

    def _dead_holders(self) -> list[tuple[str, str | None, str]]:
        if not self._detect_deaths:
            return []
        dead = self._backend.holders.dead(self._worker,
                                         restarted_within=2 * self.config.heartbeat_interval)
        if dead is None:
            self._detect_deaths = False
            logger.info("Worker %s: Redis refuses CLIENT LIST, so a dead worker's tasks run "
                        "again when their leases expire (lease %.0f s)", self._worker,
                        self.config.lease_seconds)
            return []
        return dead

    def _requeue(self, task_id: str, batch: str | None, now: float, why: str,
                 dead_holder: str = "") -> int | None:
        """Re-queue a reaped task and produce it again; returns its partition, or None."""
        try:
            message = self._backend.requeue(task_id, batch, worker_id=self._worker,
                                            dead_holder=dead_holder, now=now)
            if message is None:
                return None
            partition = self._produce(message, self._partitions())
        except Exception:  # noqa: BLE001
            logger.exception("Worker %s: could not reap task %s", self._worker, task_id)
            return None
        logger.warning("Worker %s: task %s queued again as attempt %d: %s", self._worker,
                       task_id, message.attempt, why)
        return partition

    def hand_back(self, unfinished: list[protocol.TaskMessage]) -> None:
        """Give a stopping worker's unfinished tasks back to the queue, so other workers
        run them now rather than after their leases expire."""
        sent_to = []
        for task in unfinished:
            try:
                message = self._backend.requeue(task.id, task.batch, worker_id=self._worker,
                                                handback=True, now=self._clock())
            except BackendUnavailable as exc:
                logger.error("Worker %s: could not hand back task %s (%s); its lease will "
                             "expire and another worker will run it", self._worker, task.id,
                             exc)
                continue
            if message is not None:
                sent_to.append(self._produce(message, []))  # ours are about to go
                logger.info("Worker %s: handed back task %s as attempt %d", self._worker,
                            message.id, message.attempt)
        if sent_to:
            try:
                self._flush_and_ring(sent_to)
            except (BrokerUnavailable, BackendUnavailable) as exc:
                logger.error("Worker %s: handed-back tasks may wait for their leases to "
                             "expire: %s", self._worker, exc)

    def _produce(self, message: protocol.TaskMessage, partitions: list[int]) -> int:
        """Produce a task again, to one of ``partitions`` (this worker's: a dead worker's
        wait for a rebalance, ours are served now), else to the next one dealt; returns
        the partition."""
        partition = random.choice(partitions) if partitions else self._producer.next_partition()
        self._producer.send(
            message.id,
            protocol.encode(message, self.config.max_message_bytes, self.config.secret),
            partition=partition, priority=message.priority, trace=message.trace,
        )
        return partition

    def produce_now(self, messages: list[protocol.TaskMessage]) -> None:
        """Produce tasks dealt over the partitions, and wake their workers. One alone goes
        to a partition of this worker (served now, not after a dead owner's rebalance), and,
        in no batch, its doorbell names it, so it is claimed from its record at once."""
        alone = len(messages) == 1
        sent_to = [self._produce(message, self._partitions() if alone else [])
                   for message in messages]
        levels = self._producer.flush()
        lone = messages[0].id if alone and messages[0].batch is None else None
        self._backend.ring(set(sent_to), task_id=lone, levels=levels)

    def _flush_and_ring(self, partitions: list[int]) -> None:
        """Wait until Kafka has what was produced, then wake those partitions' workers
        (and the readers of the levels it went to)."""
        levels = self._producer.flush()
        self._backend.ring(set(partitions), levels=levels)
