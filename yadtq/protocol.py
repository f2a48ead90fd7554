"""The wire format (bottom layer): build, encode, decode and validate a task message.

A Kafka message value is UTF-8 JSON (DESIGN.md, "Wire format")::

    {"v": 1, "id": "9f1c...", "task": "add", "args": [1, 2], "kwargs": {},
     "batch": null, "index": null, "attempt": 1, "max_retries": 0,
     "timeout": null, "submitted_at": 1764320000.123}

``max_retries`` and ``timeout`` may be null: the task's declared default applies.
Optional ``retry_on`` (exception type names) and ``retry_backoff`` (base
seconds) refine retries; optional ``priority`` ("high" or "low", absent for normal)
names the level whose topic it travels on (``yadtq.priority``). Kafka headers may
carry W3C trace context (``yadtq.trace_context``): ``TaskMessage.trace``, never JSON.

A function shipped by value (to workers that trust signed code) adds
``"code": {"sha256": ..., "bytes": n}`` (its cloudpickle, a blob in Redis under
that digest) and ``"python": "3.11"``; the task name is then the function's
qualified name, for display. Arguments that are not JSON (any picklable value)
travel as ``"pickled": {"sha256": ..., "bytes": n, "data": "<base64>"}``, the
pickle of ``(args, kwargs)`` (``yadtq.values``), inline when small or else a
blob named by its digest (no ``"data"``), with ``"args": [], "kwargs": {}``.
Such messages are always signed, and ``"pickles_sig"`` (an HMAC of the task id
and both digests) lets a worker check the pickles however the task reached it.

With a shared secret configured, ``encode`` adds ``"sig"``: the hex
HMAC-SHA256 of the canonical payload (sorted keys, no spaces, without
``sig``). What ``decode`` refuses is one rule (:func:`check_signature`): a
message that carries a ``sig`` must match it; one that carries code or
pickles must be signed; a plain JSON call of a registered task must be signed
where the worker requires signatures (``require_signed``, on by default with
a secret). yadtq writes a
signed message as its canonical text with ``"sig"`` appended last, so a worker
checks the HMAC over the bytes it received, without writing the payload out
again; a message laid out otherwise (signed by hand, say) is put in canonical
form to check it.

Workers also accept the plain format older YADTQ clients send,
``{"task-id": "...", "task": "add", "args": [1, 2]}`` (``task_id`` or ``id``
spell the id too). Every rejection is a :class:`ProtocolError` whose text names
the field and the reason; a worker uses that text as the dead-letter reason.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from yadtq import values
from yadtq.errors import MessageTooLarge, ProtocolError
from yadtq.inputs import Inputs
from yadtq.message_signing import canonical, check_signature, hmac_hex
from yadtq.message_signing import signature as signature  # protocol.signature, as before
from yadtq.priority import Priority, read_priority
from yadtq.trace_context import Trace
from yadtq.values import Ref

VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000

_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")
_PLAIN_ID_FIELDS = ("task-id", "task_id", "id")
# What a message with a shipped function asks of a worker, in place of a task name
# (no task name can be spelt so): workers that trust code serve it.
SHIPPED_CODE = "<shipped code>"


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """One task as it travels on the topic; ``plain`` marks the legacy format."""

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    batch: str | None = None
    index: int | None = None
    attempt: int = 1
    max_retries: int | None = None
    timeout: float | None = None
    submitted_at: float | None = None
    retry_on: tuple[str, ...] = ()
    retry_backoff: float | None = None
    code: Ref | None = None  # a function shipped by value
    python: str | None = None  # the client's Python version, with ``code``
    pickled: Ref | None = None  # (args, kwargs) as a pickle, instead of JSON
    pickles_sig: str | None = None  # ``values.pickles_signature`` of code and pickled
    inputs: Inputs | None = None  # parents whose results are arguments (``dependencies``)
    priority: Priority = Priority.NORMAL  # its level's topic (``yadtq.priority``)
    plain: bool = False
    trace: Trace = ()  # W3C trace context: headers and record fields, not the JSON value

    @property
    def route(self) -> str:
        """What a worker must serve to run it: the task name, or ``SHIPPED_CODE``."""
        return SHIPPED_CODE if self.code is not None else self.task

    @property
    def needs_trust(self) -> bool:
        """True if running it means loading a pickle (only workers trusting code do)."""
        return self.code is not None or self.pickled is not None

    def to_dict(self) -> dict[str, Any]:
        """The v1 JSON object for this message."""
        data = {
            "v": VERSION, "id": self.id, "task": self.task, "args": list(self.args),
            "kwargs": dict(self.kwargs), "batch": self.batch, "index": self.index,
            "attempt": self.attempt, "max_retries": self.max_retries, "timeout": self.timeout,
            "submitted_at": self.submitted_at,
        }
        if self.retry_on:
            data["retry_on"] = list(self.retry_on)
        if self.retry_backoff is not None:
            data["retry_backoff"] = self.retry_backoff
        if self.code is not None:
            data["code"], data["python"] = self.code.to_dict(), self.python
        if self.pickled is not None:
            data["pickled"] = self.pickled.to_dict()
        if self.pickles_sig is not None:
            data["pickles_sig"] = self.pickles_sig
        if self.inputs is not None:
            data["inputs"] = self.inputs.to_dict()
        if self.priority is not Priority.NORMAL:
            data["priority"] = self.priority.value
        return data


def new_task_id() -> str:
    """A fresh unique task id (uuid4 hex)."""
    return uuid.uuid4().hex


def new_batch_id() -> str:
    """A fresh unique batch id."""
    return "b-" + uuid.uuid4().hex


def _name_the_bad_argument(task: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Raise a TypeError naming the first argument that is not JSON-serialisable."""
    for position, value in enumerate(args):
        _check_json(value, f"argument {position} ({value!r:.60})", task)
    for name, value in kwargs.items():
        _check_json(value, f"keyword argument {name!r} ({value!r:.60})", task)


