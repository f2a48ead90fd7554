"""Issue 23's limits, measured (run through bench.py: ``python benchmarks/bench.py
rate_limit concurrency_limit [--broker apache-kafka]``).

- ``rate_limit``: 600 tasks of ``throttled`` (``rate_limit="20/s"``) on 3 workers of
  ``--concurrency`` slots: the most started in any 1 s window (target at most 20) and the
  time from the map to the last result (target within 10 % of 30 s).
- ``concurrency_limit``: 100 tasks of 200 ms of ``exclusive`` (``concurrency=2``) on the
  same workers, one worker holding a share SIGKILLed: the most running at once, from
  ``started_at``/``finished_at`` (target 2), and how many succeeded (target 100).
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Callable
from typing import Any

import yadtq
from tests.helpers import most_at_once, most_in_a_window  # the tests' measures, not copies
from worker_node.tasks import exclusive, throttled
from yadtq.local import LocalCluster, LocalStack

Cluster = Callable[[LocalStack, argparse.Namespace], LocalCluster]


def rate_limit(stack: LocalStack, args: argparse.Namespace, cluster: Cluster
               ) -> dict[str, Any]:
    """600 tasks limited to 20/s on 3 workers."""
    with cluster(stack, args) as running, yadtq.connect(running) as q:
        q.wait_for_workers(3, timeout=60)
        started = time.perf_counter()
        batch = q.map(throttled, [0.0] * 600)
        batch.results(timeout=300)
        elapsed = time.perf_counter() - started
        records = q.backend.task_records(batch.ids)
        limited = sum(1 for task_id in batch.ids
                      if any(e["event"] == "limited" for e in q.backend.task_history(task_id)))
    starts = [r["started_at"] for r in records]
    return {"tasks": len(records), "succeeded": sum(r["status"] == "success" for r in records),
            "most_started_in_1s": most_in_a_window(starts, 1.0),
            "seconds": round(elapsed, 2), "ideal_s": 30.0,
            "first_to_last_start_s": round(max(starts) - min(starts), 2),
            "waited_at_least_once": limited,
            "attempts_max": max(r["attempt"] for r in records)}


def concurrency_limit(stack: LocalStack, args: argparse.Namespace, cluster: Cluster
                      ) -> dict[str, Any]:
    """100 tasks of 200 ms, 2 at once, on 3 workers; one holding a share is SIGKILLed."""
    with cluster(stack, args) as running, yadtq.connect(running) as q:
        q.wait_for_workers(3, timeout=60)
        started = time.perf_counter()
        batch = q.map(exclusive, [0.2] * 100)
        names = {process.name for process in running.worker_processes}
        victim = None
        while victim is None and time.perf_counter() - started < 60:
            holders = [r["worker"] for r in q.backend.task_records(batch.ids)
                       if r["status"] == "processing" and r["worker"] in names]
            victim = holders[0] if holders else None
            if victim is None:
                time.sleep(0.05)  # polling the records for a holder, not synchronising
        killed_at = time.perf_counter()
        running.kill_worker(victim, signal.SIGKILL)
        batch.wait(timeout=300)
        elapsed = time.perf_counter() - started
        records = q.backend.task_records(batch.ids)
        died = sum(1 for task_id in batch.ids
                   if any(e["event"] == "worker died" for e in q.backend.task_history(task_id)))
    spans = [(r["started_at"], r["finished_at"]) for r in records
             if r["started_at"] and r["finished_at"]]
    return {"tasks": len(records), "succeeded": sum(r["status"] == "success" for r in records),
            "most_running_at_once": most_at_once(spans), "seconds": round(elapsed, 2),
            "ideal_s": 10.0, "killed_after_s": round(killed_at - started, 2),
            "reaped_from_killed": died}
