"""yadtq: a distributed task queue with Kafka as broker, Redis as result store, made for Jupyter.

    >>> import yadtq
    >>> from worker_node.tasks import add
    >>> q = yadtq.connect("local")
    >>> q.submit(add, 1, 2).result(timeout=10)
    3
"""

import re
from importlib import metadata
from pathlib import Path

from yadtq import display
from yadtq.batch import TaskBatch
from yadtq.client import Client
from yadtq.config import Config
from yadtq.connection import connect
from yadtq.errors import (
    BackendError,
    BackendUnavailable,
    BrokerUnavailable,
    ClientClosed,
    ConfigurationError,
    ConnectionFailed,
    InvalidTransition,
    MessageTooLarge,
    ProtocolError,
    ScheduleNotFound,
    SecretMismatch,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    TaskSkipped,
    TaskTimeout,
    UnknownDependency,
    UnknownTask,
    UntrustedCode,
    YadtqError,
)
from yadtq.futures import TaskFuture
from yadtq.inputs import TaskError, allow_failure
from yadtq.registry import task
from yadtq.schedules import Schedule
from yadtq.status import TaskStatus
from yadtq.workflow import Workflow

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "BrokerUnavailable",
    "Client",
    "ClientClosed",
    "Config",
    "ConfigurationError",
    "ConnectionFailed",
    "InvalidTransition",
    "LocalCluster",
    "MessageTooLarge",
    "ProtocolError",
    "Schedule",
    "ScheduleNotFound",
    "SecretMismatch",
    "TaskBatch",
    "TaskCancelled",
    "TaskError",
    "TaskFailed",
    "TaskFuture",
    "TaskNotFound",
    "TaskSkipped",
    "TaskStatus",
    "TaskTimeout",
    "UnknownDependency",
    "UnknownTask",
    "UntrustedCode",
    "Workflow",
    "YadtqError",
    "allow_failure",
    "connect",
    "task",
]


def _version() -> str:
    """The installed distribution's version; a checkout run from source reads its
    pyproject.toml, so a bug report names the code that ran."""
    try:
        return metadata.version("yadtq")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        found = re.search(r'(?m)^version = "([^"]+)"', pyproject.read_text()
                          ) if pyproject.is_file() else None
        return found.group(1) if found else "0+unknown"


__version__ = _version()

display.register()  # live widgets when imported in a Jupyter kernel; nothing elsewhere

for _name in __all__:
    if _name != "LocalCluster":
        globals()[_name].__module__ = "yadtq"


def __getattr__(name: str):
    # LocalCluster pulls in process management; load it only when asked for.
    if name == "LocalCluster":
        from yadtq.local import LocalCluster

        return LocalCluster
    raise AttributeError(f"module 'yadtq' has no attribute {name!r}")