def _check_json(value: Any, what: str, task: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{what} of task {task!r} is not JSON-serialisable ({exc}); pass only JSON types "
            "(str, int, float, bool, None, list, dict with str keys) and convert other values, "
            "e.g. a set to a list or a numpy number with .item()"
        ) from None


def build(
    task: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    task_id: str | None = None,
    batch: str | None = None,
    index: int | None = None,
    attempt: int = 1,
    max_retries: int | None = None,
    timeout: float | None = None,
    retry_on: tuple[str, ...] = (),
    retry_backoff: float | None = None,
    code: Ref | None = None,
    python: str | None = None,
    pickled: Ref | None = None,
    inputs: Inputs | None = None,
    priority: Priority = Priority.NORMAL,
    secret: str | None = None,
    trace: Trace = (),
) -> TaskMessage:
    """Build a validated message for ``task(*args, **kwargs)``.

    With ``pickled``, the arguments travel in it and ``args``/``kwargs`` stay empty.
    With ``code`` or ``pickled``, ``secret`` signs them (``pickles_sig``).

    Raises:
        TypeError: an argument is not JSON-serialisable; the text names it.
    """
    kwargs = dict(kwargs or {})
    for name in kwargs:
        if not isinstance(name, str):
            raise TypeError(f"keyword argument names must be strings, got {name!r}")
    try:
        json.dumps([args, kwargs], allow_nan=False)
    except (TypeError, ValueError):
        _name_the_bad_argument(task, args, kwargs)
    payload: dict[str, Any] = {
        "v": VERSION, "id": task_id or new_task_id(), "task": task, "args": list(args),
        "kwargs": kwargs, "batch": batch, "index": index, "attempt": attempt,
        "max_retries": max_retries, "timeout": timeout, "submitted_at": time.time(),
    }
    if retry_on:
        payload["retry_on"] = list(retry_on)
    if retry_backoff is not None:
        payload["retry_backoff"] = retry_backoff
    if code is not None:
        payload["code"], payload["python"] = code.to_dict(), python
    if pickled is not None:
        payload["pickled"] = pickled.to_dict()
    if inputs is not None:
        payload["inputs"] = inputs.to_dict()
    if priority is not Priority.NORMAL:
        payload["priority"] = priority.value
    if code is not None or pickled is not None:
        if not secret:
            raise ValueError("a message with code or pickled arguments must be signed")
        payload["pickles_sig"] = values.pickles_signature(secret, payload["id"], code, pickled)
    return validate(payload, trace)


