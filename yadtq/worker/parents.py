"""A claimed task's inputs (worker runtime): its parents' outcomes, read from Redis.

A task whose arguments hold its parents' futures or batches (``yadtq.inputs``) is run with
their values: the slot reads every parent's outcome in one round trip (``inputs.lua``), after
the claim and before the task runs, so the client that submitted it plays no part. A parent
that did not succeed reaches a child only across an edge that tolerates failure, as a
:class:`~yadtq.inputs.TaskError`; pickled results are checked here against their signed
digests and loaded where the task runs.
"""

from __future__ import annotations

import json
from typing import Any

from yadtq import inputs, protocol, values
from yadtq.backend import RedisBackend
from yadtq.config import Config
from yadtq.errors import UntrustedCode, YadtqError
from yadtq.status import FINISHED, TaskStatus


class InputsUnavailable(YadtqError):
    """A parent's outcome cannot be given to the task (not finished, or gone from Redis)."""


class ParentValues:
    """Reads the values a task's markers stand for."""

    def __init__(self, config: Config, backend: RedisBackend) -> None:
        self.config = config
        self._backend = backend

    def read(self, message: protocol.TaskMessage) -> dict[tuple[str, str], Any] | None:
        """The value of each marker in ``message``'s arguments; None for a task without.

        Raises:
            InputsUnavailable: a parent has not finished, or its record is gone.
            UntrustedCode: a pickled result this worker's secret does not vouch for.
            BackendUnavailable: Redis did not answer.
        """
        if message.inputs is None:
            return None
        tasks, batches = self._backend.edges.inputs(message.inputs.tasks,
                                                    message.inputs.batches)
        found: dict[tuple[str, str], Any] = {
            (inputs.FUTURE, task_id): self._value(task_id, fields)
            for task_id, fields in tasks.items()}
        for batch_id, members in batches.items():
            if not members:
                raise InputsUnavailable(f"batch {batch_id} is not in Redis (it expired, or it "
                                        "never existed); its results cannot be given")
            found[(inputs.BATCH, batch_id)] = [self._value(task_id, fields)
                                               for task_id, fields in members]
        return found

    def _value(self, task_id: str, fields: dict[str, str]) -> Any:
        status = fields["status"]
        if not status:
            raise InputsUnavailable(f"task {task_id} is not in Redis (its record expired); "
                                    "its result cannot be given")
        if TaskStatus(status) not in FINISHED:
            raise InputsUnavailable(f"task {task_id} is {status}, not finished; its result "
                                    "cannot be given yet")
        if status != TaskStatus.SUCCESS.value:
            return inputs.TaskError(task_id, fields["error_type"] or status, fields["error"],
                                    fields["traceback"], status)
        result = json.loads(fields["result"]) if fields["result"] else None
        if not values.is_stored_result(result):
            return result
        ref = values.result_ref(result, task_id, self.config.secret)
        if ref.inline:
            return inputs.Pickled(ref.inline_bytes())
        data = self._backend.blob(ref.sha256)
        if data is None:
            raise UntrustedCode(f"the result of task {task_id} is no longer in Redis (it "
                                "expired); it cannot be given")
        return inputs.Pickled(ref.checked(data))
