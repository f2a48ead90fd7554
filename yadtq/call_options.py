"""What one submit or map asks beyond its arguments (client layer): the per-call options
that override a task's declared defaults, and how a map item becomes arguments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from yadtq import registry
from yadtq.priority import Priority, priority


def call_options(
    task_name: str,
    timeout: float | None,
    max_retries: int | None,
    retry_on: Sequence[type[BaseException] | str],
    retry_backoff: float | None,
    level: Priority | str | None,
) -> dict[str, Any]:
    """The message options of a call; its priority is the call's, else the task's declared
    one (``@yadtq.task(priority=...)``, when the task is registered in this process).

    Raises:
        ValueError: ``level`` is not a priority level.
    """
    names = tuple(r if isinstance(r, str) else r.__name__ for r in retry_on)
    declared = registry.options(task_name).priority
    return {"timeout": timeout, "max_retries": max_retries, "retry_on": names,
            "retry_backoff": retry_backoff,
            "priority": priority(level if level is not None else declared)}


def split_item(item: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A map item as arguments: a tuple is star-args, a dict is kwargs, else one argument."""
    if isinstance(item, tuple):
        return item, {}
    if isinstance(item, dict):
        return (), item
    return (item,), {}
