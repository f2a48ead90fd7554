"""The ``schedules`` and ``catchup`` workloads of bench.py.

``schedules``: exactly once under faults, lateness, idle cost. Short by default (every
1 s for 30 s, one worker SIGSTOPped 10 s, another SIGKILLed and restarted); issue 22's
version is ``--schedule-every 2 --schedule-seconds 300 --stop-seconds 20``.

``catchup``: issue 22's catch-up check as it is: every worker stopped for
``--catchup-down`` (10) s under three 1 s schedules, one per ``catchup`` mode; each
mode's history must be what docs/time.md promises.
"""

from __future__ import annotations

import argparse
import collections
import signal
import time
import uuid
from itertools import groupby
from typing import Any

import redis
import workloads

import yadtq
from worker_node.tasks import add
from yadtq.local import LocalCluster, LocalStack
from yadtq.schedule_times import GRACE

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
    parser.add_argument("--catchup-down", type=float, default=10.0, metavar="S",
                        help="catchup: how long every worker is stopped (default: 10)")


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


CATCHUP_MODES = ("one", "all", "none")
ON_TIME_AROUND = 3  # occurrences fired on time before the stop and after the restart


def _fired_on_time_since(q: yadtq.Client, names: list[str], since: float) -> bool:
    """True when each schedule has fired ``ON_TIME_AROUND`` occurrences looked at after
    ``since`` (Redis time)."""
    return all(sum(r["outcome"] == "fired" and r["occurrence"] > since
                   for r in q.backend.schedules.history(name)) >= ON_TIME_AROUND
               for name in names)


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"catchup: no {what} within {timeout:.0f} s")
        time.sleep(0.2)


def catchup(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """Three schedules every ``--schedule-every`` s, catchup one, all and none (overlap
    "allow", so only catch-up decides), on 3 workers; every worker stopped (SIGTERM, and
    gone) for ``--catchup-down`` s, then started again. Per mode: the history's fired,
    missed and skipped counts, the occurrences due while no worker was live (``late``),
    those of them fired, and whether that is what the mode promises. ``unlooked_s``: how
    long no worker looked (the stop, plus the restarted workers' start)."""
    names = {mode: f"catchup-{mode}" for mode in CATCHUP_MODES}
    with _cluster(stack) as cluster, yadtq.connect(cluster) as q:
        q.wait_for_workers(WORKERS, timeout=60)
        handles = [q.schedule(name, add, every=args.schedule_every, args=(1, 1),
                              catchup=mode, overlap="allow") for mode, name in names.items()]
        clock = q.backend.schedules.now
        began = clock()
        _wait(lambda: _fired_on_time_since(q, list(names.values()), began), 60,
              "occurrences fired before the stop")
        workers = [w for w in cluster.worker_processes if w.alive]
        for worker in workers:
            cluster.kill_worker(worker.name, signal.SIGTERM)
        for worker in workers:
            worker.popen.wait(cluster.stop_timeout)
        stopped = clock()
        _pause(args.catchup_down)
        for worker in workers:
            cluster.start_worker(worker.name)
        restarted = clock()
        _wait(lambda: _fired_on_time_since(q, list(names.values()), restarted), 120,
              "occurrences fired after the restart")
        for handle in handles:
            handle.pause()
        histories = {mode: q.backend.schedules.history(name) for mode, name in names.items()}
        fired_ids = [r["task_id"] for rows in histories.values() for r in rows
                     if r["outcome"] == "fired"]
        deadline = time.monotonic() + 60  # then count what has not finished
        while time.monotonic() < deadline and not all(
                s in ("success", "failed") for s in q.backend.statuses(fired_ids)):
            time.sleep(0.2)
        statuses = dict(zip(fired_ids, q.backend.statuses(fired_ids), strict=True))
    looks = sorted({float(r["at"]) for rows in histories.values() for r in rows})
    figures: dict[str, Any] = {
        "stopped_s": round(restarted - stopped, 1),
        # from the last look before the stop to the first after the restart
        "unlooked_s": round(max(b - a for a, b in zip(looks, looks[1:], strict=False)), 1),
        # fired tasks not finished a minute after the last fired (should be none)
        "unfinished": dict(collections.Counter(
            s for s in statuses.values() if s not in ("success", "failed")))}
    for mode, rows in histories.items():
        verdict = catchup_verdict(mode, rows, args.schedule_every)
        verdict["ran"] = sum(statuses[r["task_id"]] == "success" for r in rows
                             if r["outcome"] == "fired")
        figures.update({f"{mode}_{k}": v for k, v in verdict.items()})
    return figures


def catchup_verdict(mode: str, rows: list[dict[str, Any]], every: float) -> dict[str, Any]:
    """A schedule's history against what its catch-up mode promises (docs/time.md).

    Every occurrence from the first to the last must be recorded once (``contiguous``).
    One looked at more than ``GRACE`` s after it fell is late (``late``, over ``late_looks``
    looks: one expected, the first after the restart). At such a look ``one`` fires the
    latest due occurrence (the on-time ones, if any) and records the others missed,
    ``all`` fires each, ``none`` only the on-time ones. Nothing is skipped (overlap "allow").
    """
    occurrences = [r["occurrence"] for r in rows]
    contiguous = all(round((b - a) / every) == 1
                     for a, b in zip(occurrences, occurrences[1:], strict=False))
    late = [r for r in rows if float(r["at"]) - r["occurrence"] > GRACE]
    kept = contiguous and bool(late) and not any(r["outcome"] == "skipped" for r in rows)
    looks = 0
    for at, group in groupby(rows, key=lambda r: float(r["at"])):
        look = list(group)
        on_time = [at - r["occurrence"] <= GRACE for r in look]
        if all(on_time):
            kept = kept and all(r["outcome"] == "fired" for r in look)
            continue
        looks += 1
        promised = {"one": on_time if any(on_time) else [False] * (len(look) - 1) + [True],
                    "all": [True] * len(look), "none": on_time}[mode]
        kept = kept and [r["outcome"] == "fired" for r in look] == promised
    return {"fired": sum(r["outcome"] == "fired" for r in rows),
            "missed": sum(r["outcome"] == "missed" for r in rows),
            "skipped": sum(r["outcome"] == "skipped" for r in rows),
            "late": len(late), "late_fired": sum(r["outcome"] == "fired" for r in late),
            "late_looks": looks, "contiguous": contiguous, "as_promised": kept}