def encode(
    message: TaskMessage,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    secret: str | None = None,
) -> bytes:
    """The UTF-8 JSON bytes for ``message``, signed when a ``secret`` is given (its
    canonical text with ``"sig"`` appended).

    Raises:
        MessageTooLarge: the encoding is longer than ``max_bytes``.
    """
    payload = message.to_dict()
    if secret:
        text = canonical(payload).encode()
        data = b'%s,"sig":"%s"}' % (text[:-1], hmac_hex(secret, text).encode())
    else:
        data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > max_bytes:
        raise MessageTooLarge(
            f"task {message.task!r} message is {len(data)} bytes, over the {max_bytes}-byte "
            "limit; pass a reference (a path or key) instead of the data, or raise "
            "max_message_bytes"
        )
    return data


def decode(
    data: bytes | None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    secret: str | None = None,
    require_signed: bool = True,
    trace: Trace = (),
) -> TaskMessage:
    """Parse and validate a message value from the topic (``trace``: what its headers
    carry); check its signature if ``secret`` (see :func:`check_signature`).

    Raises:
        ProtocolError: the bytes are not a valid task message, or (with a
            secret) its signature is missing where one is required or does not
            match; the text says why, and ``task_id`` names the task when the
            message names it validly.
    """
    if data is None:
        raise ProtocolError("message has no value (a tombstone); a task message is JSON")
    too_large = len(data) > max_bytes
    try:
        obj = _parse(data)
    except ProtocolError:
        if too_large:
            raise MessageTooLarge(
                f"message is {len(data)} bytes, over the {max_bytes}-byte limit") from None
        raise
    authentic = False
    try:
        if secret:
            check_signature(obj, data, secret, require_signed)
            authentic = "sig" in obj
        if too_large:
            raise MessageTooLarge(
                f"message is {len(data)} bytes, over the {max_bytes}-byte limit")
        return validate(obj, trace)
    except ProtocolError as exc:
        exc.task_id, exc.task = _identify(obj)
        exc.authentic = authentic
        raise


def _parse(data: bytes) -> dict[str, Any]:
    """The JSON object a message value holds.

    Raises:
        ProtocolError: it is not UTF-8 JSON, or not an object.
    """
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant,
                         parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"message is not UTF-8: {exc}") from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise ProtocolError(f"message is not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("message JSON is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"message must be a JSON object, got {type(obj).__name__}")
    return obj


