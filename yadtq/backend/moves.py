"""What a worker's status moves take and give back (adapter layer): a claim's answer, and
the outcome of an attempt as ``finish.lua`` stores it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from yadtq.backend.scripts import RETRY, ClaimReply, FinishTask
from yadtq.status import TaskStatus

OVER_THE_LIMIT = "over the limit"  # claim.lua's reason for a task after its limit: untouched


@dataclass(frozen=True)
class Claim:
    """Outcome of a claim: ``attempt`` is set when the worker now holds the task."""

    task_id: str
    attempt: int | None
    skipped_because: str | None = None

    @property
    def claimed(self) -> bool:
        """True when this worker may run the task."""
        return self.attempt is not None

    @property
    def untouched(self) -> bool:
        """True when the claim's limit was reached before this task: it is still queued."""
        return self.skipped_because == OVER_THE_LIMIT

    @classmethod
    def of(cls, task_id: str, reply: ClaimReply) -> Claim:
        """The claim claim.lua answered for ``task_id``."""
        return cls(task_id, reply.attempt, None if reply.ok else reply.reason)


@dataclass(frozen=True)
class Outcome:
    """What a worker reports when an attempt ends; ``retry_at`` asks for another attempt."""

    task_id: str
    batch: str | None
    attempt: int
    status: TaskStatus
    result: Any = None
    error_type: str = ""
    error: str = ""
    traceback: str = ""
    retry_at: float | None = None
    retryable: bool = False
    result_json: str | None = None  # the result already encoded, when the caller has it
    ended_at: float | None = None  # when the attempt ended and freed its slot; None: now

    def finish_task(self, now: float) -> FinishTask:
        """This outcome as finish.lua stores it: the result JSON, or the error's three parts."""
        if self.status is TaskStatus.SUCCESS:
            encoded = self.result_json if self.result_json is not None else json.dumps(self.result)
            stored = (encoded, "", "")
        else:
            stored = (self.error_type, self.error, self.traceback)
        return FinishTask(
            self.task_id, self.batch, self.attempt,
            outcome=RETRY if self.retry_at is not None else self.status.value,
            retry_at=self.retry_at,
            summary=f"{self.error_type}: {self.error}"[:500] if self.error_type else "",
            result_or_error_type=stored[0], error=stored[1], traceback=stored[2],
            ended_at=now if self.ended_at is None else self.ended_at)


@dataclass(frozen=True)
class Stored:
    """What storing outcomes gave: per outcome None (accepted) or why it was refused, and
    the children final outcomes readied, held for the storing worker to produce."""

    refusals: list[str | None]
    readied: list[str]
