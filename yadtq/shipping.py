"""Calls into messages, and stored results into values (core layer): by name, or by value.

A registered task travels by name with JSON arguments, readable by any Kafka
client. Any other function (defined in a notebook cell or ``__main__``, a
closure, a lambda, a ``functools.partial``, ``numpy.sum``) is shipped by value:
cloudpickled once per ``submit`` or ``map``, stored in Redis under its digest
and named by it in each signed message. Arguments that are not JSON (numpy
arrays, DataFrames, sets, ...) travel as one pickle per call, inline when small
and as a Redis blob otherwise; the results of such tasks come back pickled and
signed. All of it needs the shared secret (``yadtq.values`` says why).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from yadtq import protocol, values
from yadtq.config import Config
from yadtq.errors import MessageTooLarge, UntrustedCode
from yadtq.registry import TASK_NAME_ATTRIBUTE, task_name

_NOT_IN_A_NAME = re.compile(r"[^A-Za-z0-9_.:-]")


class Shipment:
    """What one ``submit`` or ``map`` sends: its task's name and code, and blobs to store first."""

    def __init__(self, task: Callable[..., Any] | str, config: Config) -> None:
        self.config = config
        self.blobs: dict[str, bytes] = {}  # digest -> pickle, stored before anything is sent
        self.code: values.Ref | None = None
        if isinstance(task, str) or getattr(task, TASK_NAME_ATTRIBUTE, None) is not None:
            self.name = task_name(task)
            return
        if not callable(task):
            raise TypeError(f"a task is a function or a registered task's name, got {task!r}")
        self._require_secret(f"function {display_name(task)!r} is not a registered task, so "
                             "it would be shipped by value")
        import cloudpickle

        pickled = cloudpickle.dumps(task, protocol=values.PROTOCOL)
        self.code = values.Ref(values.digest(pickled), len(pickled))
        self.blobs[self.code.sha256] = pickled
        self.name = display_name(task)

    def message(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None,
                **options: Any) -> protocol.TaskMessage:
        """The message for one call: JSON arguments where they are JSON and no code ships.

        Raises:
            TypeError: an argument is neither JSON nor, with no secret, allowed to be pickled.
            MessageTooLarge: the pickled arguments exceed ``max_payload_bytes``.
        """
        if self.code is None:
            try:
                return protocol.build(self.name, args, kwargs, **options)
            except TypeError as exc:
                if not self.config.secret:
                    raise TypeError(f"{exc}; or, to send any picklable value, set YADTQ_SECRET "
                                    "on this client and on workers started with --trust-code"
                                    ) from None
        pickled = values.dumps((tuple(args), dict(kwargs or {})))
        if len(pickled) > self.config.max_payload_bytes:
            raise MessageTooLarge(
                f"the arguments of task {self.name!r} are {len(pickled)} bytes pickled, over "
                f"max_payload_bytes={self.config.max_payload_bytes}; pass a reference (a path or "
                "key) instead, or raise YADTQ_MAX_PAYLOAD_BYTES")
        ref = values.Ref.of(pickled, self.config.inline_bytes)
        if not ref.inline:
            self.blobs[ref.sha256] = pickled
        code = {"code": self.code, "python": values.PYTHON} if self.code is not None else {}
        return protocol.build(self.name, (), None, pickled=ref, secret=self.config.secret,
                              **code, **options)

    def _require_secret(self, what: str) -> None:
        if not self.config.secret:
            raise UntrustedCode(
                f"{what}, and this client has no shared secret to sign it with. Set "
                "YADTQ_SECRET on this client to the secret of the workers (started with "
                "--trust-code); or connect with yadtq.connect(cluster) or "
                "yadtq.connect('local'), which take a local stack's secret from it; or "
                "register the function with @yadtq.task in a module the workers load")


def display_name(function: Callable[..., Any]) -> str:
    """A task name for a shipped function: its qualified name (module-qualified outside
    ``__main__``), spelt as task names may be (``<lambda>`` becomes ``lambda``)."""
    inner = getattr(function, "func", None)  # functools.partial
    if inner is not None and not hasattr(function, "__qualname__"):
        return "partial." + display_name(inner)
    qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
    module = getattr(function, "__module__", None)
    name = qualname if module in (None, "__main__") else f"{module}.{qualname}"
    name = _NOT_IN_A_NAME.sub("", name).lstrip(".:-0123456789")
    return name[:200] or "function"


def load_result(task_id: str, value: Any, secret: str | None,
                fetch: Callable[[str], bytes | None], leave_large: bool = False) -> Any:
    """A task's result as the caller sees it: pickled results checked and loaded.

    With ``leave_large``, a result stored as a Redis blob stays there: a
    :class:`StoredResult` that fetches it when asked.

    Raises:
        UntrustedCode: no secret, a wrong signature or digest, or the blob expired.
    """
    if not values.is_stored_result(value):
        return value
    ref = values.result_ref(value, task_id, secret)
    if ref.inline:
        return values.loads(ref.inline_bytes())
    if leave_large:
        return StoredResult(task_id, ref, lambda: load_result(task_id, value, secret, fetch))
    data = fetch(ref.sha256)
    if data is None:
        raise UntrustedCode(f"the result of task {task_id} ({ref.type or 'a value'}, {ref.size} "
                            "bytes) is no longer in Redis: it expired with the task's record")
    return values.loads(ref.checked(data))


class StoredResult:
    """A large pickled result left in Redis until asked for (``to_dataframe`` rows)."""

    def __init__(self, task_id: str, ref: values.Ref, loader: Callable[[], Any]) -> None:
        self.task_id = task_id
        self.ref = ref
        self._loader = loader

    def load(self) -> Any:
        """Fetch, check and load the value."""
        return self._loader()

    def __repr__(self) -> str:
        return (f"<{self.ref.type or 'value'}, {self.ref.size / 1e6:.1f} MB in Redis: "
                ".load() fetches it>")
