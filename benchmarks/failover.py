"""Redis failover under load: a map runs while the Redis primary is killed, stalled or
killed and restarted, behind three sentinels, at the default durability and the replicated
one (issue 26). Prints one line of figures per run.

    python benchmarks/failover.py                      # every fault, both durabilities
    python benchmarks/failover.py kill stop4 --durability replicated --tasks 2000

A run: a local stack whose Redis is a primary, 2 replicas and 3 sentinels
(down-after 1 s), 3 workers of 4 slots, a map of `tasks` sleeps of 10 ms; at about 30 %
done the fault; then the map must end. tests/test_redis_failover.py runs the same harness
smaller, in CI.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yadtq
from yadtq.local import LocalCluster, LocalStack
from yadtq.status import TaskStatus

FAULTS = ("none", "kill", "stop4", "stop8", "kill_restart")
RAN = {"success", "failed", "retry", "refused"}  # history events of an attempt that ran


class Resolutions:
    """What the client saw each task end as (worker, attempt), the first time, and when:
    a thread looks at the batch's finished tasks every 20 ms."""

    def __init__(self, batch: Any) -> None:
        self.seen: dict[str, tuple[str | None, int]] = {}
        self.times: list[float] = []
        self._batch = batch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.look()

    def look(self) -> None:
        now = time.time()
        for position in self._batch.finished():
            future = self._batch[position]
            if future.id not in self.seen:
                self.seen[future.id] = (future.worker, future.attempt)
                self.times.append(now)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.look()


def fault(stack: LocalStack, kind: str) -> str:
    """Apply the fault to the current primary; returns its name."""
    if kind == "none":
        return ""
    primary = stack.redis_primary()
    if kind in ("kill", "kill_restart"):
        stack.kill_redis_primary(signal.SIGKILL)
        if kind == "kill_restart":
            stack.wait_for_failover(primary, timeout=60)
            time.sleep(10)  # the fault's length: the old primary stays down 10 s
            stack.start_redis_node(primary, as_replica=False)
    else:
        stack.signal_redis(primary, signal.SIGSTOP)
        time.sleep(float(kind.removeprefix("stop")))  # the fault's length
        stack.signal_redis(primary, signal.SIGCONT)
    return primary


def run(kind: str, durability: str, tasks: int = 2000, workers: int = 3, *,
        broker: str | None = None, tuned: bool = False, workdir: Path | None = None
        ) -> dict[str, Any]:
    """One map with one fault; returns its figures (see :func:`describe`)."""
    settings: dict[str, Any] = {"durability": durability}
    timing = {"heartbeat_interval": 0.5, "lease_seconds": 3.0} if tuned else {}
    with tempfile.TemporaryDirectory(dir=workdir) as folder, \
            LocalStack(Path(folder), redis_replicas=2, broker=broker) as stack, \
            LocalCluster(workers=workers, stack=stack, queue="failover",
                         key_prefix="failover", settings=settings, **timing) as cluster, \
            yadtq.Client(cluster.config) as client:
        client.wait_for_workers(workers, timeout=120)
        started = time.time()
        batch = client.map("sleep", [(0.01,)] * tasks)
        seen = Resolutions(batch)
        deadline = time.monotonic() + 300
        while batch.status_counts()["success"] < 0.3 * tasks and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the client's own counts for the fault's moment
        leased = client.backend.redis.zcard(client.backend.keys.leases)
        fault_at = time.time()
        fault(stack, kind)
        ended = not batch.wait(timeout=300)[1]
        took = time.time() - started
        seen.stop()
        return describe(client, cluster, batch, seen, kind, durability, tasks, ended, took,
                        leased, fault_at)


