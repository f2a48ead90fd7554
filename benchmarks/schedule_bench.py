"""The ``schedules`` workload of bench.py: exactly once under faults, lateness, idle cost.

Short by default (every 1 s for 30 s, one worker SIGSTOPped 10 s, another SIGKILLed and
restarted); issue 22's version is ``--schedule-every 2 --schedule-seconds 300
--stop-seconds 20``.
"""

from __future__ import annotations

import argparse
import collections
import signal
import time
import uuid
from typing import Any

import redis
import workloads

import yadtq
from worker_node.tasks import add
from yadtq.local import LocalCluster, LocalStack

WORKERS = 3


def add_options(parser: argparse.ArgumentParser) -> None:
    """The workload's options, on bench.py's parser."""
    parser.add_argument("--schedule-every", type=float, default=1.0, metavar="S",
                        help="schedules: the schedule's period (default: 1; the issue's: 2)")
    parser.add_argument("--schedule-seconds", type=float, default=30.0, metavar="S",
                        help="schedules: how long it runs (default: 30; the issue's: 300)")
    parser.add_argument("--stop-seconds", type=float, default=10.0, metavar="S",
                        help="schedules: how long one worker is SIGSTOPped (default: 10; the "
                        "issue's: 20)")


def _cluster(stack: LocalStack) -> LocalCluster:
    return LocalCluster(workers=WORKERS, stack=stack, queue=f"bench-{uuid.uuid4().hex[:8]}",
                        log_level="WARNING")


def _pause(seconds: float) -> None:
    """Let the scenario's time pass (its timing, not a synchronisation)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def exactly_once(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """A schedule every ``--schedule-every`` s on 3 workers for ``--schedule-seconds``,
    worker 0 SIGSTOPped for ``--stop-seconds`` from 1/6 in, worker 1 SIGKILLed and
    restarted at 1/2: occurrences fired, missed (gaps), fired twice, and lateness: sent
    (moved to queued and produced) and started, after the occurrence."""
    every, duration = args.schedule_every, args.schedule_seconds
    with _cluster(stack) as cluster, yadtq.connect(cluster) as q:
        q.wait_for_workers(WORKERS, timeout=60)
        schedule = q.schedule("bench", add, every=every, args=(1, 1), overlap="allow")
        started = time.monotonic()
        _pause(duration / 6)
        cluster.kill_worker(0, signal.SIGSTOP)
        _pause(args.stop_seconds)
        cluster.kill_worker(0, signal.SIGCONT)
        _pause(max(0.0, duration / 2 - (time.monotonic() - started)))
        killed = cluster.kill_worker(1, signal.SIGKILL)
        cluster.start_worker(killed.name)
        _pause(max(0.0, duration - (time.monotonic() - started)))
        schedule.pause()
        rows = schedule.history_rows()
        fired = [r for r in rows if r["outcome"] == "fired"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(
                status not in ("success", "failed") for status in
                q.backend.statuses([r["task_id"] for r in fired])):
            time.sleep(0.2)
        records = q.backend.task_records([r["task_id"] for r in fired])
    occurrences = sorted(r["occurrence"] for r in fired)
    gaps = sum(round((b - a) / every) - 1 for a, b in zip(occurrences, occurrences[1:],
                                                          strict=False))
    lateness = [(rec["started_at"] - float(rec["occurrence"])) * 1000
                for rec in records if rec and rec.get("started_at")]
    # Fired and sent: the record went scheduled -> queued, just before Kafka had it.
    sent = [(rec["queued_at"] - float(rec["occurrence"])) * 1000
            for rec in records if rec and rec.get("queued_at")]
    return {"occurrences": len(occurrences),
            "expected": round(duration / every),
            "missed": gaps + sum(r["outcome"] == "missed" for r in rows),
            "skipped": sum(r["outcome"] == "skipped" for r in rows),
            "fired_twice": len(occurrences) - len(set(occurrences)),
            "succeeded": sum(1 for rec in records if rec and rec["status"] == "success"),
            "ran_more_than_once": sum(1 for rec in records if rec and rec["attempt"] > 1),
            "fired_by": dict(collections.Counter(r["fired_by"] for r in fired)),
            **{f"sent_lateness_{k}": v for k, v in workloads.percentiles(sent).items()},
            **{f"start_lateness_{k}": v for k, v in workloads.percentiles(lateness).items()}}


def idle_cost(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """3 idle workers, with no schedule and then with ten (hourly, never due meanwhile):
    Redis commands per second and the busiest worker's CPU, each over ``--idle-seconds``."""
    from bench import _cpu_seconds

    server = redis.Redis.from_url(stack.redis_url)
    figures: dict[str, Any] = {}
    with _cluster(stack) as cluster, yadtq.connect(cluster) as q:
        q.wait_for_workers(WORKERS, timeout=60)
        pids = [w.pid for w in cluster.worker_processes]
        for label, count in (("none", 0), ("ten", 10)):
            for i in range(count):
                q.schedule(f"idle-{i}", add, every=3600, args=(i, i))
            commands = server.info("stats")["total_commands_processed"]
            cpu = [_cpu_seconds(p) for p in pids]
            began = time.perf_counter()
            _pause(args.idle_seconds)
            elapsed = time.perf_counter() - began
            commands = server.info("stats")["total_commands_processed"] - commands
            used = [_cpu_seconds(p) - c for p, c in zip(pids, cpu, strict=True)]
            figures[f"{label}_redis_commands_per_s"] = round(commands / elapsed, 1)
            figures[f"{label}_worker_cpu_pct_max"] = round(100 * max(used) / elapsed, 2)
    server.close()
    return figures


def schedules(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """Exactly once under faults, then the idle cost of ten schedules."""
    return {**exactly_once(stack, args), **idle_cost(stack, args)}
