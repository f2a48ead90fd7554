"""Whether a queue's live workers would accept what this client sends (core layer).

Workers refuse messages that break the signing rule (``protocol.check_signature``):
a client without the workers' secret, or with another one, would see every task
dead-lettered and failed. Each worker's heartbeat record names a digest of its
secret (``settings``) and whether it requires signed tasks, so the client can
refuse before sending anything, with an error that says which secret to use.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from yadtq.config import Config
from yadtq.errors import SecretMismatch
from yadtq.routing import liveness

RECHECK_AFTER = 5.0  # seconds a verdict that the workers accept this client is kept


def accepts(worker: dict[str, Any], config: Config, needs_trust: bool) -> bool:
    """True if this worker's record says it runs what a client with ``config`` sends."""
    try:
        digest = json.loads(worker.get("settings") or "{}").get("secret_digest")
    except (ValueError, AttributeError):
        return True  # an old worker that does not say: let it decide
    requires = worker.get("requires_signed", "1" if digest else "0") == "1"
    if config.secret is None:  # unsigned: only plain calls, where not required
        return not requires and not needs_trust
    if digest is None:  # a worker without a secret cannot check, nor trust code
        return not needs_trust
    return digest == config.secret_digest


class Acceptance:
    """Checks, before a submit or map sends anything, that some live worker accepts it."""

    def __init__(self, config: Config, workers: Callable[[], list[dict[str, Any]]],
                 clock: Callable[[], float] = time.time) -> None:
        """``workers()`` reads the queue's heartbeat records (``backend.workers``)."""
        self.config = config
        self._workers = workers
        self._clock = clock
        self._lock = threading.Lock()
        self._accepted_until = {False: 0.0, True: 0.0}  # by needs_trust

    def check(self, needs_trust: bool = False) -> None:
        """Return if some live worker accepts this client's tasks, or none is alive.

        Raises:
            SecretMismatch: live workers there are, and none would run a task sent
                with this client's secret (or lack of one); names what to do.
        """
        now = self._clock()
        with self._lock:
            if now < self._accepted_until[needs_trust]:
                return
        alive = [w for w in self._workers() if liveness(w, now) == "alive"]
        if alive and not any(accepts(w, self.config, needs_trust) for w in alive):
            raise SecretMismatch(self._explain(alive))
        with self._lock:
            self._accepted_until[needs_trust] = now + RECHECK_AFTER

    def _explain(self, alive: list[dict[str, Any]]) -> str:
        names = ", ".join(sorted(str(w.get("name")) for w in alive)[:5])
        if self.config.secret is None:
            problem = "this client has no secret (YADTQ_SECRET), and they require tasks " \
                "signed with theirs"
        else:
            problem = "this client's secret (YADTQ_SECRET) is not theirs"
        return (f"no live worker of queue {self.config.queue!r} ({names}) would run a task "
                f"sent by this client: {problem}; nothing was sent. Give the client the "
                "workers' YADTQ_SECRET, or reach a local stack with yadtq.connect(cluster) "
                "or yadtq.connect('local'), which use its secret "
                "(in a shell: eval \"$(yadtq local env)\")")
