"""The task producer (Kafka adapter), shared by client and worker.

It deals a batch's messages round-robin over the partitions of their priority
level's tasks topic (``yadtq.priority``),
sends a task to one partition (a retry, a hand-on, a reaped task), sends dead
letters, and turns kafka-python's many failure types into one
:class:`BrokerUnavailable` that says how many tasks were not delivered. A flush
checks every send since the last one, so a message Kafka refused is never taken
for delivered.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Sequence
from typing import Any

from yadtq import protocol, trace_context
from yadtq.broker.clients import make_producer
from yadtq.broker.delivery import Delivery
from yadtq.config import Config
from yadtq.errors import BrokerUnavailable
from yadtq.priority import Priority
from yadtq.trace_context import Trace

# Seconds a send may take to be acknowledged: longer than a leader failover after a
# broker dies (Apache Kafka fences it after broker.session.timeout.ms, 9 s by default,
# then elects new leaders), so a submit during a failover waits instead of failing.
DELIVERY_TIMEOUT = 30.0


class TaskProducer:
    """Sends task messages (already encoded) to the tasks topic, and dead letters."""

    def __init__(self, config: Config, **overrides: Any) -> None:
        """``overrides``: kafka-python producer settings (``linger_ms``, ``batch_size``).

        Raises:
            BrokerUnavailable: no broker answered within the connect timeout.
        """
        self.config = config
        self._producer = make_producer(config, **overrides)
        try:  # the tasks topic's partitions, known from the start: dealing needs no broker
            self._producer.partitions_for(config.tasks_topic)
        except Exception as exc:  # kafka-python raises several unrelated types here
            self._producer.close(timeout=0)
            raise BrokerUnavailable(f"Kafka at {config.bootstrap} does not show topic "
                                    f"{config.tasks_topic}: {exc}") from exc
        # Dealing starts at a random partition: lone submits from fresh processes spread
        # over the workers instead of all landing on partition 0's.
        self._next_partition = random.randrange(1 << 30)
        # Since the last flush: how many sends, and what Kafka refused (filled by the
        # sends' errbacks; holding no future keeps a 100,000-task map's memory down).
        self._sent = 0
        self._refusals: list[Exception] = []
        self._levels: set[Priority] = set()  # levels other than normal sent to
        self._sent_lock = threading.Lock()  # client and worker threads share a producer

    def deal(self, keys: Sequence[str], payloads: Sequence[bytes],
             priority: Priority = Priority.NORMAL, trace: Trace = (),
             traces: Sequence[Trace] | None = None) -> set[int]:
        """Send each payload (keyed by its task id) to the next partition in turn of its
        level's topic; returns the partitions used. Sent is not delivered: :meth:`flush`
        waits for that. Their W3C trace context headers: ``trace``, the same for all (a
        map's), or ``traces``, one per payload.

        Raises:
            BrokerUnavailable: the producer refused a message.
        """
        topic = priority.topic(self.config.tasks_topic)
        used = set()
        try:
            partitions = sorted(self._producer.partitions_for(topic))
            shared = trace_context.headers(trace)
            for number, (key, payload) in enumerate(zip(keys, payloads, strict=True)):
                partition = self._deal(partitions)
                headers = shared if traces is None else trace_context.headers(traces[number])
                self._track(self._producer.send(topic, payload, key=key.encode(),
                                                partition=partition, headers=headers), priority)
                used.add(partition)
        except Exception as exc:  # kafka-python raises several unrelated types here
            raise self._undelivered(len(payloads), exc) from exc
        return used

    def partitions_ahead(self, count: int, priority: Priority = Priority.NORMAL) -> set[int]:
        """The partitions the next ``count`` dealt messages of ``priority`` would go to
        (none taken): a map's workers are woken before its messages are sent.

        Raises:
            BrokerUnavailable: the topic's partitions are unknown and no broker answers.
        """
        partitions = self._partitions(priority, count)
        return {partitions[(self._next_partition + 1 + i) % len(partitions)]
                for i in range(min(count, len(partitions)))}

    def next_partition(self) -> int:
        """The partition the next dealt message goes to, taken now: a lone task's
        doorbell is rung before its message is sent.

        Raises:
            BrokerUnavailable: the topic's partitions are unknown and no broker answers.
        """
        return self._deal(self._partitions(Priority.NORMAL, 1))

    def _partitions(self, priority: Priority, count: int) -> list[int]:
        """The partitions of ``priority``'s topic, in order (``count``: the messages that
        cannot be sent if none are known)."""
        try:
            return sorted(self._producer.partitions_for(priority.topic(self.config.tasks_topic)))
        except Exception as exc:  # kafka-python raises several unrelated types here
            raise self._undelivered(count, exc) from exc

    def _deal(self, partitions: list[int]) -> int:
        self._next_partition = (self._next_partition + 1) % len(partitions)
        return partitions[self._next_partition]

    def send(self, key: str, payload: bytes, partition: int | None = None,
             priority: Priority = Priority.NORMAL, trace: Trace = ()) -> None:
        """Send one task message to its level's topic, to ``partition`` if given, else
        where its key hashes, with its trace context (if any) as headers."""
        self._track(self._producer.send(priority.topic(self.config.tasks_topic), payload,
                                        key=key.encode(), partition=partition,
                                        headers=trace_context.headers(trace)), priority)

    def send_until(self, key: str, payload: bytes, partition: int, done: threading.Event,
                   priority: Priority = Priority.NORMAL, trace: Trace = ()) -> None:
        """Send one message now (untracked) and wait until Kafka has it or the caller sets
        ``done``: a lone task a worker took from its Redis record needs no copy, which
        then goes on unchecked.

        Raises:
            BrokerUnavailable: Kafka refused it, or neither came within the delivery timeout.
        """
        timeout = max(self.config.connect_timeout, DELIVERY_TIMEOUT)
        try:
            sent = self._producer.send(priority.topic(self.config.tasks_topic), payload,
                                       key=key.encode(), partition=partition,
                                       headers=trace_context.headers(trace))
        except Exception as exc:  # kafka-python raises several unrelated types here
            raise self._undelivered(1, exc) from exc
        sent.add_both(lambda _: done.set())
        if not done.wait(timeout):
            raise self._undelivered(1, TimeoutError(f"no answer within {timeout:g} s"))
        if sent.is_done and sent.failed():
            raise self._undelivered(1, sent.exception)

    def dead_letter(self, reason: str, *, worker: str, at: float,
                    delivery: Delivery | None = None,
                    message: protocol.TaskMessage | None = None) -> None:
        """Send a message no worker can accept (a ``delivery`` that holds no task, or a
        task ``message`` out of retries) to the dead-letter topic, with the reason."""
        letter: dict[str, Any] = {"reason": reason, "worker": worker, "at": at}
        if delivery is not None:
            letter |= {"topic": delivery.topic, "partition": delivery.partition,
                       "offset": delivery.offset,
                       "value": delivery.value.decode("utf-8", errors="replace")[:10_000]}
            key = delivery.key
        else:
            assert message is not None
            letter |= {"task_id": message.id, "value": json.dumps(message.to_dict())[:10_000]}
            key = message.id.encode()
        self._track(self._producer.send(self.config.dead_letter_topic,
                                        json.dumps(letter).encode(), key=key))

    def flush(self) -> set[Priority]:
        """Wait until Kafka has every message sent so far; returns the levels other than
        normal they were sent to (whose readers to tell, ``backend.level_news``).

        Raises:
            BrokerUnavailable: Kafka did not take them all within the delivery timeout,
                or refused some; says how many.
        """
        with self._sent_lock:
            sent, refusals, levels = self._sent, self._refusals, self._levels
            self._sent, self._refusals, self._levels = 0, [], set()
        try:
            self._producer.flush(timeout=max(self.config.connect_timeout, DELIVERY_TIMEOUT))
        except Exception as exc:  # kafka-python raises several unrelated types here
            raise self._undelivered(sent, exc) from exc
        if refusals:
            raise self._undelivered(len(refusals), refusals[0])
        return levels

    def close(self, timeout: float | None = None) -> None:
        """Send what is buffered and close.

        Raises:
            BrokerUnavailable: closing failed (what was flushed before was delivered).
        """
        try:
            self._producer.close(timeout=timeout)
        except Exception as exc:  # kafka-python raises several unrelated types here
            raise BrokerUnavailable(f"closing the producer for Kafka at "
                                    f"{self.config.bootstrap} failed: {exc}") from exc

    def _track(self, sent: Any, priority: Priority = Priority.NORMAL) -> None:
        with self._sent_lock:
            self._sent += 1
            if priority is not Priority.NORMAL:
                self._levels.add(priority)
            refusals = self._refusals  # this flush's list, even if the errback comes late
        sent.add_errback(refusals.append)

    def _undelivered(self, count: int, exc: Exception) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"could not deliver {count} task(s) to Kafka at {self.config.bootstrap}: {exc}"
        )
