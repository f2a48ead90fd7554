"""The Redis backend (adapter layer): task records, batch counters, leases, events, heartbeats.

Redis, not the Kafka offset, is the source of truth for a task (DESIGN.md,
"Delivery guarantees"). Every status change is one Lua script from
``yadtq/lua`` that checks the move is legal, fences stale attempts, updates the
batch counters and publishes one event on the queue's channel, so clients
never poll per task. Every key is built by :class:`Keys`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    MasterDownError,
    NoScriptError,
    ReadOnlyError,
    TryAgainError,
)
from redis.retry import Retry

from yadtq.config import Config
from yadtq.errors import BackendError, BackendUnavailable
from yadtq.protocol import TaskMessage
from yadtq.status import COUNTERS, TaskStatus
from yadtq.values import Ref

PIPELINE_CHUNK = 1000
DOORBELL_RINGS = 16  # rings a doorbell keeps; an older one is dropped (Kafka still has the task)
UNNAMED_RING = "-"  # a ring for a batch: look in Kafka
WORKER_RECORD_TTL = 24 * 3600


@dataclass(frozen=True)
class Keys:
    """Every Redis key and channel yadtq uses, under one prefix."""

    prefix: str
    queue: str

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def task_history(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}:attempts"

    def batch_tasks(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:tasks"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{self.queue}:{worker_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers:{self.queue}"

    @property
    def leases(self) -> str:
        return f"{self.prefix}:leases:{self.queue}"

    @property
    def claimed_offsets(self) -> str:
        return f"{self.prefix}:claimed-offsets:{self.queue}"

    @property
    def retries(self) -> str:
        return f"{self.prefix}:retries:{self.queue}"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events:{self.queue}"

    def doorbell(self, partition: int) -> str:
        return f"{self.prefix}:doorbell:{self.queue}:{partition}"

    def blob(self, sha256: str) -> str:
        return f"{self.prefix}:blob:{sha256}"


@dataclass(frozen=True)
class Claim:
    """Outcome of a claim: ``attempt`` is set when the worker now holds the task."""

    task_id: str
    attempt: int | None
    skipped_because: str | None = None

    @property
    def claimed(self) -> bool:
        """True when this worker may run the task."""
        return self.attempt is not None


@dataclass(frozen=True)
class Outcome:
    """What a worker reports when an attempt ends; ``retry_at`` asks for another attempt."""

    task_id: str
    batch: str | None
    attempt: int
    status: TaskStatus
    result: Any = None
    error_type: str = ""
    error: str = ""
    traceback: str = ""
    retry_at: float | None = None
    retryable: bool = False
    result_json: str | None = None  # the result already encoded, when the caller has it
    ended_at: float | None = None  # when the attempt ended and freed its slot; None: now

    @property
    def verb(self) -> str:
        """What finish.lua does: success, failed or retry."""
        return "retry" if self.retry_at is not None else self.status.value

    @property
    def summary(self) -> str:
        """One line for the attempts history."""
        return f"{self.error_type}: {self.error}"[:500] if self.error_type else ""

    def fields(self) -> list[str]:
        """What finish.lua stores: the result JSON, or the error type, message and traceback."""
        if self.status is TaskStatus.SUCCESS:
            encoded = self.result_json if self.result_json is not None else json.dumps(self.result)
            return [encoded, "", ""]
        return [self.error_type, self.error, self.traceback]


def _load_script(client: redis.Redis, name: str) -> Script:
    source = resources.files("yadtq").joinpath("lua", name).read_text()
    return client.register_script(source)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_record(raw: dict[bytes, bytes]) -> dict[str, Any]:
    """A task hash as Python values: JSON fields parsed, times as floats."""
    record: dict[str, Any] = {_text(k): _text(v) for k, v in raw.items()}
    for name in ("args", "kwargs", "result"):
        if record.get(name):
            record[name] = json.loads(record[name])
    for name in ("queued_at", "started_at", "finished_at", "submitted_at", "requeued_at"):
        record[name] = float(record[name]) if record.get(name) else None
    for name in ("attempt", "index", "max_retries"):
        record[name] = int(record[name]) if record.get(name) else None
    return record


# Replies of a Redis that is loading its data, running a long script, read-only after
# a failover, or without a reachable master: each passes once the server is ready.
_TRANSIENT_REPLIES = ("LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN")
_TRANSIENT_TYPES = (redis.ConnectionError, redis.TimeoutError, ReadOnlyError, TryAgainError,
                    MasterDownError)  # BusyLoadingError is a ConnectionError


def is_transient(exc: redis.RedisError) -> bool:
    """True for the Redis errors that trying again later cures (the one place that decides)."""
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        return False  # a ConnectionError, but wrong credentials stay wrong
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


F = TypeVar("F", bound=Callable[..., Any])


def _translating(method: F) -> F:
    @functools.wraps(method)
    def call(self: RedisBackend, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except redis.RedisError as exc:
            raise self._translate(exc) from None
    return call  # type: ignore[return-value]


def _at_the_edge(cls: type[RedisBackend]) -> type[RedisBackend]:
    """Wrap every public method so no redis exception leaves the backend (DESIGN.md).

    A class decorator rather than one per method, so a method added later cannot forget.
    """
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and callable(member):
            setattr(cls, name, _translating(member))
    return cls


@_at_the_edge
class RedisBackend:
    """All of yadtq's Redis traffic for one queue.

    Every public method raises :class:`BackendUnavailable` (try again later) or
    :class:`BackendError` instead of a redis exception, within about
    ``connect_timeout`` seconds: that is also each command's socket timeout.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.keys = Keys(config.key_prefix, config.queue)
        self.redis = redis.Redis.from_url(
            config.redis_url,
            socket_connect_timeout=config.connect_timeout,
            socket_timeout=config.connect_timeout,
            socket_keepalive=True,
            health_check_interval=30,
            # One immediate retry on a fresh connection, so a connection Redis dropped
            # (a restart) is replaced unseen; never after a timeout, which would double
            # the time a caller waits (redis-py's default retries three times, backing off).
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        self._claim = _load_script(self.redis, "claim.lua")
        self._finish = _load_script(self.redis, "finish.lua")
        self._requeue = _load_script(self.redis, "requeue.lua")
        self._cancel = _load_script(self.redis, "cancel.lua")
        self._due_retries = _load_script(self.redis, "due_retries.lua")
        self._renew = _load_script(self.redis, "renew.lua")
        self._undelivered = _load_script(self.redis, "undelivered.lua")

    def check_connection(self) -> None:
        """Fail fast with the address when Redis does not answer.

        Raises:
            BackendUnavailable: Redis did not answer PING.
        """
        try:
            self.redis.ping()
        except redis.AuthenticationError as exc:
            raise BackendUnavailable(
                f"Redis at {self._address()} refused the credentials ({exc}); "
                "check the password in the Redis URL"
            ) from None
        except redis.RedisError as exc:
            raise BackendUnavailable(
                f"cannot reach Redis at {self._address()} (from {self.config.source}): {exc}; "
                "start Redis or fix YADTQ_REDIS_URL, or use yadtq.connect('local')"
            ) from None

    def _address(self) -> str:
        kwargs = self.redis.connection_pool.connection_kwargs
        if "path" in kwargs:
            return f"unix:{kwargs['path']}"
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    def _translate(self, exc: redis.RedisError) -> BackendUnavailable | BackendError:
        """The yadtq error for a redis one, naming the server and what to do."""
        cause = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, redis.TimeoutError):
            cause = f"no answer within {self.config.connect_timeout:g} s ({cause})"
        if is_transient(exc):
            return BackendUnavailable(
                f"Redis at {self._address()} is unavailable: {cause}; check that it is running "
                f"and reachable (address from {self.config.source}), then try again")
        return BackendError(f"Redis at {self._address()} refused a command: {cause}")

    def close(self) -> None:
        self.redis.close()

    def _run_scripts(
        self,
        calls: Sequence[tuple[Script, list[Any], list[Any]]],
        also: Callable[[redis.client.Pipeline], Any] | None = None,
    ) -> tuple[list[Any], list[Any]]:
        """Run ``also``'s commands and Lua scripts in one round trip; both's replies.

        Sends EVALSHA only: redis-py's pipelines would first ask SCRIPT EXISTS, a second
        round trip. A script Redis lost (after a restart) is loaded and its calls re-run.
        """
        replies, also_replies = self._evalsha(calls, also)
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if lost:
            for script in {id(calls[i][0]): calls[i][0] for i in lost}.values():
                script.sha = self.redis.script_load(script.script)
            for i, reply in zip(lost, self._evalsha([calls[i] for i in lost])[0], strict=True):
                replies[i] = reply
        for reply in [*also_replies, *replies]:
            if isinstance(reply, Exception):
                raise reply
        return replies, also_replies

    def _evalsha(
        self,
        calls: Sequence[tuple[Script, list[Any], list[Any]]],
        also: Callable[[redis.client.Pipeline], Any] | None = None,
    ) -> tuple[list[Any], list[Any]]:
        with self.redis.pipeline(transaction=False) as pipe:
            if also is not None:
                also(pipe)
            first = len(pipe)
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            replies = pipe.execute(raise_on_error=False)
        return replies[first:], replies[:first]

    # --- client side -------------------------------------------------------

    def enqueue(
        self,
        messages: Sequence[TaskMessage],
        batch_id: str | None = None,
        batch_total: int | None = None,
    ) -> None:
        """Write ``queued`` records before anything is produced.

        ``batch_total`` starts the batch's counters: pass it with a batch's first chunk.
        """
        now = time.time()
        for chunk in list(_chunks(messages, PIPELINE_CHUNK)) or [[]]:
            with self.redis.pipeline(transaction=False) as pipe:
                if batch_id is not None and batch_total is not None:
                    pipe.hset(
                        self.keys.batch(batch_id),
                        mapping={"total": batch_total, **dict.fromkeys(COUNTERS, 0),
                                 TaskStatus.QUEUED.value: batch_total, "created_at": now},
                    )
                    batch_total = None
                for message in chunk:
                    pipe.hset(self.keys.task(message.id), mapping=_record_fields(message, now))
                if batch_id is not None and chunk:
                    pipe.rpush(self.keys.batch_tasks(batch_id), *(m.id for m in chunk))
                pipe.execute()

    def put_blobs(self, blobs: dict[str, bytes]) -> None:
        """Store pickles under their digests, living as long as a finished task's record."""
        with self.redis.pipeline(transaction=False) as pipe:
            for sha256, data in blobs.items():
                pipe.set(self.keys.blob(sha256), data, ex=int(self.config.result_ttl))
            pipe.execute()

    def blob(self, sha256: str) -> bytes | None:
        """The pickle stored under ``sha256``, or None if it expired (or never was)."""
        return self.redis.get(self.keys.blob(sha256))

    def fail_undelivered(
        self,
        messages: Sequence[TaskMessage],
        error: str,
        batch_id: str | None = None,
        unwritten: int = 0,
    ) -> int:
        """Fail the still-queued tasks of a submit or map whose messages Kafka did not take.

        Nothing would ever run them. ``unwritten`` counts a batch's tasks that never
        got a record (the chunks after the failed one): they leave its counters, so
        the batch still adds up. Returns how many tasks were failed.
        """
        failed = 0
        first = True
        for chunk in list(_chunks(messages, PIPELINE_CHUNK)) or [[]]:
            keys: list[Any] = []
            for message in chunk:
                batch = message.batch or "-"
                keys += [self.keys.task(message.id), self.keys.batch(batch),
                         self.keys.batch_tasks(batch), self.keys.task_history(message.id)]
            args = [time.time(), self.config.result_ttl, self.keys.events, "BrokerUnavailable",
                    error, *(m.id for m in chunk)]
            shrink = None
            if first and batch_id is not None and unwritten:
                def shrink(pipe: redis.client.Pipeline) -> None:
                    pipe.hincrby(self.keys.batch(batch_id), "total", -unwritten)
                    pipe.hincrby(self.keys.batch(batch_id), "queued", -unwritten)
            first = False
            [count], _ = self._run_scripts([(self._undelivered, keys, args)], also=shrink)
            failed += int(count)
        return failed

    def ring(self, partitions: Iterable[int], task_id: str | None = None) -> None:
        """Wake the workers of these partitions: tasks were just produced to them.

        With ``task_id`` (a lone task, in no batch) the ring names the task, so the
        woken worker can claim it from its record at once rather than fetch it from
        Kafka first. A doorbell keeps only its newest rings, so it never grows.
        """
        with self.redis.pipeline(transaction=False) as pipe:
            for partition in partitions:
                pipe.lpush(self.keys.doorbell(partition), task_id or UNNAMED_RING)
                pipe.ltrim(self.keys.doorbell(partition), 0, DOORBELL_RINGS - 1)
            pipe.execute()

    def wait_for_ring(self, partitions: Sequence[int], timeout: float) -> str | None:
        """Sleep until one of these partitions' doorbells rings, or ``timeout`` seconds.

        Returns the task id the ring named, ``UNNAMED_RING``, or None if none rang.
        """
        rang = self.redis.blpop([self.keys.doorbell(p) for p in partitions], timeout)
        return None if rang is None else _text(rang[1])

    def claim_named(
        self, task_id: str, worker_id: str, served: Sequence[str], now: float | None = None
    ) -> tuple[TaskMessage | None, Claim]:
        """Claim a lone task by id, reading its message from its record: one round trip.

        A task whose name is not among ``served`` is left queued ("not served here")
        for its Kafka message to reach a worker that serves it.
        """
        now = time.time() if now is None else now
        [[reply]], [fields] = self._run_scripts(
            [self._claim_call([(task_id, "", "")], worker_id, now, limit=1, served=served)],
            also=lambda pipe: pipe.hmget(self.keys.task(task_id), *_PAYLOAD_FIELDS))
        if _text(reply[0]) != "ok":
            return None, Claim(task_id, None, _text(reply[1]))
        attempt = int(reply[1])
        return (_message_from_fields(task_id, attempt, [_text(v) for v in fields]),
                Claim(task_id, attempt))

    def task_record(self, task_id: str) -> dict[str, Any] | None:
        """The decoded task hash, or None if Redis holds no record."""
        raw = self.redis.hgetall(self.keys.task(task_id))
        return decode_record(raw) if raw else None

    def task_records(self, task_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Decoded task hashes in order, read in pipelined chunks."""
        records: list[dict[str, Any] | None] = []
        for chunk in _chunks(task_ids, PIPELINE_CHUNK):
            with self.redis.pipeline(transaction=False) as pipe:
                for task_id in chunk:
                    pipe.hgetall(self.keys.task(task_id))
                records.extend(decode_record(raw) if raw else None for raw in pipe.execute())
        return records

    def batch_counts(self, batch_id: str) -> dict[str, int]:
        """The batch counters: total and one per status (``status.COUNTERS``)."""
        raw = self.redis.hgetall(self.keys.batch(batch_id))
        return {
            _text(k): int(float(v)) for k, v in raw.items() if _text(k) != "created_at"
        }

    def batch_created_at(self, batch_id: str) -> float | None:
        """When the batch was submitted (unix seconds), if Redis still knows."""
        created = self.redis.hget(self.keys.batch(batch_id), "created_at")
        return float(created) if created else None

    def batch_task_ids(self, batch_id: str) -> list[str]:
        """The ids of a batch's tasks in submission order."""
        return [_text(i) for i in self.redis.lrange(self.keys.batch_tasks(batch_id), 0, -1)]

    def workers(self) -> list[dict[str, Any]]:
        """Every registered worker's last heartbeat record, newest first."""
        ids = [_text(i) for i in self.redis.zrevrange(self.keys.workers, 0, -1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hgetall(self.keys.worker(worker_id))
            raws = pipe.execute()
        return [{_text(k): _text(v) for k, v in raw.items()} for raw in raws if raw]

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
        [replies], _ = self._run_scripts(
            [self._claim_call([self._claim_entry(m, now, with_fields=m.plain) for m in messages],
                              worker_id, now, limit)],
            also=record_offsets)
        missing = [i for i, reply in enumerate(replies)
                   if _text(reply[0]) == "skip" and _text(reply[1]) == "missing"]
        if missing:
            claimed = sum(1 for reply in replies if _text(reply[0]) == "ok")
            [retried], _ = self._run_scripts([self._claim_call(
                [self._claim_entry(messages[i], now, with_fields=True) for i in missing],
                worker_id, now, limit - claimed)])
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        claims = []
        for message, reply in zip(messages, replies, strict=True):
            verdict = _text(reply[0])
            if verdict == "ok":
                claims.append(Claim(message.id, int(reply[1])))
            else:
                claims.append(Claim(message.id, None, _text(reply[1])))
        return claims

    @staticmethod
    def _claim_entry(message: TaskMessage, now: float, with_fields: bool) -> tuple[str, str, str]:
        """(task id, batch, fields to create a missing record from, or "") for claim.lua."""
        fields = json.dumps(_unbatched_fields(message, now)) if with_fields else ""
        return message.id, message.batch or "", fields

    def _claim_call(
        self, entries: Sequence[tuple[str, str, str]], worker_id: str, now: float, limit: int,
        served: Sequence[str] | None = None,
    ) -> tuple[Script, list[Any], list[Any]]:
        """claim.lua's keys and arguments for these (task id, batch, fields) entries.

        With ``served``, only tasks of those names are claimed; without, any.
        """
        keys: list[Any] = [self.keys.leases]
        args: list[Any] = [worker_id, now + self.config.lease_seconds, now, self.keys.events,
                           limit, "" if served is None else json.dumps(list(served))]
        for task_id, batch, fields in entries:
            keys += [self.keys.task(task_id), self.keys.batch(batch or "-"),
                     self.keys.task_history(task_id)]
            args += [task_id, batch, fields]
        return self._claim, keys, args

    def finish(self, outcome: Outcome, worker_id: str, now: float | None = None) -> str | None:
        """Store an outcome; returns None if accepted, else why it was refused."""
        return self.finish_many([outcome], worker_id, now)[0]

    def finish_many(
        self, outcomes: Sequence[Outcome], worker_id: str, now: float | None = None
    ) -> list[str | None]:
        """Store outcomes in one round trip; for each, None if accepted, else why refused."""
        if not outcomes:
            return []
        now = time.time() if now is None else now
        keys: list[Any] = [self.keys.leases, self.keys.retries]
        args: list[Any] = [worker_id, now, self.config.result_ttl, self.keys.events]
        for outcome in outcomes:
            batch = outcome.batch or "-"
            keys += [self.keys.task(outcome.task_id), self.keys.batch(batch),
                     self.keys.batch_tasks(batch), self.keys.task_history(outcome.task_id)]
            args += [outcome.task_id, outcome.attempt, outcome.verb,
                     "" if outcome.retry_at is None else outcome.retry_at, outcome.summary,
                     *outcome.fields(), now if outcome.ended_at is None else outcome.ended_at]
        [replies], _ = self._run_scripts([(self._finish, keys, args)])
        return [None if _text(reply[0]) == "ok"
                else "task is {} (attempt {}, worker {})".format(
                    _text(reply[1]), _text(reply[2]) or "?", _text(reply[3]) or "none")
                for reply in replies]

    def requeue(
        self,
        task_id: str,
        batch: str | None,
        *,
        worker_id: str,
        handback: bool = False,
        now: float | None = None,
    ) -> TaskMessage | None:
        """Move a processing task back to queued with attempt + 1.

        With ``handback`` it gives back ``worker_id``'s own task; without, the
        reaper ``worker_id`` takes a task whose lease has expired. Returns the
        message to produce again, or None when the compare-and-set found
        nothing to do.
        """
        now = time.time() if now is None else now
        reply = self._requeue(
            keys=[self.keys.task(task_id), self.keys.leases, self.keys.batch(batch or "-"),
                  self.keys.task_history(task_id)],
            args=[task_id, "handback" if handback else "expired", now, worker_id,
                  self.keys.events, *_PAYLOAD_FIELDS],
        )
        if _text(reply[0]) != "ok":
            return None
        return _message_from_fields(task_id, int(reply[1]), [_text(v) for v in reply[2:]])

    def cancel(self, task_id: str, batch: str | None, requested_by: str) -> str | None:
        """Cancel a queued or processing task; returns the status it had, or None."""
        reply = self._cancel(
            keys=[self.keys.task(task_id), self.keys.leases, self.keys.batch(batch or "-"),
                  self.keys.task_history(task_id), self.keys.retries],
            args=[task_id, time.time(), self.config.result_ttl, self.keys.events, requested_by],
        )
        return _text(reply[1]) if _text(reply[0]) == "ok" else None

    def statuses(self, task_ids: Sequence[str]) -> list[str]:
        """The current status of each task ("" for a missing record), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(self.keys.task(task_id), "status")
            return [_text(s) for s in pipe.execute()]

    def task_history(self, task_id: str) -> list[dict[str, Any]]:
        """Every recorded event of the task's attempts, oldest first."""
        return [json.loads(e) for e in self.redis.lrange(self.keys.task_history(task_id), 0, -1)]

    def take_due_retries(self, now: float, hold: float = 30.0, limit: int = 100) -> list[str]:
        """Ids of tasks whose retry backoff is over, held for this caller to produce."""
        return [_text(i) for i in self._due_retries(keys=[self.keys.retries],
                                                     args=[now, hold, limit])]

    def retry_message(self, task_id: str) -> TaskMessage | None:
        """The message to produce for a task waiting to retry, or None if it no longer waits."""
        values = self.redis.hmget(self.keys.task(task_id), "status", "attempt", *_PAYLOAD_FIELDS)
        if _text(values[0]) != TaskStatus.QUEUED.value:
            return None
        return _message_from_fields(task_id, int(values[1]), [_text(v) for v in values[2:]])

    def retries_sent(self, task_ids: Sequence[str]) -> None:
        """Forget retries once their messages are on the topic (or no longer wait)."""
        self.redis.zrem(self.keys.retries, *task_ids)

    def claimed_offsets(self) -> dict[int, int]:
        """Partition → the offset up to which its owner has claimed."""
        raw = self.redis.hgetall(self.keys.claimed_offsets)
        return {int(k): int(v) for k, v in raw.items()}

    def expired_leases(self, now: float, limit: int = 100) -> list[tuple[str, str | None]]:
        """(task id, batch id) of tasks whose lease ran out before ``now``."""
        ids = [_text(i) for i in self.redis.zrangebyscore(self.keys.leases, "-inf", now,
                                                          start=0, num=limit)]
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hget(self.keys.task(task_id), "batch")
            batches = pipe.execute()
        return [(task_id, _text(b) or None) for task_id, b in zip(ids, batches, strict=True)]

    def heartbeat(
        self, worker_id: str, info: dict[str, Any], leased: Iterable[str], now: float
    ) -> list[str]:
        """Record a heartbeat and renew the leases of the tasks this worker runs.

        Returns the ids among ``leased`` that were cancelled meanwhile.
        """
        expiry = now + self.config.lease_seconds
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.worker(worker_id),
                      mapping={**info, "last_heartbeat": now, "queue": self.config.queue})
            pipe.expire(self.keys.worker(worker_id), WORKER_RECORD_TTL)
            pipe.zadd(self.keys.workers, {worker_id: now})
            leased = list(leased)
            if leased:
                self._renew(keys=[self.keys.leases, *map(self.keys.task, leased)],
                            args=[worker_id, expiry, *leased], client=pipe)
            replies = pipe.execute()
        return [_text(i) for i in replies[-1]] if leased else []  # renew.lua's reply


_PAYLOAD_FIELDS = ("task", "args", "kwargs", "batch", "index", "max_retries", "timeout",
                   "submitted_at", "retry_on", "retry_backoff", "code", "pickled",
                   "pickles_sig")


def _message_from_fields(task_id: str, attempt: int, values: list[str]) -> TaskMessage:
    """Rebuild a task message from the stored payload fields (in ``_PAYLOAD_FIELDS`` order)."""
    (task, args, kwargs, batch, index, max_retries, timeout, submitted, retry_on, backoff,
     code, pickled, pickles_sig) = values
    shipped = json.loads(code) if code else None
    return TaskMessage(
        id=task_id,
        task=task,
        args=tuple(json.loads(args or "[]")),
        kwargs=json.loads(kwargs or "{}"),
        batch=batch or None,
        index=int(index) if index else None,
        attempt=attempt,
        max_retries=int(max_retries) if max_retries else None,
        timeout=float(timeout) if timeout else None,
        submitted_at=float(submitted) if submitted else None,
        retry_on=tuple(json.loads(retry_on)) if retry_on else (),
        retry_backoff=float(backoff) if backoff else None,
        code=Ref.from_dict(shipped["ref"], "code") if shipped else None,
        python=shipped["python"] if shipped else None,
        pickled=Ref.from_dict(json.loads(pickled), "pickled") if pickled else None,
        pickles_sig=pickles_sig or None,
    )


def _record_fields(message: TaskMessage, now: float) -> dict[str, str]:
    """The task hash fields a message starts with (all strings, none empty)."""
    fields = {
        "status": TaskStatus.QUEUED.value,
        "task": message.task,
        "args": json.dumps(list(message.args)),
        "kwargs": json.dumps(dict(message.kwargs)),
        "attempt": str(message.attempt),
        "queued_at": repr(now),
        "format": "plain" if message.plain else "v1",
    }
    optional = {
        "batch": message.batch,
        "index": message.index,
        "max_retries": message.max_retries,
        "timeout": message.timeout,
        "submitted_at": message.submitted_at,
        "retry_on": json.dumps(list(message.retry_on)) if message.retry_on else None,
        "retry_backoff": message.retry_backoff,
        # A shipped function and pickled arguments, kept to produce the task again.
        "code": json.dumps({"ref": message.code.to_dict(), "python": message.python})
        if message.code else None,
        "pickled": json.dumps(message.pickled.to_dict()) if message.pickled else None,
        "pickles_sig": message.pickles_sig,
    }
    fields.update({k: str(v) for k, v in optional.items() if v is not None})
    return fields


def _unbatched_fields(message: TaskMessage, now: float) -> dict[str, str]:
    """Fields for a record a claim creates: never counted in a batch, so it names none."""
    fields = _record_fields(message, now)
    fields.pop("batch", None)
    return fields


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
