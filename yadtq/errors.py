"""Errors raised by yadtq (bottom layer: imports nothing from the package).

Every library error derives from :class:`YadtqError`; each message names the
value, the cause and what to do next::

    YadtqError
    ├── ConfigurationError        settings missing or contradictory
    │   └── SecretMismatch        the workers would refuse this client's tasks
    ├── ClientClosed              a call on a client after close() (also a RuntimeError)
    ├── ConnectionFailed          a server could not be reached
    │   ├── BrokerUnavailable     Kafka
    │   └── BackendUnavailable    Redis (down, stalled, restarting, failing over)
    ├── BackendError              Redis refused a command for another reason
    ├── ProtocolError             a message that is not a valid task message
    │   └── MessageTooLarge
    ├── UnknownTask               a task name no registry knows
    ├── UntrustedCode             shipped code or a pickle the secret does not vouch for
    ├── InvalidTransition         a status change the state machine refuses
    ├── TaskFailed                the remote task raised; carries its traceback
    │   └── TaskSkipped           it never ran: a task it depends on failed (``root``)
    ├── TaskNotFound              an id the result store does not know
    ├── UnknownDependency         a parent the result store does not know
    ├── ScheduleNotFound          a schedule name the queue does not have
    ├── TaskTimeout               a task ran past its time limit (also a TimeoutError)
    └── TaskCancelled             a task was cancelled (also a CancelledError)
"""

from __future__ import annotations

from concurrent.futures import CancelledError


class YadtqError(Exception):
    """Base class of every error raised by yadtq."""


class ConfigurationError(YadtqError):
    """Settings are missing or contradictory."""


class SecretMismatch(ConfigurationError):
    """No live worker would run what this client sends: its secret is missing or not theirs."""


class ClientClosed(YadtqError, RuntimeError):
    """A client was used after :meth:`~yadtq.Client.close`; nothing was sent."""


class ConnectionFailed(YadtqError):
    """A server could not be reached; the message names the address tried."""


class BrokerUnavailable(ConnectionFailed):
    """The Kafka broker could not be reached."""


class BackendUnavailable(ConnectionFailed):
    """Redis could not be reached or cannot serve now; trying again later may succeed."""


class BackendError(YadtqError):
    """Redis refused a command for a reason that trying again will not cure."""


class ProtocolError(YadtqError, ValueError):
    """A message is not a valid task message; the text is the dead-letter reason.

    ``task_id`` and ``task`` are what the refused message claims to be, when it
    names them validly: enough to end that task's record, trusted for nothing else.
    ``authentic``: the message was signed with the secret (it was refused for
    another reason).
    """

    def __init__(self, message: str, task_id: str | None = None, task: str | None = None,
                 authentic: bool = False) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.task = task
        self.authentic = authentic


class MessageTooLarge(ProtocolError):
    """An encoded task message exceeds the configured size limit."""


class UnknownTask(YadtqError, LookupError):
    """A task name that is not registered."""

    def __init__(self, name: str, registered: list[str] | tuple[str, ...],
                 queue: str | None = None) -> None:
        self.name = name
        self.registered = sorted(registered)
        self.queue = queue
        served = ", ".join(self.registered) or "none"
        if queue is None:
            text = (f"unknown task {name!r}: it is not registered in this worker's task "
                    f"modules; registered: {served}")
        else:
            text = (f"no live worker of queue {queue!r} serves task {name!r}; served: {served}; "
                    "start a worker whose --tasks module registers it, or fix the name")
        super().__init__(text)


class UntrustedCode(YadtqError):
    """Shipped code or a pickled value that may not run or load here; says what to do.

    Raised by a client that has no shared secret to sign a function with, and
    the error type of a task a worker refused to unpickle: it does not trust
    shipped code, or the pickle's digest or signature did not match.
    """


class InvalidTransition(YadtqError):
    """A status change was refused; names the current status and attempt."""


class TaskNotFound(YadtqError, LookupError):
    """The result store holds no record for a task id."""


class ScheduleNotFound(YadtqError, LookupError):
    """The queue has no schedule of that name (never made, or removed)."""


class TaskFailed(YadtqError):
    """The task raised on a worker; carries the remote type, message and traceback."""

    def __init__(
        self, task_id: str, error_type: str, message: str, traceback: str = ""
    ) -> None:
        self.task_id = task_id
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        super().__init__(f"task {task_id} failed: {error_type}: {message}")

    def __str__(self) -> str:
        text = super().__str__()
        if self.traceback:
            text += "\n\nRemote traceback:\n" + self.traceback.rstrip()
        return text


class UnknownDependency(YadtqError, LookupError):
    """A task was submitted depending on a task Redis has no record of."""


class TaskSkipped(TaskFailed):
    """The task never ran: a task it depends on (``root``) failed or was cancelled."""

    def __init__(self, task_id: str, error_type: str, message: str, traceback: str = "",
                 root: str = "") -> None:
        self.root = root
        super().__init__(task_id, error_type, message, traceback)
        self.args = (f"task {task_id} was {message}",)


class TaskTimeout(YadtqError, TimeoutError):
    """A task ran past its time limit and was stopped."""


class TaskCancelled(YadtqError, CancelledError):
    """A task was cancelled before it finished."""
