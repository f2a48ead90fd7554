"""The task hash (adapter layer): what a message is stored as in Redis, and read back as.

The record, not the Kafka offset, is the source of truth for a task (DESIGN.md,
"Delivery guarantees"), and it keeps the full payload so that a task can be
produced again (a reaped lease, a retry) without its original message. Writing
and reading that payload live together here so the two cannot drift.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from yadtq.priority import Priority, read_priority
from yadtq.protocol import TaskMessage, read_inputs
from yadtq.status import TaskStatus
from yadtq.trace_context import FIELDS as TRACE_FIELDS
from yadtq.trace_context import from_carrier
from yadtq.values import Ref

# The fields that hold a message's payload, for an HMGET (or requeue.lua) to read back.
# The trace context comes last: it is read back with the payload, but no signature
# covers it (it only links spans), so records written before it still check out.
PAYLOAD_FIELDS = ("task", "args", "kwargs", "batch", "index", "max_retries", "timeout",
                  "submitted_at", "retry_on", "retry_backoff", "code", "pickled",
                  "pickles_sig", "inputs", "priority", *TRACE_FIELDS)


def text(value: bytes | str | None) -> str:
    """A value Redis returned, as text ("" for nil)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_record(raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    """A task hash as Python values: JSON fields parsed, times as floats."""
    record: dict[str, Any] = {text(k): text(v) for k, v in raw.items()}
    for name in ("args", "kwargs", "result", "parents", "tolerates"):
        if record.get(name):
            record[name] = json.loads(record[name])
    for name in ("due_at", "queued_at", "started_at", "finished_at", "submitted_at",
                 "requeued_at", "ready_at"):
        record[name] = float(record[name]) if record.get(name) else None
    for name in ("attempt", "index", "max_retries", "waiting", "readers"):
        record[name] = int(record[name]) if record.get(name) else None
    return record


# The field that proves a record's payload was written by a holder of the secret.
RECORD_SIG = "record_sig"

# A record's fields that differ from task to task of one submit or map (enqueue.lua takes
# the rest once a call).
OWN_FIELDS = ("args", "kwargs", "index", "submitted_at", "pickled", "pickles_sig", "inputs",
              RECORD_SIG)
# The payload fields a record signature covers, shared ones then a task's own, in order.
_OWN_PAYLOAD = OWN_FIELDS[:-1]
_SHARED_PAYLOAD = tuple(name for name in PAYLOAD_FIELDS
                        if name not in _OWN_PAYLOAD and name not in TRACE_FIELDS)


def record_fields(message: TaskMessage, now: float, secret: str | None = None
                  ) -> dict[str, str]:
    """The task hash fields a message starts with (all strings, none empty), signed
    with ``secret`` if given."""
    shared = shared_fields(message, now)
    signer = RecordSigner(secret, shared) if secret else None
    own = dict(zip(OWN_FIELDS, own_values(message, signer), strict=True))
    return {**shared, **{name: value for name, value in own.items() if value}}


class RecordSigner:
    """Signs records of tasks that share fields: an HMAC-SHA256 of a record's payload
    exactly as stored (``PAYLOAD_FIELDS`` strings, "" for an unset one), bound to its
    task id. The shared fields are hashed once, each task's own ones after them.

    Signing the stored strings, not the message, lets a worker check a record it
    claims by id without writing the payload out again.
    """

    def __init__(self, secret: str, shared: Mapping[str, str]) -> None:
        signed = json.dumps([shared.get(name, "") for name in _SHARED_PAYLOAD])
        self._base = hmac.new(secret.encode(), signed.encode(), hashlib.sha256)

    def sign(self, task_id: str, own: Sequence[str]) -> str:
        """The signature of the record of ``task_id`` whose ``_OWN_PAYLOAD`` values are
        ``own``, in that order."""
        mac = self._base.copy()
        mac.update(json.dumps([task_id, *own]).encode())
        return mac.hexdigest()


def record_signature(secret: str, task_id: str, fields: Mapping[str, str]) -> str:
    """The :class:`RecordSigner` signature of a record read as ``fields``."""
    return RecordSigner(secret, fields).sign(
        task_id, [fields.get(name, "") for name in _OWN_PAYLOAD])


def record_signed(secret: str | None, task_id: str, fields: Mapping[str, str]) -> bool:
    """True if ``fields`` (a record read with its ``RECORD_SIG``) were written by a
    holder of ``secret``; False without a secret to check with."""
    claimed = fields.get(RECORD_SIG, "")
    return bool(secret and claimed) and hmac.compare_digest(
        claimed, record_signature(secret, task_id, fields))


def shared_fields(message: TaskMessage, now: float) -> dict[str, str]:
    """The fields of a message's record but ``OWN_FIELDS``: the same for every task of
    one submit or map (:func:`shares_fields` says which messages share them)."""
    fields = {
        "status": TaskStatus.QUEUED.value,
        "task": message.task,
        "attempt": str(message.attempt),
        "queued_at": repr(now),
        "format": "plain" if message.plain else "v1",
    }
    optional = {
        "batch": message.batch,
        "max_retries": message.max_retries,
        "timeout": message.timeout,
        "retry_on": json.dumps(list(message.retry_on)) if message.retry_on else None,
        "retry_backoff": message.retry_backoff,
        "priority": None if message.priority is Priority.NORMAL else message.priority.value,
        # A shipped function, kept to produce the task again.
        "code": json.dumps({"ref": message.code.to_dict(), "python": message.python})
        if message.code else None,
    }
    fields.update({k: str(v) for k, v in optional.items() if v is not None})
    fields.update(message.trace)  # a map's tasks share its span's context
    return fields


def shares_fields(message: TaskMessage) -> tuple[Any, ...]:
    """What :func:`shared_fields` is made of: messages equal in it share those fields."""
    return (message.task, message.attempt, message.plain, message.batch, message.max_retries,
            message.timeout, message.retry_on, message.retry_backoff, message.code,
            message.python, message.priority, message.trace)


def own_values(message: TaskMessage, signer: RecordSigner | None) -> list[str]:
    """A message's ``OWN_FIELDS`` values, in that order ("" for an unset one), the record
    signature last when there is a ``signer`` (of the shared fields it goes with)."""
    values = [
        json.dumps(list(message.args)),
        json.dumps(dict(message.kwargs)),
        "" if message.index is None else str(message.index),
        "" if message.submitted_at is None else str(message.submitted_at),
        # Pickled arguments, kept to produce the task again.
        json.dumps(message.pickled.to_dict()) if message.pickled else "",
        message.pickles_sig or "",
        json.dumps(message.inputs.to_dict()) if message.inputs else "",
    ]
    return [*values, signer.sign(message.id, values) if signer else ""]


def unbatched_fields(message: TaskMessage, now: float, secret: str | None) -> dict[str, str]:
    """Fields for a record a claim creates: never counted in a batch, so it names none."""
    return record_fields(replace(message, batch=None), now, secret)


def payload(values: Sequence[bytes | str | None]) -> dict[str, str]:
    """Values read in ``PAYLOAD_FIELDS`` order, by name ("" for an unset field).

    Raises:
        ValueError: not one value per payload field.
    """
    return {name: text(value) for name, value in zip(PAYLOAD_FIELDS, values, strict=True)}


def message_from_payload(task_id: str, attempt: int, fields: Mapping[str, str]) -> TaskMessage:
    """Rebuild a task message from its stored payload fields (see :func:`payload`)."""
    shipped = json.loads(fields["code"]) if fields["code"] else None
    pickled = fields["pickled"]
    return TaskMessage(
        id=task_id,
        task=fields["task"],
        args=tuple(json.loads(fields["args"] or "[]")),
        kwargs=json.loads(fields["kwargs"] or "{}"),
        batch=fields["batch"] or None,
        index=int(fields["index"]) if fields["index"] else None,
        attempt=attempt,
        max_retries=int(fields["max_retries"]) if fields["max_retries"] else None,
        timeout=float(fields["timeout"]) if fields["timeout"] else None,
        submitted_at=float(fields["submitted_at"]) if fields["submitted_at"] else None,
        retry_on=tuple(json.loads(fields["retry_on"])) if fields["retry_on"] else (),
        retry_backoff=float(fields["retry_backoff"]) if fields["retry_backoff"] else None,
        code=Ref.from_dict(shipped["ref"], "code") if shipped else None,
        python=shipped["python"] if shipped else None,
        pickled=Ref.from_dict(json.loads(pickled), "pickled") if pickled else None,
        pickles_sig=fields["pickles_sig"] or None,
        inputs=read_inputs(json.loads(fields["inputs"])) if fields["inputs"] else None,
        priority=read_priority(fields["priority"] or None),
        trace=from_carrier(fields),
    )
