"""What a worker refuses to run, and what becomes of refused tasks (worker runtime).

One signing rule holds on every path a task reaches a worker (``protocol.check_signature``):
a message that carries a signature must match it, one that carries code or pickles must
be signed, and a plain JSON call of a registered task must be signed where the worker
requires signatures (``Config.signatures_required``). Kafka messages (polled, stolen,
produced again by workers) are checked when decoded; a lone task claimed by doorbell
is read from its Redis record, so its record must carry a valid ``record_sig`` instead.

A refused task never runs, and never waits for ever either: a dead-lettered message
that names its task ends that task's queued record as ``failed`` with the reason
(``backend.unrunnable.fail_refused`` says when a refused copy may, and may not, end a record).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from yadtq import protocol
from yadtq.backend import RedisBackend
from yadtq.broker import Delivery
from yadtq.config import Config
from yadtq.errors import UnknownTask, UntrustedCode, YadtqError

logger = logging.getLogger(__name__)

REFUSED = "MessageRefused"  # the error type of a task whose message every worker refuses


class UnsignedTask(UntrustedCode):
    """A task claimed from its record, which no holder of the secret signed."""


class Admission:
    """Decides whether a claimed task may run here, and ends refused tasks' records."""

    def __init__(self, config: Config, backend: RedisBackend, *, worker: str,
                 task_names: Iterable[str], served: frozenset[str],
                 served_elsewhere: Callable[[], Iterable[str]]) -> None:
        self.config = config
        self._backend = backend
        self._worker = worker
        self._task_names = frozenset(task_names)
        self._served = served
        self._served_elsewhere = served_elsewhere

    def refusal(self, message: protocol.TaskMessage, record_signed: bool = True
                ) -> Exception | None:
        """Why this worker will not run a task it claimed, or None.

        ``record_signed`` is False for a task claimed from a record no holder of
        the secret wrote (``backend.record_claims``).
        """
        if not record_signed and (self.config.signatures_required or message.needs_trust):
            return UnsignedTask(
                f"task {message.id} ({message.task!r}) was submitted without a valid "
                f"signature, and this worker ({self._worker}) requires signed tasks: the "
                "client has no YADTQ_SECRET or another one; give it the workers' secret, or "
                "connect with yadtq.connect(cluster) / yadtq.connect('local') to a local stack")
        if message.needs_trust and not self.config.trust_code:
            what = "a function shipped by value" if message.code else "called with pickled " \
                "arguments"
            return UntrustedCode(
                f"this worker ({self._worker}) does not trust shipped code, and task "
                f"{message.task!r} is {what}; start workers with "
                "--trust-code (YADTQ_TRUST_CODE=1) and the client's YADTQ_SECRET, or register "
                "the function with @yadtq.task in the workers' task modules")
        if message.route not in self._served:  # and no live worker of the queue serves it
            served = sorted(self._task_names | set(self._served_elsewhere()))
            return UnknownTask(message.task, served, queue=self.config.queue)
        return None

    def end_refused(self, delivery: Delivery) -> None:
        """End the record of the task a dead-lettered delivery names, if it may be ended.

        Best effort: should Redis fail now, the record stays as it was (the
        message is in the dead-letter topic with the reason either way).
        """
        error = delivery.error
        task_id = getattr(error, "task_id", None)
        if task_id is None:
            return
        try:
            ended = self._backend.unrunnable.fail_refused(
                task_id, error.task, REFUSED, f"message refused by worker {self._worker}: "
                f"{error}", authentic=error.authentic)
        except YadtqError as exc:  # Redis away or refusing: the letter says why anyway
            logger.warning("Worker %s: could not end refused task %s: %s", self._worker,
                           task_id, exc)
            return
        if ended:
            logger.info("Worker %s: task %s failed: its message was refused", self._worker,
                        task_id)
