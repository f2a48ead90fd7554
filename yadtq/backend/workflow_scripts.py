"""The codecs of the scripts that move dependent work (adapter layer, beside the backend):
``settle.lua``, ``inputs.lua``, ``retry_workflow.lua`` and ``repair_blocked.lua`` (see
``scripts`` for how a codec lays out a script's KEYS and ARGV). The edges themselves are
written by ``enqueue.lua`` and moved by every script that ends a task, through
``lua/lib/edges.lua``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from yadtq.backend.keys import Keys
from yadtq.backend.records import text
from yadtq.backend.scripts import EDGE_BUDGET

INPUT_FIELDS = ("status", "result", "error_type", "error", "traceback")  # inputs.lua's


@dataclass(frozen=True)
class SettleCall:
    """settle.lua: go on moving the children of finished tasks (wide fan-outs), and take
    the readied children due."""

    script: ClassVar[str] = "settle.lua"
    now: float
    ttl: float  # seconds a record lives after it finishes
    hold: float  # seconds the caller holds the children it takes, to produce them
    take: int = 1000  # due children to take at most
    budget: int = EDGE_BUDGET

    def keys(self, keys: Keys) -> list[str]:
        return [keys.settling, keys.blocked, keys.unblocked]

    def args(self, keys: Keys) -> list[Any]:
        return [f"{keys.prefix}:", self.now, self.ttl, keys.events, self.budget, self.hold,
                self.take]

    def parse(self, reply: Sequence[Any]) -> list[str]:
        """The ids of the children the caller is to produce (held for it)."""
        return [text(task_id) for task_id in reply]


@dataclass(frozen=True)
class InputsCall:
    """inputs.lua: the outcomes of a task's parent tasks and parent batches."""

    script: ClassVar[str] = "inputs.lua"
    tasks: Sequence[str]
    batches: Sequence[str]

    def keys(self, keys: Keys) -> list[str]:
        return []

    def args(self, keys: Keys) -> list[Any]:
        return [f"{keys.prefix}:", len(self.tasks), *self.tasks, *self.batches]

    def parse(self, reply: Sequence[Any]
              ) -> tuple[dict[str, dict[str, str]], dict[str, list[tuple[str, dict[str, str]]]]]:
        """Each task's ``INPUT_FIELDS`` by id; each batch's tasks with theirs, in order."""
        width = len(INPUT_FIELDS)
        flat, batches = reply
        tasks = {task_id: _fields(flat[i * width:(i + 1) * width])
                 for i, task_id in enumerate(self.tasks)}
        stride = width + 1
        members = {
            batch: [(text(one[i]), _fields(one[i + 1:i + stride]))
                    for i in range(0, len(one), stride)]
            for batch, one in zip(self.batches, batches, strict=True)}
        return tasks, members


@dataclass(frozen=True)
class RetryWorkflowCall:
    """retry_workflow.lua: failed | skipped -> queued | blocked, attempt + 1."""

    script: ClassVar[str] = "retry_workflow.lua"
    now: float
    task_ids: Sequence[str]

    def keys(self, keys: Keys) -> list[str]:
        return [keys.blocked, keys.unblocked]

    def args(self, keys: Keys) -> list[Any]:
        return [f"{keys.prefix}:", self.now, keys.events, *self.task_ids]

    def parse(self, reply: Sequence[Any]) -> tuple[list[str], list[str]]:
        """The ids it queued, and the ids it blocked."""
        queued, blocked = reply
        return [text(i) for i in queued], [text(i) for i in blocked]


@dataclass(frozen=True)
class RepairBlockedCall:
    """repair_blocked.lua: move blocked tasks whose parents all ended but never moved them."""

    script: ClassVar[str] = "repair_blocked.lua"
    now: float
    ttl: float  # seconds a record lives after it finishes
    limit: int  # how many of the longest-blocked tasks to look at

    def keys(self, keys: Keys) -> list[str]:
        return [keys.blocked, keys.unblocked, keys.settling]

    def args(self, keys: Keys) -> list[Any]:
        return [f"{keys.prefix}:", self.now, self.ttl, keys.events, self.limit]

    def parse(self, reply: Sequence[Any]) -> list[str]:
        """The ids it moved."""
        return [text(task_id) for task_id in reply]


def _fields(values: Sequence[Any]) -> dict[str, str]:
    return {name: text(value) for name, value in zip(INPUT_FIELDS, values, strict=True)}
