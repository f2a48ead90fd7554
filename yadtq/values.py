"""Any Python value as bytes (bottom layer): pickle protocol 5, checked before it is loaded.

Functions shipped by value (cloudpickle) and the arguments and results of
trusted tasks travel as pickles. Loading a pickle runs code, so no pickle is
loaded unless the shared secret vouches for it: a task message is HMAC-signed
as a whole (``protocol``) and names each pickle by its SHA-256; a result is
named by a :class:`Ref` whose signature binds its SHA-256 to its task id. As a
task's record in Redis can bring it to a worker too (a doorbell, a retry, a
reaped lease), its pickles also carry :func:`pickles_signature`, checked by
the worker whichever way the task came. The
bytes themselves travel inline (base64, when small) or as a blob in Redis
under their digest, fetched and checked against it.

Framing, so that large numpy arrays and DataFrame columns are neither copied
into the pickle stream on the way out nor out of it on the way in (pickle
protocol 5 out-of-band buffers)::

    b"YQP1" | uint32 n | n x uint64 buffer length | uint64 stream length | stream | buffers
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import pickle
import re
import struct
import sys
from dataclasses import dataclass
from typing import Any

from yadtq.errors import ProtocolError, UntrustedCode

MAGIC = b"YQP1"
# The Python version a pickled function needs (client and worker must share it).
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
PROTOCOL = 5
_SHA256 = re.compile(r"[0-9a-f]{64}")
RESULT_MARKER = "__yadtq_pickle__"  # the key a stored result's JSON object is recognised by


def dumps(value: Any) -> bytes:
    """``value`` as framed pickle-5 bytes, its large buffers out of band.

    Raises:
        TypeError: the value cannot be pickled (names its type and the reason).
    """
    buffers: list[pickle.PickleBuffer] = []
    try:
        stream = pickle.dumps(value, protocol=PROTOCOL, buffer_callback=buffers.append)
    except Exception as exc:  # noqa: BLE001 - pickle raises many types for one cause
        raise TypeError(f"{type(value).__name__} value cannot be pickled: {exc}") from None
    views = [b.raw() for b in buffers]
    header = struct.pack(f"<4sI{len(views)}QQ", MAGIC, len(views),
                         *(v.nbytes for v in views), len(stream))
    return b"".join([header, stream, *views])


def loads(data: bytes | memoryview) -> Any:
    """The value framed by :func:`dumps`; buffers are views of ``data``, not copies.

    Only call it on bytes the secret vouched for (see the module docstring).
    """
    view = memoryview(data)
    if bytes(view[:4]) != MAGIC:
        raise ProtocolError("pickled value does not start with the yadtq frame marker")
    (count,) = struct.unpack_from("<I", view, 4)
    *lengths, stream_length = struct.unpack_from(f"<{count}QQ", view, 8)
    start = 8 + 8 * (count + 1)
    stream = view[start:start + stream_length]
    offset = start + stream_length
    buffers = []
    for length in lengths:
        buffers.append(view[offset:offset + length])
        offset += length
    return pickle.loads(stream, buffers=buffers)


def digest(data: bytes | memoryview) -> str:
    """The SHA-256 hex digest that names ``data`` (its blob key and its check)."""
    return hashlib.sha256(data).hexdigest()


def pickles_signature(secret: str, task_id: str, code: Ref | None, pickled: Ref | None) -> str:
    """HMAC binding a task's shipped function and pickled arguments to its id."""
    digests = [ref.sha256 if ref is not None else "" for ref in (code, pickled)]
    text = "\n".join(["pickles", task_id, *digests])
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def result_signature(secret: str, task_id: str, sha256: str) -> str:
    """HMAC binding a pickled result's digest to its task: no swapping results between tasks."""
    return hmac.new(secret.encode(), f"result\n{task_id}\n{sha256}".encode(),
                    hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Ref:
    """A pickle named by its digest: inline (``data``, base64) or a Redis blob (``data`` None)."""

    sha256: str
    size: int
    data: str | None = None
    type: str = ""  # the value's type, for display without loading it
    sig: str = ""  # results only: :func:`result_signature`

    @classmethod
    def of(cls, pickled: bytes, inline_limit: int, type_name: str = "") -> Ref:
        """A reference to ``pickled``: inline when at most ``inline_limit`` bytes."""
        inline = base64.b64encode(pickled).decode() if len(pickled) <= inline_limit else None
        return cls(digest(pickled), len(pickled), inline, type_name)

    @property
    def inline(self) -> bool:
        """True when the bytes travel in the reference itself."""
        return self.data is not None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for a message field or a stored result."""
        data: dict[str, Any] = {"sha256": self.sha256, "bytes": self.size}
        for name in ("data", "type", "sig"):
            if getattr(self, name):
                data[name] = getattr(self, name)
        return data

    @classmethod
    def from_dict(cls, obj: Any, what: str) -> Ref:
        """Validate a reference read from a message or a record.

        Raises:
            ProtocolError: a field is missing or of the wrong type; names ``what``.
        """
        if not isinstance(obj, dict):
            raise ProtocolError(f"field {what!r} must be an object, got {type(obj).__name__}")
        sha, size = obj.get("sha256"), obj.get("bytes")
        if not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            raise ProtocolError(f"field {what!r}: 'sha256' must be 64 lowercase hex digits")
        if type(size) is not int or size < 0:
            raise ProtocolError(f"field {what!r}: 'bytes' must be a non-negative integer")
        strings = {name: obj.get(name, "") for name in ("type", "sig")}
        data = obj.get("data")
        if not all(isinstance(v, str) for v in strings.values()) or \
                not isinstance(data, (str, type(None))):
            raise ProtocolError(f"field {what!r}: 'data', 'type' and 'sig' must be strings")
        return cls(sha, size, data, **strings)

    def inline_bytes(self) -> bytes:
        """The inline bytes, checked against the digest."""
        assert self.data is not None
        return self.checked(base64.b64decode(self.data))

    def checked(self, data: bytes) -> bytes:
        """``data`` if its digest is this reference's, else an UntrustedCode error."""
        if digest(data) != self.sha256:
            raise UntrustedCode(f"pickled data {self.sha256[:12]}… does not match its digest: "
                                "altered in Redis or in transit; it was not loaded")
        return data


def is_stored_result(value: Any) -> bool:
    """True for the JSON object a pickled result is stored as."""
    return isinstance(value, dict) and RESULT_MARKER in value


def stored_result(ref: Ref) -> dict[str, Any]:
    """The JSON object a task record holds for a pickled result."""
    return {RESULT_MARKER: ref.to_dict()}


def result_ref(value: dict[str, Any], task_id: str, secret: str | None) -> Ref:
    """The checked reference of a stored pickled result.

    Raises:
        UntrustedCode: no secret to check it with, or its signature does not match.
    """
    ref = Ref.from_dict(value[RESULT_MARKER], "result")
    if not secret:
        raise UntrustedCode(f"the result of task {task_id} is a pickled value, and this client "
                            "has no shared secret to check it; set YADTQ_SECRET to the "
                            "workers' secret to read it")
    if not hmac.compare_digest(ref.sig, result_signature(secret, task_id, ref.sha256)):
        raise UntrustedCode(f"the pickled result of task {task_id} is not signed with this "
                            "client's secret; it was not loaded")
    return ref


def type_name(value: Any) -> str:
    """``module.QualName`` of a value's type, for display."""
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" \
        else kind.__qualname__
