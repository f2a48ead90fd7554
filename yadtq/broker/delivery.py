"""A message read from a tasks topic (Kafka adapter): what the worker sees of Kafka."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from yadtq import protocol, trace_context
from yadtq.config import Config
from yadtq.errors import ProtocolError


@dataclass(frozen=True)
class Delivery:
    """A message read from the tasks topic: the task it holds, or why it holds none."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # when Kafka received it (ms)
    key: bytes | None
    value: bytes
    message: protocol.TaskMessage | None  # None when ``error`` says why
    error: ProtocolError | None = None
    foreign: bool = False  # read from another worker's partition (``stealing``)

    @property
    def where(self) -> str:
        """The message's place, for logs and dead letters: ``topic[partition]@offset``."""
        return f"{self.topic}[{self.partition}]@{self.offset}"

    @property
    def order(self) -> float:
        """Sorts deliveries in the order their tasks were submitted (seconds, the client's
        clock), else Kafka received them. Not Kafka's time first: a map's messages all
        arrive within a millisecond or two, dealt partition by partition, and that would
        put its last tasks of one partition before its first of the next."""
        if self.message is not None and self.message.submitted_at:
            return self.message.submitted_at
        return self.timestamp / 1000


def decode(record: Any, config: Config, foreign: bool = False) -> Delivery:
    """A polled kafka-python record as a :class:`Delivery` (decoded here, once);
    ``foreign``: read from another worker's partition."""
    trace = trace_context.from_headers(record.headers) if record.headers else ()
    try:
        message = protocol.decode(record.value, config.max_message_bytes, config.secret,
                                   config.signatures_required, trace)
        error = None
    except ProtocolError as exc:
        message, error = None, exc
    return Delivery(record.topic, record.partition, record.offset, record.timestamp,
                    record.key, record.value or b"", message, error, foreign)


