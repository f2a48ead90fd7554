"""Results as arguments (bottom layer): the markers a task's arguments carry in place of
its parents' futures, and putting the parents' values in their place.

The client replaces each future in the arguments (in lists, tuples and dicts, a few levels
deep) with ``{"__yadtq_future__": id}``, and each batch with ``{"__yadtq_batch__": id}``
(``dependencies``). The worker reads the parents' outcomes once it has claimed the task
(``worker.inputs``) and, where the task runs, :func:`substitute` puts each value in place of
its marker: a parent's result, a batch's results in submission order, or, across an edge
that tolerates failure (``allow_failure``), a :class:`TaskError` for a parent that failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yadtq import values

FUTURE = "__yadtq_future__"  # the key of a parent task's marker
BATCH = "__yadtq_batch__"  # the key of a parent batch's marker
MAX_DEPTH = 8  # how deep in nested arguments futures are looked for


@dataclass(frozen=True, slots=True)
class Inputs:
    """A message's ``inputs`` field: the tasks and batches whose results stand in its
    arguments (``protocol`` checks it on the wire)."""

    tasks: tuple[str, ...] = ()
    batches: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, list[str]]:
        """The JSON object of the message's ``inputs`` field."""
        return {"tasks": list(self.tasks), "batches": list(self.batches)}


@dataclass(frozen=True)
class TaskError:
    """What a child that tolerates a parent's failure gets in place of the parent's value."""

    id: str
    type: str
    message: str
    traceback: str = ""
    status: str = "failed"  # or "cancelled", "skipped"

    def __str__(self) -> str:
        return f"task {self.id} {self.status}: {self.type}: {self.message}"


@dataclass(frozen=True)
class AllowFailure:
    """An edge that tolerates failure (see :func:`allow_failure`)."""

    parent: Any  # a TaskFuture or a TaskBatch


def allow_failure(parent: Any) -> AllowFailure:
    """Mark an edge that tolerates failure: the child runs even if ``parent`` (a future or a
    batch) fails, is cancelled or is skipped, and gets a :class:`TaskError` in place of
    each value that did not come."""
    return AllowFailure(parent)


def marker(kind: str, parent_id: str) -> dict[str, str]:
    """The JSON object that stands in the arguments for a parent task or batch."""
    return {kind: parent_id}


def marked(value: Any) -> tuple[str, str] | None:
    """``(kind, id)`` when ``value`` is a marker, else None."""
    if isinstance(value, dict) and len(value) == 1:
        (key, parent_id), = value.items()
        if key in (FUTURE, BATCH) and isinstance(parent_id, str):
            return key, parent_id
    return None


def substitute(value: Any, values: Mapping[tuple[str, str], Any], depth: int = 0) -> Any:
    """``value`` with each marker of ``values`` (keyed by ``(kind, id)``) replaced by its
    value, in lists, tuples and dicts up to :data:`MAX_DEPTH` deep; markers of other ids
    are left as they are (they are data, not parents)."""
    found = marked(value)
    if found is not None:
        return values.get(found, value)
    if depth >= MAX_DEPTH:
        return value
    if isinstance(value, list):
        return [substitute(item, values, depth + 1) for item in value]
    if isinstance(value, tuple):
        return tuple(substitute(item, values, depth + 1) for item in value)
    if isinstance(value, dict):
        return {key: substitute(item, values, depth + 1) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Pickled:
    """A parent's pickled result, checked against its signed digest by the worker, loaded
    only where the task runs (as the task's own pickled arguments are)."""

    data: bytes


def load(value: Any) -> Any:
    """A value as the task gets it: a :class:`Pickled` one loaded, a batch's list item by
    item; anything else as it is."""
    if isinstance(value, Pickled):
        return values.loads(value.data)
    if isinstance(value, list):
        return [load(item) for item in value]
    return value