def _identify(obj: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The task id and name a message claims, where it spells them validly."""
    names = ("id",) if "v" in obj else _PLAIN_ID_FIELDS
    task_id = next((obj[n] for n in names if n in obj), None)
    if not isinstance(task_id, str) or not _ID.match(task_id):
        return None, None
    task = obj.get("task")
    return task_id, task if isinstance(task, str) and _TASK_NAME.match(task) else None


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"message is not JSON: number {text[:40]} is out of range")
    return value


def _refuse_constant(name: str) -> Any:
    raise ProtocolError(f"message is not JSON: {name} is not a JSON number")


def _field(obj: Mapping[str, Any], name: str, types: tuple[type, ...], default: Any) -> Any:
    value = obj.get(name, default)
    if value is default:
        return value
    if isinstance(value, bool) and bool not in types:
        raise ProtocolError(f"field {name!r} must be {_names(types)}, got a boolean")
    if not isinstance(value, types):
        raise ProtocolError(f"field {name!r} must be {_names(types)}, got {type(value).__name__}")
    return value


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def read_inputs(obj: Any) -> Inputs:
    """A message's (or a record's) ``inputs`` field, checked: an object of two lists of ids.

    Raises:
        ProtocolError: it is not; the text says what is wrong.
    """
    if not isinstance(obj, dict) or set(obj) - {"tasks", "batches"}:
        raise ProtocolError("field 'inputs' must be an object with 'tasks' and 'batches'")
    lists = [obj.get("tasks", []), obj.get("batches", [])]
    if not all(isinstance(ids, list) and all(isinstance(i, str) and _ID.match(i) for i in ids)
               for ids in lists):
        raise ProtocolError("field 'inputs': 'tasks' and 'batches' must be lists of ids")
    return Inputs(tuple(lists[0]), tuple(lists[1]))


def validate(obj: Mapping[str, Any], trace: Trace = ()) -> TaskMessage:
    """Turn a decoded JSON object (v1 or plain format) into a :class:`TaskMessage`
    (carrying ``trace``, the trace context its headers or record hold).

    Raises:
        ProtocolError: a field is missing, of the wrong type or out of range.
    """
    plain = "v" not in obj
    if plain:
        id_fields = [name for name in _PLAIN_ID_FIELDS if name in obj]
        if not id_fields:
            raise ProtocolError(
                "message has no 'v' field and no task id ('task-id', 'task_id' or 'id')"
            )
        task_id = obj[id_fields[0]]
    else:
        version = obj["v"]
        if type(version) is not int or version != VERSION:
            raise ProtocolError(f"unsupported message version {version!r}; this worker reads v1")
        if "id" not in obj:
            raise ProtocolError("missing field 'id'")
        task_id = obj["id"]
    if not isinstance(task_id, str) or not _ID.match(task_id):
        raise ProtocolError(
            f"task id {task_id!r:.80} is not valid: use 1-128 letters, digits, '_', '.', ':' or '-'"
        )
    if "task" not in obj:
        raise ProtocolError("missing field 'task' (the registered task name)")
    task = obj["task"]
    if not isinstance(task, str) or not _TASK_NAME.match(task):
        raise ProtocolError(f"field 'task' must be a task name, got {task!r:.80}")
    args = _field(obj, "args", (list,), [])
    kwargs = _field(obj, "kwargs", (dict,), {})
    batch = _field(obj, "batch", (str, type(None)), None)
    if batch is not None and not _ID.match(batch):
        raise ProtocolError(f"field 'batch' is not a valid id: {batch!r:.80}")
    index = _field(obj, "index", (int, type(None)), None)
    attempt = _field(obj, "attempt", (int,), 1)
    max_retries = _field(obj, "max_retries", (int, type(None)), None)
    timeout = _field(obj, "timeout", (int, float, type(None)), None)
    submitted_at = _field(obj, "submitted_at", (int, float, type(None)), None)
    retry_on = _field(obj, "retry_on", (list,), [])
    if not all(isinstance(name, str) for name in retry_on):
        raise ProtocolError("field 'retry_on' must be a list of exception type names")
    retry_backoff = _field(obj, "retry_backoff", (int, float, type(None)), None)
    if retry_backoff is not None and not (math.isfinite(retry_backoff) and retry_backoff >= 0):
        raise ProtocolError(f"field 'retry_backoff' must be seconds >= 0, got {retry_backoff}")
    if attempt < 1:
        raise ProtocolError(f"field 'attempt' must be at least 1, got {attempt}")
    if max_retries is not None and max_retries < 0:
        raise ProtocolError(f"field 'max_retries' must not be negative, got {max_retries}")
    if index is not None and index < 0:
        raise ProtocolError(f"field 'index' must not be negative, got {index}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ProtocolError(f"field 'timeout' must be a positive number of seconds, got {timeout}")
    code = Ref.from_dict(obj["code"], "code") if obj.get("code") is not None else None
    pickled = Ref.from_dict(obj["pickled"], "pickled") if obj.get("pickled") is not None else None
    python = _field(obj, "python", (str, type(None)), None)
    pickles_sig = _field(obj, "pickles_sig", (str, type(None)), None)
    if code is not None and python is None:
        raise ProtocolError("field 'python' (the client's Python version) must come with 'code'")
    inputs = read_inputs(obj["inputs"]) if obj.get("inputs") is not None else None
    return TaskMessage(
        id=task_id,
        task=task,
        args=tuple(args),
        kwargs=kwargs,
        batch=batch,
        index=index,
        attempt=attempt,
        max_retries=max_retries,
        timeout=timeout,
        submitted_at=submitted_at,
        retry_on=tuple(retry_on),
        retry_backoff=retry_backoff,
        code=code,
        python=python,
        pickled=pickled,
        pickles_sig=pickles_sig,
        inputs=inputs,
        priority=read_priority(obj.get("priority")),
        plain=plain,
        trace=trace,
    )
