"""What each dashboard page shows (top layer), read from Redis through the backend.

Every read returns plain JSON-ready dicts: the page's template renders them, the JSON
API returns them, and the live stream sends them again when they change. Each read is
bounded (a page of a batch, the newest batches, the tasks under a lease), whatever the
size of a batch, and :class:`QueueReads` counts the Redis commands it sends, so a live
stream can space its updates to stay within its budget of commands a second.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from yadtq.backend import RedisBackend
from yadtq.errors import TaskNotFound
from yadtq.status import COUNTERS, FINISHED
from yadtq.worker_table import worker_row

PAGE_SIZE = 50  # tasks on a page of a batch or workflow
OVERVIEW_BATCHES = 5  # newest batches the overview lists
RECENT_BATCHES = 20  # newest batches the batches page lists
RECENT_WORKFLOWS = 10  # newest workflows the batches page lists
HELD_LOOK = 100  # most tasks under a lease read to say what the workers run
FINAL = frozenset(status.value for status in FINISHED)
TASK_FIELDS = ("status", "task", "attempt", "worker", "batch", "index", "workflow",
               "queued_at", "started_at", "finished_at", "due_at", "retry_at", "waits_for",
               "error_type", "error", "traceback", "args", "kwargs", "result", "parents")


def progress(counts: dict[str, float] | None, total: int | None = None) -> dict[str, Any]:
    """A batch's or workflow's counts per status, with ``done`` (finished) and ``percent``."""
    counts = counts or {}
    total = int(counts.get("total", 0)) if total is None else total
    row: dict[str, Any] = {"total": total, **{s: int(counts.get(s, 0)) for s in COUNTERS}}
    row["done"] = sum(row[s] for s in FINAL)
    row["percent"] = round(100.0 * row["done"] / total, 1) if total else 100.0
    return row


def _number(value: str) -> float | None:
    return float(value) if value else None


class QueueReads:
    """The reads of one queue's pages, through its backend, counting the commands sent."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.commands = 0  # Redis commands sent so far (pipelined ones each count)

    @property
    def queue(self) -> str:
        return self.backend.config.queue

    # --- the queue ------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Queue-wide counts: tasks in each status now (outcomes so far for the final
        ones), submitted, retries, requeued, dead-lettered, and outcomes per task name."""
        stats = self.backend.queue_stats()
        self.commands += 1
        return {
            "submitted": stats.submitted,
            "statuses": {name: int(stats.statuses.get(name, 0)) for name in COUNTERS},
            "done": sum(int(stats.statuses.get(name, 0)) for name in FINAL),
            "retries": stats.retries,
            "requeued": stats.requeued,
            "dead_lettered": stats.dead_lettered,
            "outcomes": [{"id": f"{task}:{status}", "task": task, "status": status,
                          "count": count}
                         for (task, status), count in sorted(stats.outcomes.items())],
        }

    def workers(self, running: bool = False) -> list[dict[str, Any]]:
        """The queue's workers, newest heartbeat first; with ``running``, what each runs
        (read from the tasks under a lease, at most ``HELD_LOOK`` of them)."""
        records = self.backend.workers()
        self.commands += 1 + len(records)
        now, expected = time.time(), self.backend.config.shared_settings()
        held: dict[str, Counter[str]] = {}
        if running:
            leased = self.backend.listings.held(HELD_LOOK)
            self.commands += 1 + len(leased)
            for _, worker, task in leased:
                held.setdefault(worker, Counter())[task] += 1
        rows = []
        for record in records:
            if record.get("queue", self.queue) != self.queue:
                continue
            row = worker_row(record, now, expected)
            rows.append({
                "id": row["name"], "name": row["name"], "host": row["host"], "pid": row["pid"],
                "status": row["status"], "slots": row["concurrency"], "busy": row["in_flight"],
                "heartbeat_age": row["heartbeat_age"], "processed": row["processed"],
                "failed": row["failed"], "tasks": row["tasks"],
                "running": ", ".join(f"{task} ×{n}" for task, n in
                                     sorted(held.get(row["name"], Counter()).items())),
            })
        return rows

    def batches(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` batches, newest first, with their progress."""
        recent = self.backend.recent_batches(limit)
        counts = self.backend.listings.batches([batch_id for batch_id, _ in recent])
        self.commands += 1 + 2 * len(recent)  # the index, each one's EXISTS and counters
        return [{"id": batch_id, "created_at": created, **progress(found)}
                for (batch_id, created), found in zip(recent, counts, strict=True)
                if found is not None]

    def workflows(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` workflows, newest first, with their progress (read from
        every task's status: a workflow keeps no counters)."""
        rows = []
        for info in self.backend.workflows.recent(limit):
            rows.append({**info, **self._workflow_progress(info["id"])})
        self.commands += 1 + len(rows)
        return rows

    def _workflow_progress(self, workflow_id: str) -> dict[str, Any]:
        ids = self.backend.workflows.task_ids(workflow_id)
        states = self.backend.workflows.states(ids)
        self.commands += 1 + len(ids)
        return progress(Counter(status for status, _, _ in states), len(ids))

    # --- one batch, workflow or task ------------------------------------------

    def batch(self, batch_id: str, page: int) -> dict[str, Any]:
        """A batch's progress and one page of its tasks (``PAGE_SIZE`` a page, from 1).

        Raises:
            TaskNotFound: Redis holds no batch ``batch_id`` (or it has expired).
        """
        [counts] = self.backend.listings.batches([batch_id])
        self.commands += 1
        if counts is None:
            raise TaskNotFound(f"no batch {batch_id!r} in queue {self.queue!r} (or it has "
                               "expired)")
        listed, tasks = self._page(self.backend.listings.batch_page, batch_id, page)
        workflow = next((task["workflow"] for task in tasks if task["workflow"]), "")
        return {"kind": "batch", "id": batch_id, "queue": self.queue,
                "created_at": counts.get("created_at"), "workflow": workflow,
                **progress(counts), **self._paging(listed, page), "tasks": tasks}

    def workflow(self, workflow_id: str, page: int) -> dict[str, Any]:
        """A workflow's progress and one page of its tasks.

        Raises:
            TaskNotFound: Redis holds no workflow ``workflow_id`` (or it has expired).
        """
        info = self.backend.workflows.info(workflow_id)
        self.commands += 1
        if info is None:
            raise TaskNotFound(f"no workflow {workflow_id!r} in queue {self.queue!r} (or it "
                               "has expired)")
        listed, tasks = self._page(self.backend.listings.workflow_page, workflow_id, page)
        return {**info, "kind": "workflow", "queue": self.queue, "workflow": workflow_id,
                **self._workflow_progress(workflow_id), **self._paging(listed, page),
                "tasks": tasks}

    def again(self, previous: dict[str, Any]) -> dict[str, Any]:
        """A batch or workflow page read again for its live stream: the counts, and, if
        they moved, the rows on it not finished before (a finished task does not change).

        Raises:
            TaskNotFound: the batch or workflow has expired meanwhile.
        """
        if previous["kind"] == "batch":
            [counts] = self.backend.listings.batches([previous["id"]])
            self.commands += 1
            if counts is None:
                raise TaskNotFound(f"batch {previous['id']!r} has expired")
            counted = progress(counts)
        else:
            counted = self._workflow_progress(previous["id"])
        if all(counted[name] == previous[name] for name in counted):
            return previous  # no task moved: the rows are as they were
        unfinished = [task["id"] for task in previous["tasks"] if task["status"] not in FINAL]
        fresh = {row["id"]: row for row in self.task_rows(unfinished)}
        return {**previous, **counted,
                "tasks": [fresh.get(task["id"], task) for task in previous["tasks"]]}

    def task_rows(self, task_ids: list[str]) -> list[dict[str, Any]]:
        """A table row for each task: status, attempt, worker, error and timings."""
        found = self.backend.listings.task_rows(task_ids)
        self.commands += len(task_ids)
        rows = []
        for task_id, fields in zip(task_ids, found, strict=True):
            fields = fields or {"status": "expired"}
            started, finished = _number(fields.get("started_at", "")), \
                _number(fields.get("finished_at", ""))
            error = fields.get("error", "")
            rows.append({
                "id": task_id, "index": fields.get("index", ""), "task": fields.get("task", ""),
                "status": fields["status"], "attempt": fields.get("attempt", ""),
                "worker": fields.get("worker", ""), "workflow": fields.get("workflow", ""),
                "error": f"{fields.get('error_type') or 'Error'}: {error}" if error else "",
                "duration": round(finished - started, 4) if started and finished else None,
            })
        return rows

    def _page(self, read: Any, list_id: str, page: int) -> tuple[int, list[dict[str, Any]]]:
        listed, ids = read(list_id, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        self.commands += 2
        return listed, self.task_rows(ids)

    @staticmethod
    def _paging(listed: int, page: int) -> dict[str, int]:
        return {"page": page, "pages": max(1, -(-listed // PAGE_SIZE)), "listed": listed,
                "per_page": PAGE_SIZE}

    def task(self, task_id: str) -> dict[str, Any]:
        """A task's record (arguments, result, error and traceback) and its attempts.

        Raises:
            TaskNotFound: Redis holds neither a record nor attempts of ``task_id``.
        """
        record = self.backend.task_record(task_id) or {}
        attempts = self.backend.task_history(task_id)
        self.commands += 2
        if not record and not attempts:
            raise TaskNotFound(f"no task {task_id!r} in queue {self.queue!r} (or its record "
                               "has expired)")
        fields = {name: record.get(name) for name in TASK_FIELDS}
        fields["status"] = fields["status"] or "expired"
        return {"id": task_id, "queue": self.queue, **fields,
                "attempts": [{"id": str(number), **event}
                             for number, event in enumerate(attempts)]}
