"""The Redis backend: task records, batch counters, leases, events, heartbeats.

Redis, not the Kafka offset, is the source of truth for a task (DESIGN.md,
"Delivery guarantees"). Every status change is one Lua script from
``yadtq/backend/lua`` that checks the move is legal, fences stale attempts, updates the
counters and publishes one event on the queue's channel, so clients never poll per task.
Every key is built by :class:`~yadtq.backend.keys.Keys`, every script is called through
its codec in :mod:`yadtq.backend.scripts`, and a task's hash is written and read by
:mod:`yadtq.backend.records`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError

from yadtq.backend.due_sets import UNSENT_GRACE, Retries, ScheduledTasks, Unblocked, Unsent
from yadtq.backend.durability import Confirmation
from yadtq.backend.failover import Failover
from yadtq.backend.holders import Holders
from yadtq.backend.keys import Keys
from yadtq.backend.level_news import LevelNews
from yadtq.backend.limit_store import LimitStore, claim_limits
from yadtq.backend.listings import Listings
from yadtq.backend.moves import Claim, Outcome, Stored
from yadtq.backend.parts import chunks
from yadtq.backend.queue_stats import QueueStats, note_batch, read_queue_stats, recent_batches
from yadtq.backend.read_positions import ReadPositions
from yadtq.backend.record_claims import RecordClaims
from yadtq.backend.records import (
    RecordSigner,
    decode_record,
    message_from_payload,
    own_values,
    shared_fields,
    shares_fields,
    text,
    unbatched_fields,
)
from yadtq.backend.redis_client import redis_client, sentinel_target
from yadtq.backend.redis_errors import address, at_the_edge
from yadtq.backend.schedule_store import ScheduleStore
from yadtq.backend.script_runner import Scripts
from yadtq.backend.scripts import (
    CancelCall,
    ClaimCall,
    ClaimTask,
    EnqueueCall,
    EnqueueReply,
    FinishCall,
    RenewCall,
    RequeueCall,
)
from yadtq.backend.unrunnable import Unrunnable
from yadtq.backend.workflows import Edges, Workflows
from yadtq.config import Config
from yadtq.errors import BackendUnavailable
from yadtq.priority import Priority
from yadtq.protocol import TaskMessage
from yadtq.status import COUNTERS, TaskStatus

DOORBELL_RINGS = 16  # rings a doorbell keeps; an older one is dropped (Kafka still has the task)
UNNAMED_RING = "-"  # a ring for a batch: look in Kafka
WORKER_RECORD_TTL = 24 * 3600
UNBLOCKED_HOLD = 5.0  # seconds a worker holds the children its outcomes readied, to produce


@at_the_edge
class RedisBackend:
    """All of yadtq's Redis traffic for one queue.

    Every public method raises :class:`BackendUnavailable` (try again later) or
    :class:`BackendError` instead of a redis exception, within about
    ``connect_timeout`` seconds: that is also each command's socket timeout.
    """

    def __init__(self, config: Config, worker_id: str | None = None) -> None:
        """``worker_id``: name every connection after this worker, so that other workers
        see at once when its process is gone (``holders.Holders``)."""
        self.config = config
        self.keys = Keys(config.key_prefix, config.queue)
        self.redis = redis_client(
            config.redis_url,
            client_name=None if worker_id is None else self.keys.connection(worker_id),
            socket_connect_timeout=config.connect_timeout,
            socket_timeout=config.connect_timeout,
            socket_keepalive=True,
            health_check_interval=30,
            # One immediate retry on a fresh connection, so a connection Redis dropped
            # (a restart) is replaced unseen; never after a timeout, which would double
            # the time a caller waits (redis-py's default retries three times, backing off).
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        self._scripts = Scripts(self.redis, self.keys, Confirmation.of(config, self.keys))
        self.retries = Retries(config, self.redis, self._scripts, self.keys)
        self.scheduled = ScheduledTasks(config, self.redis, self._scripts, self.keys)
        self.unblocked = Unblocked(config, self.redis, self._scripts, self.keys)
        self.unsent = Unsent(config, self.redis, self._scripts, self.keys)
        self.read_positions = ReadPositions(config, self.redis, self._scripts, self.keys)
        self.level_news = LevelNews(config, self.redis, self._scripts, self.keys)
        self.workflows = Workflows(config, self.redis, self._scripts, self.keys)
        self.edges = Edges(config, self.redis, self._scripts, self.keys)
        self.unrunnable = Unrunnable(config, self.redis, self._scripts, self.keys)
        self.schedules = ScheduleStore(config, self.redis, self._scripts, self.keys)
        self.limits = LimitStore(config, self.redis, self._scripts, self.keys)
        self.listings = Listings(config, self.redis, self._scripts, self.keys)
        self.holders = Holders(config, self.redis, self._scripts, self.keys)
        self.failover = Failover(config, self.redis, self._scripts, self.keys)
        self.record_claims = RecordClaims(config, self.redis, self._scripts, self.keys)

    def check_connection(self) -> None:
        """Fail fast with the address when Redis does not answer.

        Raises:
            BackendUnavailable: Redis did not answer PING.
        """
        try:
            self.redis.ping()
        except MasterNotFoundError as exc:
            target = sentinel_target(self.redis)
            assert target is not None  # only a sentinel client raises it
            raise BackendUnavailable(
                f"no sentinel at {target.hosts} knows master {target.master!r} (from "
                f"{self.config.source}): {exc}; check the master name and that the sentinels run"
            ) from None
        except redis.AuthenticationError as exc:
            raise BackendUnavailable(
                f"Redis at {address(self.redis)} refused the credentials ({exc}); "
                "check the password in the Redis URL"
            ) from None
        except redis.RedisError as exc:
            raise BackendUnavailable(
                f"cannot reach Redis at {address(self.redis)} (from {self.config.source}): {exc}; "
                "start Redis or fix YADTQ_REDIS_URL, or use yadtq.connect('local')"
            ) from None

    def close(self) -> None:
        self.redis.close()

    # --- client side -------------------------------------------------------

    def enqueue(
        self,
        messages: Sequence[TaskMessage],
        batch_id: str | None = None,
        batch_total: int | None = None,
        ring: int | None = None,
        due: str = "",
        edges: Sequence[str] | None = None,
        workflow: str | None = None,
        unsent: bool = False,
    ) -> EnqueueReply:
        """Write ``queued`` records before anything is produced.

        ``batch_total`` starts the batch's counters: pass it with a batch's first chunk.
        ``ring``: a lone task's partition, whose doorbell is rung naming the task by the
        script that writes its record, once written, so a worker claims it from its
        record while Kafka takes the message (see :meth:`ring`). ``due``
        (``"in:<seconds>"`` or ``"at:<unix seconds>"``) writes them ``scheduled`` instead,
        to be produced by a worker when due (``scheduled``). ``edges`` (one per message,
        ``dependencies.Edges.spec``) writes tasks with parents ``blocked`` (or ``skipped``),
        and ``workflow`` lists them in that workflow. ``unsent`` (a lone task with ``ring``)
        guards one whose client may not produce it: claimed meanwhile, it needs no message
        (``unsent``).

        Returns:
            When they are due (on Redis's clock), and which began blocked or skipped:
            only ``queued`` ones are for the caller to produce.

        Raises:
            UnknownDependency: a parent has no record (nothing of that chunk was written).
        """
        status = TaskStatus.SCHEDULED if due else TaskStatus.QUEUED
        now, secret = time.time(), self.config.secret
        # Messages of one submit or map share all but their own fields: one call a chunk.
        spans = [(start, list(group)) for start, chunk in chunks(messages)
                 for start, group in _groups(start, chunk)]
        if not spans and batch_id is not None and batch_total is not None:  # an empty map
            with self.redis.pipeline(transaction=False) as pipe:
                self._start_batch(pipe, batch_id, batch_total, now, status)
                pipe.execute()
        starts_batch = batch_id is not None and batch_total is not None

        def start_batch(pipe: redis.client.Pipeline) -> None:
            assert batch_id is not None and batch_total is not None
            self._start_batch(pipe, batch_id, batch_total, now, status)

        total = EnqueueReply(0, None, [], [])
        for number, (start, group) in enumerate(spans):
            shared = shared_fields(group[0], now)
            if workflow:
                shared["workflow"] = workflow
            signer = RecordSigner(secret, shared) if secret else None
            call = EnqueueCall(batch_id, shared, [(m.id, own_values(m, signer)) for m in group],
                               ring=ring if number == 0 else None, rings_kept=DOORBELL_RINGS,
                               due=due, now=now, ttl=self.config.result_ttl,
                               edges=edges[start:start + len(group)] if edges else None,
                               workflow=workflow, unsent_grace=UNSENT_GRACE if unsent else None)
            reply, _ = self._scripts.run(
                call, also=start_batch if number == 0 and starts_batch else None)
            total = EnqueueReply(total.written + reply.written, reply.due_at,
                                 total.blocked + reply.blocked, total.skipped + reply.skipped)
        return total

    def _start_batch(self, pipe: redis.client.Pipeline, batch_id: str, total: int,
                     now: float, status: TaskStatus) -> None:
        pipe.hset(self.keys.batch(batch_id), mapping={
            "total": total, **dict.fromkeys(COUNTERS, 0), status.value: total,
            "created_at": now})
        note_batch(pipe, self.keys, batch_id, now)

    def put_blobs(self, blobs: dict[str, bytes]) -> None:
        """Store pickles under their digests, living as long as a finished task's record."""
        with self.redis.pipeline(transaction=False) as pipe:
            for sha256, data in blobs.items():
                pipe.set(self.keys.blob(sha256), data, ex=int(self.config.result_ttl))
            pipe.execute()

    def blob(self, sha256: str) -> bytes | None:
        """The pickle stored under ``sha256``, or None if it expired (or never was)."""
        return self.redis.get(self.keys.blob(sha256))

    def ring(self, partitions: Iterable[int], task_id: str | None = None,
             levels: Iterable[Priority] = ()) -> None:
        """Wake the workers of these partitions, and the readers of the other ``levels``
        (``level_news``): tasks were just produced to them.

        With ``task_id`` (a lone task, in no batch; or a batch's id) the ring names the
        task (the batch), so the woken worker can claim it (the batch's first tasks) from
        its record at once rather than fetch it from Kafka first (``record_claims``). A
        doorbell keeps only its newest rings, so it never grows.
        """
        with self.redis.pipeline(transaction=False) as pipe:
            for partition in partitions:
                self._ring(pipe, partition, task_id or UNNAMED_RING)
            self.level_news.add_to(pipe, levels)
            pipe.execute()

    def _ring(self, pipe: redis.client.Pipeline, partition: int, ring: str) -> None:
        pipe.lpush(self.keys.doorbell(partition), ring)
        pipe.ltrim(self.keys.doorbell(partition), 0, DOORBELL_RINGS - 1)

    def wait_for_ring(self, partitions: Sequence[int], timeout: float) -> str | None:
        """Sleep until one of these partitions' doorbells rings, or ``timeout`` seconds.

        Returns the task id the ring named, ``UNNAMED_RING``, or None if none rang.
        """
        rang = self.redis.blpop([self.keys.doorbell(p) for p in partitions], timeout)
        return None if rang is None else text(rang[1])

    def task_record(self, task_id: str) -> dict[str, Any] | None:
        """The decoded task hash, or None if Redis holds no record."""
        raw = self.redis.hgetall(self.keys.task(task_id))
        return decode_record(raw) if raw else None

    def task_records(self, task_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Decoded task hashes in order, read in pipelined chunks."""
        records: list[dict[str, Any] | None] = []
        for _, chunk in chunks(task_ids):
            with self.redis.pipeline(transaction=False) as pipe:
                for task_id in chunk:
                    pipe.hgetall(self.keys.task(task_id))
                records.extend(decode_record(raw) if raw else None for raw in pipe.execute())
        return records

    def batch_counts(self, batch_id: str) -> dict[str, int]:
        """The batch counters: total and one per status (``status.COUNTERS``)."""
        raw = self.redis.hgetall(self.keys.batch(batch_id))
        return {
            text(k): int(float(v)) for k, v in raw.items() if text(k) != "created_at"
        }

    def batch_created_at(self, batch_id: str) -> float | None:
        """When the batch was submitted (unix seconds), if Redis still knows."""
        created = self.redis.hget(self.keys.batch(batch_id), "created_at")
        return float(created) if created else None

    def batch_task_ids(self, batch_id: str) -> list[str]:
        """The ids of a batch's tasks in submission order."""
        return [text(i) for i in self.redis.lrange(self.keys.batch_tasks(batch_id), 0, -1)]

    def queue_stats(self) -> QueueStats:
        """The queue's counters (``queue_stats``): one read, exact, never reset."""
        return read_queue_stats(self.redis, self.keys)

    def recent_batches(self, limit: int) -> list[tuple[str, float]]:
        """The newest batches still in Redis, newest first: (id, created at)."""
        return recent_batches(self.redis, self.keys, limit)

    def workers(self) -> list[dict[str, Any]]:
        """Every registered worker's last heartbeat record, newest first."""
        ids = [text(i) for i in self.redis.zrevrange(self.keys.workers, 0, -1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hgetall(self.keys.worker(worker_id))
            raws = pipe.execute()
        return [{text(k): text(v) for k, v in raw.items()} for raw in raws if raw]

    def pubsub(self) -> redis.client.PubSub:
        """A pub/sub connection, not yet subscribed."""
        return self.redis.pubsub(ignore_subscribe_messages=False)

    # --- worker side -------------------------------------------------------

    def claim_many(
        self,
        messages: Sequence[TaskMessage],
        worker_id: str,
        now: float | None = None,
        offsets: dict[int, int] | None = None,
        limit: int | None = None,
    ) -> list[Claim]:
        """Claim each message's task with a lease, in one round trip (two if a record is missing).

        ``offsets`` (partition → next offset) records how far the owner of each
        partition has claimed, for idle workers that steal from the rest. With
        ``limit``, at most that many are claimed, the first claimable ones in order.
        """
        now = time.time() if now is None else now
        if not messages:
            if offsets:
                self.redis.hset(self.keys.claimed_offsets, mapping=offsets)
            return []
        record_offsets = (lambda pipe: pipe.hset(self.keys.claimed_offsets, mapping=offsets)
                          ) if offsets else None
        # A yadtq client wrote the record before producing, so its fields are sent only
        # for plain-format messages, and for the rare message that arrived without one.
        limit = len(messages) if limit is None else limit
        replies, _ = self._scripts.run(
            self._claim_call([self._claim_task(m, now, with_fields=m.plain) for m in messages],
                             worker_id, now, limit),
            also=record_offsets)
        missing = [i for i, reply in enumerate(replies) if reply.missing]
        if missing:
            claimed = sum(1 for reply in replies if reply.ok)
            retried, _ = self._scripts.run(self._claim_call(
                [self._claim_task(messages[i], now, with_fields=True) for i in missing],
                worker_id, now, limit - claimed))
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        return [Claim.of(message.id, reply)
                for message, reply in zip(messages, replies, strict=True)]

    def _claim_task(self, message: TaskMessage, now: float, with_fields: bool) -> ClaimTask:
        """A message's share of a claim, with the fields to create a missing record from
        (signed: the worker checked the message)."""
        fields = unbatched_fields(message, now, self.config.secret) if with_fields else None
        return ClaimTask(message.id, message.batch, fields, claim_limits(message))

    def _claim_call(
        self, tasks: Sequence[ClaimTask], worker_id: str, now: float, limit: int,
        served: Sequence[str] | None = None, need_message: Sequence[str] = (),
    ) -> ClaimCall:
        """A claim of ``tasks`` under a new lease; with ``served``, only of tasks so named."""
        return ClaimCall(worker_id, now + self.config.lease_seconds, now, limit, tasks, served,
                         need_message=need_message)

    def finish(self, outcome: Outcome, worker_id: str, now: float | None = None) -> str | None:
        """Store an outcome; returns None if accepted, else why it was refused."""
        return self.finish_many([outcome], worker_id, now).refusals[0]

    def finish_many(
        self, outcomes: Sequence[Outcome], worker_id: str, now: float | None = None,
        counts: dict[str, int] | None = None,
    ) -> Stored:
        """Store outcomes in one round trip.

        ``counts`` (the worker's processed and failed totals) go into its record in the
        same round trip, ahead of the outcomes' events: whoever hears of an outcome
        finds it counted, rather than a heartbeat later.

        Returns:
            For each outcome, None if accepted, else why it was refused; and the children
            the final ones readied, held (``unblocked``) for this caller to produce.
        """
        if not outcomes and counts is None:
            return Stored([], [])
        now = time.time() if now is None else now
        tasks = [outcome.finish_task(now) for outcome in outcomes]

        def count(pipe: redis.client.Pipeline) -> None:
            pipe.hset(self.keys.worker(worker_id), mapping=counts)
            pipe.expire(self.keys.worker(worker_id), WORKER_RECORD_TTL)

        finished, _ = self._scripts.run(
            FinishCall(worker_id, now, self.config.result_ttl, tasks, hold=UNBLOCKED_HOLD),
            also=count if counts is not None else None)
        return Stored([None if reply.ok else "task is {} (attempt {}, worker {})".format(
                           reply.status, "?" if reply.attempt is None else reply.attempt,
                           reply.worker or "none")
                       for reply in finished.replies], finished.readied)

    def requeue(
        self,
        task_id: str,
        batch: str | None,
        *,
        worker_id: str,
        handback: bool = False,
        dead_holder: str = "",
        now: float | None = None,
    ) -> TaskMessage | None:
        """Move a processing task back to queued with attempt + 1.

        With ``handback`` it gives back ``worker_id``'s own task; with
        ``dead_holder``, the reaper ``worker_id`` takes a task that worker held
        when it died; else the reaper takes a task whose lease has expired.
        Returns the message to produce again, or None when the compare-and-set
        found nothing to do.
        """
        now = time.time() if now is None else now
        reply, _ = self._scripts.run(RequeueCall(task_id, batch, handback, now, worker_id,
                                                 dead_holder))
        if reply.attempt is None or reply.payload is None:
            return None
        return message_from_payload(task_id, reply.attempt, reply.payload)

    def cancel(self, task_id: str, batch: str | None, requested_by: str) -> str | None:
        """Cancel a queued or processing task; returns the status it had, or None."""
        call = CancelCall(task_id, batch, time.time(), self.config.result_ttl, requested_by)
        reply, _ = self._scripts.run(call)
        return reply.status if reply.ok else None

    def statuses(self, task_ids: Sequence[str]) -> list[str]:
        """The current status of each task ("" for a missing record), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(self.keys.task(task_id), "status")
            return [text(s) for s in pipe.execute()]

    def task_history(self, task_id: str) -> list[dict[str, Any]]:
        """Every recorded event of the task's attempts, oldest first."""
        return [json.loads(e) for e in self.redis.lrange(self.keys.task_history(task_id), 0, -1)]

    def expired_leases(self, now: float, limit: int = 100) -> list[tuple[str, str | None]]:
        """(task id, batch id) of tasks whose lease ran out before ``now``."""
        ids = [text(i) for i in self.redis.zrangebyscore(self.keys.leases, "-inf", now,
                                                          start=0, num=limit)]
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hget(self.keys.task(task_id), "batch")
            batches = pipe.execute()
        return [(task_id, text(b) or None) for task_id, b in zip(ids, batches, strict=True)]

    def heartbeat(
        self, worker_id: str, info: dict[str, Any], leased: Iterable[str], now: float
    ) -> list[str]:
        """Record a heartbeat and renew the leases of the tasks this worker runs.

        Returns the ids among ``leased`` that were cancelled meanwhile.
        """
        def beat(pipe: redis.client.Pipeline) -> None:
            pipe.hset(self.keys.worker(worker_id),
                      mapping={**info, "last_heartbeat": now, "queue": self.config.queue})
            pipe.expire(self.keys.worker(worker_id), WORKER_RECORD_TTL)
            pipe.zadd(self.keys.workers, {worker_id: now})

        call = RenewCall(worker_id, now + self.config.lease_seconds, list(leased))
        return self._scripts.run(call, also=beat)[0]


def _groups(start: int, chunk: Sequence[TaskMessage]
            ) -> Iterator[tuple[int, list[TaskMessage]]]:
    """Runs of messages that share their record's shared fields, each with its index."""
    for _, group in itertools.groupby(chunk, key=shares_fields):
        messages = list(group)
        yield start, messages
        start += len(messages)
