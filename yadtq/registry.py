"""The task registry (bottom layer): which names a worker may run.

A worker runs only functions registered here by the modules it was started
with; a message carries a name, never code. The client uses the same
decorator to turn a function into the name it sends.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from yadtq.errors import ConfigurationError, UnknownTask
from yadtq.limits import Limits
from yadtq.priority import priority as priority_level

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class TaskOptions:
    """Defaults a task declares; a call's own options override them."""

    timeout: float | None = None
    max_retries: int | None = None
    retry_on: tuple[type[BaseException], ...] = ()
    retry_backoff: float | None = None
    priority: str | None = None  # "high", "normal" or "low"; None: normal
    limits: Limits | None = None  # rate and concurrency limits (``yadtq.limits``)


_TASKS: dict[str, Callable[..., Any]] = {}
_OPTIONS: dict[str, TaskOptions] = {}

TASK_NAME_ATTRIBUTE = "__yadtq_task__"


@overload
def task(fn: F, /) -> F: ...
@overload
def task(
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    retry_on: tuple[type[BaseException], ...] = (),
    retry_backoff: float | None = None,
    priority: str | None = None,
    rate_limit: str | None = None,
    rate_key: str | None = None,
    concurrency: int | None = None,
) -> Callable[[F], F]: ...


def task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    retry_on: tuple[type[BaseException], ...] = (),
    retry_backoff: float | None = None,
    priority: str | None = None,
    rate_limit: str | None = None,
    rate_key: str | None = None,
    concurrency: int | None = None,
) -> Any:
    """Register a function as a task under its own name (or ``name=``).

    The function is returned unchanged, so it can still be called locally;
    ``q.submit(fn, ...)`` sends its registered name. ``timeout`` (seconds),
    ``max_retries``, ``retry_on`` (exception types worth retrying; all when
    empty) and ``retry_backoff`` (base seconds, doubled per attempt, with
    jitter) are defaults that a call may override, and so is ``priority`` ("high",
    "normal" or "low"), which yadtq clients apply when they send the task.

    Limits hold across every worker of the queue, decided where tasks are claimed on
    Redis's clock (``yadtq.limits``): ``rate_limit`` ("20/s", "100/m", "5000/h") lets at
    most that many calls start in any such window, one limit per value of the
    ``rate_key`` parameter if given; ``concurrency`` lets at most that many run at once.

    Raises:
        ValueError: a bad priority or limit (the text says what is allowed), or a name
            taken.
    """
    level = None if priority is None else priority_level(priority).value

    def register(func: F) -> F:
        task_name = name or func.__name__
        options = TaskOptions(timeout, max_retries, tuple(retry_on), retry_backoff, level,
                              Limits.declare(func, rate_limit, rate_key, concurrency))
        existing = _TASKS.get(task_name)
        if existing is not None and existing is not func and (
            existing.__module__,
            existing.__qualname__,
        ) != (func.__module__, func.__qualname__):
            raise ValueError(
                f"task name {task_name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}; pass name= to choose another"
            )
        _TASKS[task_name] = func
        _OPTIONS[task_name] = options
        setattr(func, TASK_NAME_ATTRIBUTE, task_name)
        return func

    return register(fn) if fn is not None else register


def task_name(task_or_name: Callable[..., Any] | str) -> str:
    """The name to send for a task given as a registered function or a name."""
    if isinstance(task_or_name, str):
        if not task_or_name:
            raise ValueError("task name must not be empty")
        return task_or_name
    registered = getattr(task_or_name, TASK_NAME_ATTRIBUTE, None)
    if registered is None:
        raise TypeError(
            f"{task_or_name!r} is not a registered task: decorate it with @yadtq.task in a "
            "module the workers load (e.g. worker_node.tasks), or pass the task name as a string"
        )
    return registered


def lookup(name: str) -> Callable[..., Any]:
    """The function registered under ``name``.

    Raises:
        UnknownTask: nothing is registered under that name.
    """
    try:
        return _TASKS[name]
    except KeyError:
        raise UnknownTask(name, list(_TASKS)) from None


def options(name: str) -> TaskOptions:
    """The defaults registered with a task (empty ones for an unknown name)."""
    return _OPTIONS.get(name, TaskOptions())


def registered_names() -> list[str]:
    """Every registered task name, sorted."""
    return sorted(_TASKS)


def load_modules(modules: Iterable[str], *, require_tasks: bool = False) -> list[str]:
    """Import the modules whose ``@yadtq.task`` functions a worker may run; returns every
    registered task name, sorted.

    A module that registers nothing is likely misnamed or undecorated, and a worker
    would otherwise start silently serving nothing of it: it is warned of, or, with
    ``require_tasks`` (a worker that runs registered tasks only) when no module
    registers anything, refused, as such a worker could run no task at all.

    Raises:
        ConfigurationError: ``require_tasks`` and no module registers a task.
    """
    modules = list(modules)
    empty = [module for module in modules if not _registers(module)]
    help_text = ("@yadtq.task registers a function under its name so that workers run it: "
                 "decorate the module's task functions with it, or name the module that does")
    if require_tasks and len(empty) == len(modules):
        raise ConfigurationError(
            f"no task registered by {', '.join(map(repr, modules)) or 'any --tasks module'}, "
            f"so this worker could run nothing; {help_text} (a worker started with "
            "--trust-code may serve shipped functions only)")
    for module in empty:
        logger.warning("task module %r registers no task; %s", module, help_text)
    return registered_names()


def _registers(module: str) -> bool:
    """Import ``module``; True if it registers a task (now, or when it was imported before)."""
    before = set(_TASKS)
    importlib.import_module(module)
    return set(_TASKS) != before or any(
        getattr(function, "__module__", None) == module for function in _TASKS.values())
