"""What a submitted task depends on (core layer): futures and batches found in its
arguments, and order-only edges (``depends_on``).

Each future (or batch) in the arguments, in lists, tuples and dicts up to
``inputs.MAX_DEPTH`` deep, is replaced by its marker (``yadtq.inputs``): the worker puts the
parent's value there. Parents named in ``depends_on`` only order the work. Either may be
wrapped in ``yadtq.allow_failure`` to let the child run when that parent fails. What comes
out is the message's arguments and ``inputs``, and the edges ``enqueue.lua`` writes with
the child (:attr:`Dependencies.spec`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from yadtq import inputs
from yadtq.batch import TaskBatch
from yadtq.futures import TaskFuture
from yadtq.inputs import AllowFailure, Inputs

Parent = TaskFuture | TaskBatch | AllowFailure


@dataclass
class Dependencies:
    """A task's parents, and its arguments with markers in place of futures."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    parents: list[str] = field(default_factory=list)  # task ids, first seen first
    tolerated: set[str] = field(default_factory=set)  # parents whose failure is allowed
    input_tasks: list[str] = field(default_factory=list)
    input_batches: list[str] = field(default_factory=list)
    workflow: str | None = None  # the first parent's workflow

    @property
    def inputs(self) -> Inputs | None:
        """The message's ``inputs`` field: the parents whose values are arguments."""
        if not (self.input_tasks or self.input_batches):
            return None
        return Inputs(tuple(self.input_tasks), tuple(self.input_batches))

    @property
    def spec(self) -> str:
        """The edges enqueue.lua writes with the child ("" for a task without parents)."""
        if not self.parents:
            return ""
        return json.dumps({"p": self.parents,
                           "t": [p for p in self.parents if p in self.tolerated]})

    def _parent(self, parent: Any, tolerated: bool, as_input: bool) -> Any:
        """Record ``parent`` and return its marker; other values come back as they are."""
        if isinstance(parent, AllowFailure):
            return self._parent(parent.parent, True, as_input)
        if isinstance(parent, TaskFuture):
            ids, marker = [parent.id], inputs.marker(inputs.FUTURE, parent.id)
            if as_input and parent.id not in self.input_tasks:
                self.input_tasks.append(parent.id)
        elif isinstance(parent, TaskBatch):
            ids, marker = list(parent.ids), inputs.marker(inputs.BATCH, parent.id)
            if as_input and parent.id not in self.input_batches:
                self.input_batches.append(parent.id)
        else:
            return parent
        self.workflow = self.workflow or getattr(parent, "workflow_id", None)
        known = set(self.parents)
        for task_id in ids:
            if task_id not in known:
                self.parents.append(task_id)
                known.add(task_id)
            if tolerated:
                self.tolerated.add(task_id)
        return marker

    def _replace(self, value: Any, depth: int = 0) -> Any:
        """``value`` with each future and batch in it replaced by its marker."""
        if isinstance(value, Parent):
            return self._parent(value, False, as_input=True)
        if depth >= inputs.MAX_DEPTH:
            return value
        if isinstance(value, list):
            return [self._replace(item, depth + 1) for item in value]
        if isinstance(value, tuple):
            return tuple(self._replace(item, depth + 1) for item in value)
        if isinstance(value, dict):
            return {key: self._replace(item, depth + 1) for key, item in value.items()}
        return value


def find(args: Sequence[Any], kwargs: Mapping[str, Any] | None,
         depends_on: Iterable[Any] = ()) -> Dependencies:
    """The parents of a call, and its arguments with markers in place of futures.

    Raises:
        TypeError: an entry of ``depends_on`` is not a future, a batch or
            ``allow_failure`` of one.
    """
    found = Dependencies()
    found.args = tuple(found._replace(value) for value in args)
    found.kwargs = {name: found._replace(value) for name, value in (kwargs or {}).items()}
    for parent in depends_on:
        if not isinstance(parent, Parent):
            raise TypeError(f"depends_on takes futures, batches or allow_failure(...) of them, "
                            f"got {type(parent).__name__}: {parent!r:.60}")
        found._parent(parent, False, as_input=False)
    return found
