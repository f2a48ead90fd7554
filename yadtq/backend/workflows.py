"""Dependent work in Redis (adapter layer): workflows, and the edges between tasks.

A workflow is a name, a creation time and the list of its tasks' ids
(``workflow:<id>``, ``workflow:<id>:tasks``), listed by creation time in
``workflows:<queue>``; its counts are read from its tasks' records, so no script needs to
keep them. The edges between tasks are written with the child (``enqueue.lua``) and moved
by whatever ends a parent (``lua/lib/edges.lua``); what a single step could not move waits
in ``settling:<queue>`` for :meth:`Edges.settle`, and children whose parents all finished
wait in ``unblocked:<queue>`` to be produced (``due_sets.Unblocked``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from yadtq.backend.parts import PIPELINE_CHUNK, BackendPart
from yadtq.backend.records import text
from yadtq.backend.redis_errors import at_the_edge
from yadtq.backend.workflow_scripts import (
    InputsCall,
    RepairBlockedCall,
    RetryWorkflowCall,
    SettleCall,
)

SETTLE_HOLD = 10.0  # seconds a caller of settle holds the children it takes, to produce them
REPAIR_LOOK = 100  # how many of the longest-blocked tasks one repair looks at


@at_the_edge
class Workflows(BackendPart):
    """The queue's workflows: created, listed, their tasks, and run again."""

    def create(self, workflow_id: str, name: str, now: float | None = None) -> float:
        """Record a new workflow; returns when it was created."""
        now = time.time() if now is None else now
        ttl = int(self.config.result_ttl)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._keys.workflow(workflow_id), mapping={
                "name": name, "created_at": repr(now), "queue": self._keys.queue})
            pipe.expire(self._keys.workflow(workflow_id), ttl)
            pipe.zadd(self._keys.workflows, {workflow_id: now})
            pipe.execute()
        return now

    def info(self, workflow_id: str) -> dict[str, Any] | None:
        """A workflow's name and creation time; None if Redis has none (or it expired)."""
        raw = self.redis.hgetall(self._keys.workflow(workflow_id))
        if not raw:
            return None
        info = {text(k): text(v) for k, v in raw.items()}
        return {"id": workflow_id, "name": info.get("name", ""),
                "created_at": float(info.get("created_at") or 0.0)}

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest workflows first (those whose record expired are dropped from the list)."""
        ids = [text(i) for i in self.redis.zrevrange(self._keys.workflows, 0, limit - 1)]
        found, gone = [], []
        for workflow_id in ids:
            info = self.info(workflow_id)
            (found if info else gone).append(info or workflow_id)
        if gone:
            self.redis.zrem(self._keys.workflows, *gone)
        return found

    def task_ids(self, workflow_id: str) -> list[str]:
        """The workflow's tasks, in the order they were submitted."""
        return [text(i) for i in self.redis.lrange(self._keys.workflow_tasks(workflow_id), 0, -1)]

    def states(self, task_ids: Sequence[str]) -> list[tuple[str, str, str]]:
        """Each task's status, task name and batch ("" where unset, or for one whose record
        is gone), in pipelined chunks."""
        found: list[tuple[str, str, str]] = []
        for start in range(0, len(task_ids), PIPELINE_CHUNK):
            with self.redis.pipeline(transaction=False) as pipe:
                for task_id in task_ids[start:start + PIPELINE_CHUNK]:
                    pipe.hmget(self._keys.task(task_id), "status", "task", "batch")
                found.extend((text(status), text(task), text(batch))
                             for status, task, batch in pipe.execute())
        return found

    def retry(self, task_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Run the failed and skipped ones of ``task_ids`` again (``retry_workflow.lua``);
        returns the ids queued (workers produce them) and the ids blocked on those."""
        (queued, blocked), _ = self._scripts.run(RetryWorkflowCall(time.time(), task_ids))
        return queued, blocked


@at_the_edge
class Edges(BackendPart):
    """What workers do for dependent work: read a task's inputs, settle wide fan-outs."""

    def inputs(self, tasks: Sequence[str], batches: Sequence[str]
               ) -> tuple[dict[str, dict[str, str]], dict[str, list[tuple[str, dict[str, str]]]]]:
        """The outcomes of a task's parent tasks and parent batches (``inputs.lua``)."""
        found, _ = self._scripts.run(InputsCall(tasks, batches))
        return found

    def unknown(self, task_ids: Sequence[str]) -> list[str]:
        """The ones of ``task_ids`` Redis has no record of, read in pipelined chunks."""
        ids = list(dict.fromkeys(task_ids))
        found: list[str] = []
        for start in range(0, len(ids), PIPELINE_CHUNK):
            chunk = ids[start:start + PIPELINE_CHUNK]
            with self.redis.pipeline(transaction=False) as pipe:
                for task_id in chunk:
                    pipe.exists(self._keys.task(task_id))
                found.extend(i for i, there in zip(chunk, pipe.execute(), strict=True)
                             if not there)
        return found

    def settle(self, now: float | None = None, hold: float = SETTLE_HOLD) -> list[str]:
        """Move on the edges finished tasks could not move at once, and take the readied
        children due; returns the children to produce, held ``hold`` s for the caller."""
        now = time.time() if now is None else now
        taken, _ = self._scripts.run(SettleCall(now, self.config.result_ttl, hold))
        return taken

    def repair(self, now: float | None = None, limit: int = REPAIR_LOOK) -> list[str]:
        """Move the longest-blocked tasks whose parents all ended without moving them (a
        bug, or a lost record); returns their ids, for the caller to warn of."""
        now = time.time() if now is None else now
        repaired, _ = self._scripts.run(RepairBlockedCall(now, self.config.result_ttl, limit))
        return repaired


def parents_of(record: dict[str, Any]) -> list[str]:
    """A task record's parents (its ``parents`` field, a JSON list of ids)."""
    parents = record.get("parents")
    if isinstance(parents, str):
        return list(json.loads(parents or "[]"))
    return list(parents or [])
