"""The worker's main loop (worker runtime): take tasks, claim them in Redis, start them.

:meth:`Worker.run` repeats one turn of named steps until the worker stops:
free slots → take deliveries from the Kafka adapter → accept them (undecodable
ones to the dead-letter topic, ones only another live worker serves handed on
to it, ``yadtq.routing``) → claim them in Redis with a lease, in one round
trip → start what was claimed in the execution slots → mark them claimed, so
the adapter may commit their offsets (``intake``). While tasks are long, what waits in other
workers' partitions is taken too, the oldest first (``oldest_first``). With no
free slot the adapter only keeps the group membership; with nothing to take the
worker steals, or else sleeps until a client rings for a batch.

Threads hand work over, and none holds a lock across a Redis or Kafka call:

- this loop's thread is the only one that talks to the consumer;
- the doorbells' thread (``doorbells``) claims a lone task (a batch's first tasks)
  a ring names from its Redis record (``record_starts``), whatever turn the loop is in,
  while a slot is free;
- each of the N slot threads (``slots``) takes the next claimed task from a queue,
  runs it (``execution``) and hands its outcome to the outcome store's thread
  (``outcomes``), which stores whatever ended meanwhile in one round trip.
  While tasks are short (under 5 ms on average), the loop claims ahead, a group
  of tasks a slot, so a slot goes from one task to the next without waiting for
  a claim, and hands the claimed tasks waiting together (up to ``GROUP``) to its
  task process in one round trip; long tasks are claimed only for free slots, by
  the slot that frees itself, from candidates the loop prepared (``next_up``);
- the maintenance thread (``maintenance``) beats, renews leases, stops
  cancelled tasks, sends due retries and scheduled tasks, and reaps expired leases.

Only tasks registered by the worker's own task modules run, and, on a worker
started to trust code, functions shipped by value whose signed pickles check
out (``admission``, ``shipped``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from yadtq import protocol, registry
from yadtq.backend import Claim, Outcome, RedisBackend
from yadtq.broker import Delivery, TaskConsumer, TaskProducer, create_topics
from yadtq.config import Config
from yadtq.errors import BackendUnavailable, BrokerUnavailable
from yadtq.worker import execution, oldest_first, outcomes
from yadtq.worker.admission import Admission, UnsignedTask
from yadtq.worker.doorbells import Doorbells
from yadtq.worker.handing_on import HandOn
from yadtq.worker.held import HeldTasks
from yadtq.worker.intake import Intake
from yadtq.worker.maintenance import Maintenance
from yadtq.worker.next_up import NextUp
from yadtq.worker.occupancy import Occupancy
from yadtq.worker.outcomes import OutcomeStore
from yadtq.worker.record_starts import RecordStarts
from yadtq.worker.redis_retry import GAVE_UP, retry_redis
from yadtq.worker.rung_copies import RungCopies
from yadtq.worker.slots import Slots
from yadtq.worker.spans import worker_spans
from yadtq.worker.worker_metrics import NO_METRICS, WorkerMetrics

logger = logging.getLogger(__name__)

DEFAULT_TASK_MODULES = ("worker_node.tasks",)
SLOT_WAIT = 0.2  # seconds; with every slot busy, how long to wait for one between group polls
IDLE_WAIT_MAX = 1.0  # seconds; the longest sleep on the doorbells, once idle for a while
MIN_WAIT = 0.01  # seconds; the shortest (a wait of 0 on the doorbells would never end)
STOLEN_AT_ONCE = 2  # tasks a slot one steal may take, at most (the owners keep the rest)


class Worker:
    """One worker process's runtime: a consumer-group member with N execution slots."""

    def __init__(
        self,
        config: Config,
        *,
        name: str | None = None,
        concurrency: int = 4,
        task_modules: Sequence[str] = DEFAULT_TASK_MODULES,
        mode: str = "process",
        steal: bool = True,
        shutdown_grace: float = 30.0,
        clock: Callable[[], float] = time.time,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        """``metrics_port``: serve this worker's Prometheus metrics on
        ``metrics_host:metrics_port`` (``worker_metrics``); None: serve none.

        Raises:
            ConfigurationError: the metrics port cannot be bound (checked before connecting).
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.config = config
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._metrics = NO_METRICS if metrics_port is None else WorkerMetrics(
            queue=config.queue, worker=self.name, slots=concurrency, host=metrics_host,
            port=metrics_port)
        self.concurrency = concurrency
        self.steals = steal
        self.mode = mode
        self.shutdown_grace = shutdown_grace
        self.clock = clock
        self.task_names = registry.load_modules(task_modules, require_tasks=not config.trust_code)
        self._spans = worker_spans(config, self.name)  # a span per attempt, if it traces
        self.trust_code = config.trust_code
        # Message routes this worker runs: its task names, and shipped code if it trusts it.
        self._served = frozenset(self.task_names) | (
            {protocol.SHIPPED_CODE} if self.trust_code else set())
        self.started_at = clock()
        self._identity = {  # the heartbeat record's fields that never change
            "name": self.name, "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": self.started_at, "concurrency": concurrency, "mode": mode,
            "tasks": ",".join(self.task_names), "trusts_code": "1" if self.trust_code else "0",
            "heartbeat_interval": config.heartbeat_interval,
            "settings": json.dumps(config.shared_settings(), sort_keys=True),
            "requires_signed": "1" if config.signatures_required else "0",
        }
        self._held = HeldTasks(self.name)  # claimed, outcome not yet stored
        self._occupancy = Occupancy(concurrency)  # how many more to claim
        self._slot_freed = threading.Event()
        self._stopping = threading.Event()
        self._stop_reason = "stopped"
        self._poll_waits = True  # False when the next messages are expected already there
        self._idle_wait = config.idle_wait  # how long the next sleep on the doorbells lasts
        self._rung_copies = RungCopies()  # claimed by doorbell, Kafka copy not read yet
        self.backend = RedisBackend(config, worker_id=self.name)
        self.backend.check_connection()
        create_topics(config)
        self.producer = TaskProducer(config, linger_ms=2)
        self.consumer = TaskConsumer(
            config, client_id=self.name, on_assignment=self._on_assignment,
            claimed_up_to=self.backend.read_positions.claimed if steal else None,
            level_offsets=self.backend.read_positions, level_news=self.backend.level_news,
            stopping=self._stopping)
        self._hand_on = HandOn(config, self.backend, worker=self.name, served=self._served,
                               send=self._produce, flushed=self._flushed, clock=clock,
                               stopping=self._stopping)
        self._admission = Admission(config, self.backend, worker=self.name,
                                    task_names=self.task_names, served=self._served,
                                    served_elsewhere=self._hand_on.served_elsewhere)
        self._intake = Intake(self.consumer, tasks_topic=config.tasks_topic, served=self._served,
                              dead_letter=self._dead_letter, refused=self._admission.end_refused,
                              flushed=self._flushed, unserved=self._hand_on.unserved,
                              rung_copies=self._rung_copies, metrics=self._metrics)
        self._next_up = NextUp(self.backend, self.name, clock)  # a freed slot's next long task
        self._maintenance = Maintenance(
            config, self.backend, self.producer, worker=self.name, record=self._record,
            on_cancelled=self._held.stop_cancelled, partitions=lambda: self.consumer.partitions,
            clock=clock)
        self._outcomes = OutcomeStore(self.backend, self.name, self._finished, clock,
                                      self._stopping, self._maintenance.unblocking.put)
        self._slots = Slots(
            config, self.backend, worker=self.name,
            runners=execution.make_runners(mode, concurrency, task_modules), ended=self._ended,
            grouping=lambda: self._occupancy.short, attach=self._held.attach,
            cancelled=self._held.cancelled, clock=clock, stopping=self._stopping,
            metrics=self._metrics, spans=self._spans)
        self._metrics.watch_slots(self._slots.busy)
        self._record_starts = RecordStarts(
            self.backend, worker=self.name, served=self._served, clock=clock,
            occupancy=self._occupancy, hold=self._held.hold,
            start=lambda m, signed, copied: self._start(m, m.attempt, signed, copied),
            rung_copies=self._rung_copies, slot_freed=self._slot_freed)
        self._doorbells = Doorbells(
            self.backend, worker=self.name, partitions=lambda: self.consumer.partitions,
            free=lambda: self._free_slots() > 0, claim=self._record_starts.named,
            reserve=self._occupancy.reserve_idle, claim_batch=self._record_starts.batch_head,
            retry_wait=config.idle_wait, stopping=self._stopping)

    # --- lifecycle ---------------------------------------------------------

    def run(self) -> None:
        """Serve tasks until :meth:`stop` is called or a signal stops the worker."""
        logger.info(
            "Worker %s: serving queue %r (topic %s) with %d %s slots; tasks: %s",
            self.name, self.config.queue, self.config.tasks_topic, self.concurrency, self.mode,
            ", ".join(self.task_names) or "none",
        )
        self._outcomes.start()
        self._maintenance.start()
        self._slots.start()
        self._doorbells.start()
        try:
            while not self._stopping.is_set():
                self._serve()
                self.consumer.commit()
        finally:
            self._shutdown()

    def stop(self, reason: str = "stop requested") -> None:
        """Ask the worker to stop taking work; :meth:`run` then winds down."""
        self._stop_reason = reason
        self._stopping.set()
        self._slot_freed.set()
        self._doorbells.wake()

    # --- the loop's steps --------------------------------------------------

    def _serve(self) -> None:
        """One turn: free slots → take → accept → claim → start → mark claimed."""
        free = self._free_slots()
        if free <= 0:
            self._wait_for_a_slot()
            return
        self._settle_next_up()
        everywhere = self._takes_oldest()
        self._doorbells.looking()  # which answers the rings that came since it last slept
        taken = self._intake.take(free + (oldest_first.LOOKED_PAST if everywhere else 0),
                                  wait=self._poll_waits, everywhere=everywhere)
        if taken is None:
            return  # the worker is stopping; nothing was committed, so nothing is lost
        if not taken.deliveries:
            # Our partitions are drained: look again without waiting (a ring, or tasks
            # started, say when more may be on their way).
            self._poll_waits = False
            if not self._steal(min(free, STOLEN_AT_ONCE * self.concurrency)):
                self._sleep_until_rung()
            return
        claims = self._claim(taken.tasks, offsets=taken.offsets,
                             limit=free if everywhere else None)
        if claims is None:
            logger.warning("Worker %s: stopping while Redis is unreachable; %d task(s) taken "
                           "but not claimed stay uncommitted for the partition's next owner",
                           self.name, len(taken.tasks))
            return
        self._intake.settle(taken, claims)
        started = self._start_claimed(taken.tasks, claims)
        if started:  # not for copies of rung tasks only: an idle worker reads them seldom
            self._idle_wait = self.config.idle_wait
            self.consumer.busy()  # and steal at once when idle again
        # Wait on the next poll only while more may be on its way: tasks started (none:
        # only copies of tasks claimed elsewhere), and the last poll could not take all.
        self._poll_waits = bool(started) and not self.consumer.drained

    def _settle_next_up(self, preparing: bool = False) -> None:
        for taken, claims in self._next_up.withdraw(preparing):
            self._intake.settle(taken, claims)

    def _takes_oldest(self) -> bool:
        """While tasks are long, a free slot takes the queue's oldest task, whoever's
        partition holds it (greedy list scheduling): none sits behind a running one."""
        return not self._occupancy.short and self.steals

    def _free_slots(self) -> int:
        return self._occupancy.free()

    def _wait_for_a_slot(self) -> None:
        """Every slot is busy: keep the group membership while waiting for one; while
        tasks are long, prepare the next claim for the slot that frees (``next_up``)."""
        look_around = self._takes_oldest()
        self._settle_next_up(preparing=look_around)
        # A batch just rung may have messages on their way: wait for them, else the first
        # slot to free finds nothing prepared and waits 10-17 ms for the loop to claim.
        fetching = self._poll_waits and self.consumer.batch_arriving
        if look_around and not self._intake.prepare(self._next_up.prepare, fetching) \
                and fetching:
            wait = MIN_WAIT  # its partitions not paused
        else:
            self.consumer.hold(look_around=look_around)  # (slots claim what is prepared)
            # the rest of a rung batch still in Kafka: the next turn's take fetches it
            wait = MIN_WAIT if self.consumer.awaiting else SLOT_WAIT
        self._slot_freed.wait(wait)
        self._slot_freed.clear()  # the next turn counts the free slots anyway

    def _flushed(self, what: str) -> bool:
        """Wait until Kafka has what was sent, before its offsets can be committed; if it
        does not take it, stop the worker (its partitions' next owner reads them again)."""
        try:
            levels = self.producer.flush()
        except BrokerUnavailable as exc:
            self.stop(f"Kafka did not take the {what}: {exc}")
            return False
        self.backend.level_news.announce(levels)
        return True

    def _claim(
        self,
        messages: list[protocol.TaskMessage],
        offsets: dict[int, int] | None = None,
        limit: int | None = None,
    ) -> list[Claim] | None:
        """Claim the messages' tasks with a lease (the first ``limit`` claimable ones), and
        record how far each partition is claimed; None: stopping while Redis is down."""
        if not messages and not offsets:
            return []
        # Reserved first: the doorbells' thread may have claimed for free slots meanwhile.
        reserved = self._occupancy.reserve(
            len(messages) if limit is None else min(limit, len(messages)))
        claims = self._retry_redis(
            lambda: self.backend.claim_many(messages, self.name, now=self.clock(),
                                            offsets=offsets, limit=reserved),
            "claim tasks",
        )
        claimed = [] if claims is GAVE_UP else [
            (message, claim.attempt) for message, claim in zip(messages, claims, strict=True)
            if claim.attempt is not None]
        for message, attempt in claimed:
            self._held.hold(message, attempt)  # its slot reserved
        if len(claimed) < reserved:  # the doorbells' thread, finding none free, waits for this
            self._occupancy.release(reserved - len(claimed))
            self._doorbells.wake()
        return None if claims is GAVE_UP else claims

    def _start_claimed(self, messages: list[protocol.TaskMessage], claims: list[Claim]) -> int:
        """Start every message this worker claimed; returns how many."""
        started = 0
        for message, claim in zip(messages, claims, strict=True):
            if claim.claimed:
                self._start(message, claim.attempt)
                started += 1
            else:
                logger.debug("Worker %s: skipped task %s: %s", self.name, message.id,
                             claim.skipped_because)
        return started

    def _steal(self, free: int) -> bool:
        """Claim and start tasks waiting in other workers' partitions; True if any.

        One claim goes through the candidates in order and takes the first ``free``
        still queued (others may have been stolen already). Owners dead-letter the
        bad ones and hand on the tasks this worker does not serve.
        """
        try:
            deliveries = self.consumer.steal(oldest_first=self._takes_oldest())
        except BackendUnavailable as exc:  # counts as a look that found nothing: backs off
            logger.warning("Worker %s: cannot look for tasks to steal: %s", self.name, exc)
            deliveries = []
        if deliveries is None:
            return False  # not looking now: joining, or backing off
        self._metrics.read(deliveries)
        candidates = [d.message for d in deliveries
                      if d.message is not None and d.message.route in self._served]
        claims = self._claim(candidates, limit=free) if candidates else []
        started = self._start_claimed(candidates, claims) if claims else 0
        if started:
            logger.debug("Worker %s: stole %d task(s) from other partitions", self.name,
                         started)
        if started or self._free_slots() > 0:
            self.consumer.stole(started)
        else:  # the doorbells' thread filled the slots meanwhile: no look in vain
            self.consumer.busy()
        return started > 0

    def _sleep_until_rung(self) -> None:
        """Nothing to do: sleep until a client rings one of our partitions' doorbells for
        a batch (the doorbells' thread claims the tasks rings name meanwhile).

        A poll that finds nothing is not repeated at once: the embedded broker
        would be asked hundreds of times a second. yadtq's clients and workers ring
        for every task they produce; a task from a producer that rings no doorbell
        is found within ``idle_wait`` (0.2 s) of a busy spell, and within a second
        once the worker has idled: each silent wait is twice the last, up to 1 s,
        so an idle worker costs next to no CPU. A wait never outlasts the next look
        for tasks to steal.
        """
        partitions = self.consumer.partitions
        if not partitions:
            return  # joining the group: the next poll waits
        steal_due = self.consumer.steal_due_in()  # an idle worker looks to steal in time
        wait = self._idle_wait if steal_due is None else min(self._idle_wait,
                                                             max(steal_due, MIN_WAIT))
        batch = self._doorbells.sleep(wait)
        # Only a batch's ring is worth a poll that waits for messages to arrive, and
        # shortens the next sleeps. Lone tasks' rings do not: their tasks are claimed, and
        # their Kafka copies (to be skipped) can wait. After them or no ring at all, a
        # quick look (its fetch answered by the next) keeps an idle worker near no CPU
        # and still finds a task from a client that rings no doorbell within two idle
        # waits.
        self._idle_wait = self.config.idle_wait if batch else min(
            2 * self._idle_wait, max(IDLE_WAIT_MAX, self.config.idle_wait))
        self._poll_waits = batch
        if batch:
            self.consumer.expect_batch()

    # --- running a task ----------------------------------------------------

    def _start(self, message: protocol.TaskMessage, attempt: int,
               record_signed: bool = True, copied: bool = True) -> None:
        """Run a claimed task, or end it refused (dead-lettered if unsigned and unproduced)."""
        refusal = self._admission.refusal(message, record_signed)
        if refusal is not None:
            if isinstance(refusal, UnsignedTask) and not copied:
                self.producer.dead_letter(str(refusal), worker=self.name, at=self.clock(),
                                          message=message)
            self._ended(message, outcomes.failed(message, attempt, refusal))
            return
        self._slots.put(message, attempt)

    def _ended(self, message: protocol.TaskMessage, report: Outcome) -> None:
        """Free the slot and hand the outcome to the outcome store; while tasks are long,
        the slot first claims its next task from what the loop prepared (``next_up``).

        The outcome keeps when its slot was freed as the task's finish time: storing
        it may wait for other outcomes' round trip, while the slot runs the next task.
        """
        report = replace(report, ended_at=self.clock())
        if self._takes_oldest() and not self._stopping.is_set():
            next_task = self._next_up.claim_next()
            if next_task is not None:  # the slot stays counted, for its next task
                self._occupancy.kept(self._slots.mean_run)
                self._held.hold(*next_task)
                if self._next_up.prepared < self.concurrency:  # others' slots free soon too
                    self._slot_freed.set()  # the loop settles the claim, prepares afresh
                self._outcomes.put(message, report)
                self._start(*next_task)
                return
        if self._occupancy.ended(self._slots.mean_run):
            self._slot_freed.set()  # first: the loop claims the next while this is stored
        self._outcomes.put(message, report)
        self._doorbells.wake()  # a slot is free for a rung task

    def _finished(self, message: protocol.TaskMessage, report: Outcome, refused: str | None
                  ) -> None:
        """Account for a stored outcome (on the outcome store's thread)."""
        self._held.release(message.id)
        if refused:
            logger.warning("Worker %s: outcome of task %s attempt %d refused: %s",
                           self.name, message.id, report.attempt, refused)
        elif report.retry_at is not None:
            logger.info("Worker %s: task %s attempt %d failed (%s); retry in %.1f s",
                        self.name, message.id, report.attempt, report.error_type,
                        report.retry_at - self.clock())
        elif report.retryable and 0 < outcomes.max_retries(message) < report.attempt:
            self._dead_letter(f"retries exhausted after attempt {report.attempt}: "
                              f"{report.error_type}: {report.error}", message=message)

    # --- what the other threads ask of the worker ----------------------------

    def _on_assignment(self) -> None:
        self._maintenance.beat_now()  # the queue's clients see the new partitions at once
        self._doorbells.wake()  # listen to the new partitions' doorbells

    def _record(self, status: str) -> tuple[dict[str, Any], list[str]]:
        """This worker's heartbeat record and the ids of the tasks it holds leases for."""
        if status == "running" and self._stopping.is_set():
            status = "stopping"
        leased = self._held.ids()
        return {**self._identity, "in_flight": len(leased), "status": status,
                "partitions": ",".join(map(str, self.consumer.partitions)),
                "topic_partitions": self.consumer.topic_partitions,
                "waiting": json.dumps(self._rung_copies.uncounted(self.consumer.waiting))
                }, leased

    # --- sending to Kafka --------------------------------------------------

    def _dead_letter(self, reason: str, *, delivery: Delivery | None = None,
                     message: protocol.TaskMessage | None = None) -> None:
        where = delivery.where if delivery is not None else f"task {message.id}"
        logger.warning("Worker %s: dead-lettered %s: %s", self.name, where, reason)
        self.producer.dead_letter(reason, worker=self.name, at=self.clock(), delivery=delivery,
                                  message=message)

    def _produce(self, message: protocol.TaskMessage, partition: int | None = None) -> None:
        """Produce a task again, to ``partition`` if given, else where its id hashes."""
        self.producer.send(
            message.id,
            protocol.encode(message, self.config.max_message_bytes, self.config.secret),
            partition=partition, priority=message.priority, trace=message.trace)

    def _retry_redis(self, step: Callable[[], Any], what: str) -> Any:
        return retry_redis(step, what, worker=self.name, stopping=self._stopping)

    # --- shutdown ----------------------------------------------------------

    def _shutdown(self) -> None:
        """Let running tasks finish (up to the grace), store their outcomes, hand back the
        rest, leave the group, and record the stop."""
        logger.info("Worker %s: stopping (%s); %d task(s) in flight", self.name,
                    self._stop_reason, len(self._held))
        self._doorbells.stop()  # first: it claims nothing the slots would not run
        self._slots.stop(self.shutdown_grace)  # claimed tasks no slot has begun go back
        self._outcomes.close(timeout=outcomes.FINISH_RETRY_SECONDS)
        self._maintenance.hand_back(self._held.messages())
        self.consumer.close()
        self._maintenance.stop()
        try:
            self.producer.flush()
            self.producer.close()
        except BrokerUnavailable as exc:
            logger.error("Worker %s: %s", self.name, exc)
        self.backend.close()
        self._metrics.close()  # before the runners go, which the busy-slot gauge counts
        self._slots.close()
        self._spans.close()
        logger.info("Worker %s: stopped (%s); processed %d, failed %d", self.name,
                    self._stop_reason, self._outcomes.processed, self._outcomes.failed)
