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
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from yadtq import inputs, protocol, values
from yadtq.backend import RedisBackend
from yadtq.config import Config
from yadtq.errors import UntrustedCode, YadtqError
from yadtq.status import FINISHED, TaskStatus

KEPT_RESULTS = 4096  # parents' successes a worker keeps, the newest
KEPT_RESULT_BYTES = 65536  # a larger result is read again for each child


class InputsUnavailable(YadtqError):
    """A parent's outcome cannot be given to the task (not finished, or gone from Redis)."""


@dataclass
class Read:
    """Parents' outcomes read for one group of tasks (any status), by task and by batch."""

    tasks: dict[str, dict[str, str]] = field(default_factory=dict)
    batches: dict[str, list[tuple[str, dict[str, str]]]] = field(default_factory=dict)


class ParentValues:
    """Reads the values a task's markers stand for (shared by the slot threads).

    A group of claimed tasks has its parents read in one round trip (:meth:`prefetch`),
    and a parent's success is kept (its result cannot change, even by a workflow's retry),
    so the children of a wide fan-out read their parent once, not once each.
    """

    def __init__(self, config: Config, backend: RedisBackend) -> None:
        self.config = config
        self._backend = backend
        self._lock = threading.Lock()
        self._succeeded: OrderedDict[str, dict[str, str]] = OrderedDict()  # newest last

    def prefetch(self, messages: Sequence[protocol.TaskMessage]) -> Read:
        """Read the parents of these tasks, those not kept already, in one round trip.

        Raises:
            BackendUnavailable: Redis did not answer (each task then reads its own).
        """
        read = Read()
        with self._lock:
            tasks = [t for m in messages if m.inputs for t in m.inputs.tasks
                     if t not in self._succeeded]
        batches = [b for m in messages if m.inputs for b in m.inputs.batches]
        if tasks or batches:
            self._fetch(read, list(dict.fromkeys(tasks)), list(dict.fromkeys(batches)))
        return read

    def _fetch(self, read: Read, tasks: Sequence[str], batches: Sequence[str]) -> None:
        found, members = self._backend.edges.inputs(tasks, batches)
        read.tasks.update(found)
        read.batches.update(members)
        with self._lock:
            for task_id, fields in found.items():
                if fields["status"] == TaskStatus.SUCCESS.value and \
                        len(fields["result"]) <= KEPT_RESULT_BYTES:
                    self._succeeded[task_id] = fields
                    if len(self._succeeded) > KEPT_RESULTS:
                        self._succeeded.popitem(last=False)

    def read(self, message: protocol.TaskMessage, read: Read | None = None
             ) -> dict[tuple[str, str], Any] | None:
        """The value of each marker in ``message``'s arguments; None for a task without.
        ``read``: what :meth:`prefetch` read for its group.

        Raises:
            InputsUnavailable: a parent has not finished, or its record is gone.
            UntrustedCode: a pickled result this worker's secret does not vouch for.
            BackendUnavailable: Redis did not answer.
        """
        if message.inputs is None:
            return None
        read = read or Read()
        with self._lock:
            kept = {t: self._succeeded[t] for t in message.inputs.tasks if t in self._succeeded}
        missing = [t for t in message.inputs.tasks if t not in kept and t not in read.tasks]
        unread = [b for b in message.inputs.batches if b not in read.batches]
        if missing or unread:
            self._fetch(read, missing, unread)
        known = {**read.tasks, **kept}
        found: dict[tuple[str, str], Any] = {
            (inputs.FUTURE, task_id): self._value(task_id, known[task_id])
            for task_id in message.inputs.tasks}
        for batch_id in message.inputs.batches:
            members = read.batches[batch_id]
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
