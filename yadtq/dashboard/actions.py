"""What the dashboard may change (top layer), only when started with ``--allow-actions``.

Cancel and retry go through ``yadtq.Client``, the same calls a notebook makes, so a
dashboard's cancel is no different from ``q.cancel(task_id)``. A client per queue is
connected at the first action (a retry produces to Kafka), not at startup.
"""

from __future__ import annotations

import threading

from yadtq.client import Client
from yadtq.dashboard.settings import DashboardSettings
from yadtq.errors import TaskNotFound
from yadtq.status import FINISHED


class Actions:
    """Cancel a task, a batch or a workflow; retry a workflow's failed and skipped tasks."""

    def __init__(self, settings: DashboardSettings) -> None:
        self._configs = {config.queue: config for config in settings.configs}
        self._clients: dict[str, Client] = {}
        self._lock = threading.Lock()

    def _client(self, queue: str) -> Client:
        with self._lock:
            if queue not in self._clients:
                self._clients[queue] = Client(self._configs[queue])
            return self._clients[queue]

    def run(self, kind: str, verb: str, queue: str, item_id: str) -> str:
        """Do ``verb`` to the ``kind`` (task, batch or workflow) ``item_id``; returns a
        sentence that says what was done, for the page to show.

        Raises:
            TaskNotFound: Redis holds no such task, batch or workflow.
        """
        client = self._client(queue)
        if kind == "task":
            status = client.status(item_id).value
            done = client.cancel(item_id)
            return f"cancelled task {item_id}" if done else \
                f"task {item_id} was not cancelled: it is already {status}"
        if kind == "batch":
            return f"cancelled {_tasks(self._cancel_batch(client, item_id))} of batch {item_id}"
        workflow = client.get_workflow(item_id)
        if verb == "retry":
            return f"{_tasks(workflow.retry())} of workflow {item_id} will run again"
        return f"cancelled {_tasks(workflow.cancel())} of workflow {item_id} (their " \
            "dependents are skipped)"

    @staticmethod
    def _cancel_batch(client: Client, batch_id: str) -> int:
        ids = client.backend.batch_task_ids(batch_id)
        if not ids:
            raise TaskNotFound(f"no batch {batch_id!r} in Redis (or it has expired)")
        final = {status.value for status in FINISHED}
        return sum(1 for task_id, status in zip(ids, client.backend.statuses(ids), strict=True)
                   if status and status not in final and client.cancel(task_id, batch_id))

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _tasks(count: int) -> str:
    return f"{count} task" if count == 1 else f"{count} tasks"