def describe(client: yadtq.Client, cluster: LocalCluster, batch: Any, seen: Resolutions,
             kind: str, durability: str, tasks: int, ended: bool, took: float, leased: int,
             fault_at: float) -> dict[str, Any]:
    """The figures the issue asks for, read from Redis after the map."""
    ids = [future.id for future in batch]
    records = client.backend.task_records(ids)
    statuses = collections.Counter(r["status"] if r else "missing" for r in records)
    changed = sum(1 for task_id, record in zip(ids, records, strict=True)
                  if record and task_id in seen.seen
                  and seen.seen[task_id] != (record.get("worker"), int(record["attempt"])))
    histories = client.backend.redis
    with histories.pipeline(transaction=False) as pipe:
        for task_id in ids:
            pipe.lrange(client.backend.keys.task_history(task_id), 0, -1)
        # A run leaves an outcome in the history, accepted or refused (one stored again
        # after an unconfirmed call is refused under the same worker and attempt); a claim
        # that was not confirmed and never ran leaves only its "claimed" event.
        runs = [len({(e["worker"], e["attempt"]) for e in map(json.loads, events)
                     if e.get("event") in RAN}) for events in pipe.execute()]
    counts = client.backend.batch_counts(batch.id)
    recount = {status.value: statuses.get(status.value, 0) for status in TaskStatus}
    finished = sorted(float(r["finished_at"]) for r in records
                      if r and r.get("finished_at") and float(r["finished_at"]) > fault_at - 1)
    outage = max((b - a for a, b in zip(finished, finished[1:], strict=False)), default=None)
    alive = [row for row in client.worker_rows() if row["status"] == "alive"]
    return {
        "fault": kind, "durability": durability, "tasks": tasks, "ended": ended,
        "success": statuses.get("success", 0), "left_queued": statuses.get("queued", 0),
        "statuses": dict(statuses),
        "counters_match": all(counts.get(s, 0) == n for s, n in recount.items()),
        "run_twice": sum(1 for n in runs if n > 1), "running_at_fault": leased,
        "changed_after_resolved": changed,
        "outage_s": round(outage, 2) if outage is not None else None,  # longest gap
        "workers_alive": len(alive),
        "worker_processes_alive": sum(w.alive for w in cluster.worker_processes),
        "seconds": round(took, 2), "tasks_per_second": round(tasks / took),
    }


def throughput(runs: int, tasks: int = 5000, broker: str | None = None) -> None:
    """Tasks/s of a map of `add` on 3 workers behind sentinels, no fault, each durability
    in turn on the same stack (default settings otherwise)."""
    with tempfile.TemporaryDirectory() as folder, \
            LocalStack(Path(folder), redis_replicas=2, broker=broker) as stack:
        rates: dict[str, list[int]] = {"default": [], "replicated": []}
        for run in range(runs):
            for durability in rates:
                with LocalCluster(workers=3, stack=stack, queue=f"tp-{durability}-{run}",
                                  key_prefix="tp", settings={"durability": durability}
                                  ) as cluster, yadtq.Client(cluster.config) as client:
                    client.wait_for_workers(3, timeout=120)
                    client.map("add", [(i, i) for i in range(200)]).results(timeout=120)
                    started = time.perf_counter()
                    client.map("add", [(i, i) for i in range(tasks)]).results(timeout=300)
                    rates[durability].append(round(tasks / (time.perf_counter() - started)))
        for durability, measured in rates.items():
            print(f"throughput durability={durability} tasks={tasks} "
                  f"tasks_per_second={measured}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("faults", nargs="*", metavar="FAULT",
                        help=f"any of {', '.join(FAULTS)} (default: all)")
    parser.add_argument("--durability", action="append", choices=("default", "replicated"))
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--broker", choices=("tansu", "apache-kafka"))
    parser.add_argument("--throughput", type=int, metavar="RUNS",
                        help="instead: tasks/s of each durability, RUNS runs each, no fault")
    args = parser.parse_args()
    if args.throughput:
        throughput(args.throughput, broker=args.broker)
        return
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(sorted(unknown))}: choose from "
                     f"{', '.join(FAULTS)}")
    for kind in args.faults or FAULTS:
        for durability in args.durability or ["default", "replicated"]:
            figures = run(kind, durability, args.tasks, broker=args.broker)
            print(" ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


if __name__ == "__main__":
    main()
