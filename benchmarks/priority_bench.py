"""Issue 23's priority figures, as two workloads of bench.py (default settings).

    python benchmarks/bench.py priority      # high tasks behind a 5,000-task backlog
    python benchmarks/bench.py starvation    # low tasks under a continuous normal load

``priority``: 3 workers x 4 slots busy with a map of 5,000 tasks of 50 ms; 20
high-priority tasks are submitted one a second. Their start delay (start - submit)
has the target max <= 1 s + the longest task then running (50 ms).

``starvation``: the same workers under ~40 s of normal tasks of 200 ms; 5 low-priority
tasks are submitted one a second from 2 s in. Each must start within the starvation
bound (``Config.priority_starvation``, 30 s by default) plus about a second, well before
the backlog ends.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import yadtq
from worker_node.tasks import add, sleep
from yadtq.local import LocalCluster, LocalStack

WORKERS = 3


def _cluster(stack: LocalStack) -> LocalCluster:
    return LocalCluster(workers=WORKERS, stack=stack, queue=f"prio-{time.time_ns()}",
                        concurrency=4, log_level="WARNING")


def _delays(q: yadtq.Client, futures: list[yadtq.TaskFuture]) -> list[float]:
    records = q.backend.task_records([f.id for f in futures])
    return [r["started_at"] - r["queued_at"] for r in records]


def priority(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """20 high tasks, one a second, while 12 slots work through 5,000 tasks of 50 ms."""
    with _cluster(stack) as cluster, yadtq.connect(cluster) as q:
        q.wait_for_workers(WORKERS, timeout=60)
        backlog = q.map(sleep, [0.05] * 5000)
        time.sleep(1.0)  # the backlog is being worked on (pacing, not a synchronisation)
        urgent = []
        for i in range(20):
            urgent.append(q.submit_with(add, (i, 1), priority="high"))
            time.sleep(1.0)  # one a second, as the issue asks
        for future in urgent:
            future.result(timeout=60)
        left = 5000 - backlog.status_counts()["success"]
        backlog.wait(timeout=600)
        delays = _delays(q, urgent)
    return {"high_tasks": len(delays), "backlog_left_after": left,
            "delay_p50_ms": round(statistics.median(delays) * 1000, 1),
            "delay_max_ms": round(max(delays) * 1000, 1), "target_max_ms": 1050}


def starvation(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """5 low tasks under ~40 s of normal 200 ms tasks on 12 slots."""
    with _cluster(stack) as cluster, yadtq.connect(cluster) as q:
        q.wait_for_workers(WORKERS, timeout=60)
        bound = cluster.config.priority_starvation
        backlog = q.map(sleep, [0.2] * 2400)
        time.sleep(2.0)  # the load is under way (pacing, not a synchronisation)
        low = []
        for i in range(5):
            low.append(q.submit_with(add, (i, 1), priority="low"))
            time.sleep(1.0)
        for future in low:
            future.result(timeout=120)
        left = 2400 - backlog.status_counts()["success"]
        backlog.wait(timeout=600)
        delays = _delays(q, low)
        backlog_ended = max(r["finished_at"] for r in q.backend.task_records(
            [f.id for f in backlog]))
        last_low = max(r["started_at"] for r in q.backend.task_records([f.id for f in low]))
    return {"low_tasks": len(delays), "bound_s": bound,
            "delay_min_s": round(min(delays), 2), "delay_max_s": round(max(delays), 2),
            "backlog_left_when_lows_done": left,
            "backlog_ended_s_after_last_low": round(backlog_ended - last_low, 1)}
