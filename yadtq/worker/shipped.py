"""Unpacking a trusted task's pickles on the worker (worker runtime).

A task shipped by value (or called with pickled arguments) carries digests of
its pickles and a signature over them made with the shared secret. Nothing is
loaded unless the signature checks out and every pickle matches its digest;
then the checked bytes go to the execution slot, which unpickles them.
"""

from __future__ import annotations

import hmac

from yadtq import protocol, values
from yadtq.backend import RedisBackend
from yadtq.config import Config
from yadtq.errors import UntrustedCode
from yadtq.worker.execution import LOADED_CODE_LIMIT, Shipped


class PythonVersionMismatch(RuntimeError):
    """Shipped code was pickled by another Python version than the worker's."""


class ShippedCode:
    """Checks and fetches trusted tasks' pickles, keeping functions by digest."""

    def __init__(self, config: Config, backend: RedisBackend) -> None:
        self.config = config
        self._backend = backend
        self._code: dict[str, bytes] = {}  # shipped functions by digest

    def unpack(self, message: protocol.TaskMessage) -> Shipped | None:
        """A trusted task's function and arguments as checked pickles (None: a plain task).

        Raises:
            UntrustedCode: the pickles are not signed with the worker's secret, one is
                gone from Redis, or one does not match its digest.
            PythonVersionMismatch: the client's Python version is not this worker's.
            BackendUnavailable: Redis did not answer.
        """
        if not message.needs_trust:
            return None
        assert self.config.secret is not None  # a worker that trusts code has one
        expected = values.pickles_signature(self.config.secret, message.id, message.code,
                                            message.pickled)
        if not hmac.compare_digest(message.pickles_sig or "", expected):
            raise UntrustedCode(f"the pickles of task {message.id} are not signed with this "
                                "worker's secret; nothing was loaded")
        code = None
        if message.code is not None:
            if message.python != values.PYTHON:
                raise PythonVersionMismatch(
                    f"task {message.task!r} was pickled by Python {message.python} on the "
                    f"client, and this worker runs Python {values.PYTHON}; run both on the "
                    "same Python version")
            code = self._code.get(message.code.sha256)
            if code is None:
                if len(self._code) >= LOADED_CODE_LIMIT:
                    self._code.clear()
                code = self._code[message.code.sha256] = self._bytes(message.code)
        arguments = self._bytes(message.pickled) if message.pickled else None
        return Shipped(message.code.sha256 if message.code else None, code, arguments)

    def _bytes(self, ref: values.Ref) -> bytes:
        """The bytes ``ref`` names, inline or from Redis, checked against its digest."""
        if ref.inline:
            return ref.inline_bytes()
        data = self._backend.blob(ref.sha256)
        if data is None:
            raise UntrustedCode(f"pickled data {ref.sha256[:12]}… is no longer in Redis (it "
                                f"lives result_ttl={self.config.result_ttl:g} s); submit again")
        return ref.checked(data)
