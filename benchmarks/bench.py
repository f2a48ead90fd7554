"""yadtq benchmarks on the embedded stack: one line of figures per workload.

    python benchmarks/bench.py                      # every workload
    python benchmarks/bench.py throughput latency   # some of them
    python benchmarks/bench.py --json               # machine-readable
    python benchmarks/bench.py --peers              # then the same on Celery, RQ and Dask
    python benchmarks/bench.py --broker apache-kafka   # on Apache Kafka instead of Tansu
    python benchmarks/bench.py workflows [CASE ...]    # issue 21's cases (workflows.py)
    python benchmarks/bench.py schedules --schedule-every 2 --schedule-seconds 300 \\
        --stop-seconds 20                           # issue 22's exactly-once run
    python benchmarks/bench.py catchup              # issue 22's catch-up check
    python benchmarks/bench.py throughput --tracing # issue 25's cost of tracing
    python benchmarks/bench.py priority starvation  # issue 23's priorities (priority_bench.py)
    python benchmarks/bench.py rate_limit concurrency_limit   # issue 23's limits (limits.py)
    python benchmarks/bench.py metrics --runs 3     # throughput, workers' metrics off / on

Each workload starts from a fresh queue on one embedded stack with 3 worker
processes (see ``--mode`` and ``--concurrency``). Figures are wall-clock on
this machine; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout as-is

import limits as limit_bench  # noqa: E402 - beside this script
import priority_bench  # noqa: E402 - beside this script
import schedule_bench  # noqa: E402 - beside this script
import workloads  # noqa: E402 - beside this script

import yadtq  # noqa: E402
from worker_node.tasks import add, sleep  # noqa: E402
from yadtq.local import BROKERS, TANSU, LocalCluster, LocalStack, free_port  # noqa: E402

WORKERS = 3


def _rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (MB)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the process-mode task slots)."""
    total = _rss_mb(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else ():
        try:
            total += _tree_rss_mb(int(child))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def _cluster(stack: LocalStack, args: argparse.Namespace, concurrency: int | None = None
             ) -> LocalCluster:
    # The default settings a user gets, unless --tuned (labelled in the output).
    timing = {"heartbeat_interval": 0.5, "lease_seconds": 3.0} if args.tuned else {}
    tracing = ["--trace-file", str(Path(args.tracing) / "spans-{worker}.jsonl")
               ] if args.tracing else []
    return LocalCluster(
        workers=WORKERS, stack=stack, queue=f"bench-{uuid.uuid4().hex[:8]}",
        concurrency=concurrency or args.concurrency,
        worker_args=["--mode", args.mode, "--steal" if args.steal else "--no-steal", *tracing],
        worker_env={"OTEL_TRACES_EXPORTER": "none"}, log_level="WARNING", **timing,
    )


def _traced(traced: bool) -> contextlib.AbstractContextManager[Any]:
    """With --tracing, a span for the measured submit or map to run in (the client traces)."""
    if not traced:
        return contextlib.nullcontext()
    from opentelemetry import trace

    return trace.get_tracer("bench").start_as_current_span("bench")


def _trace_here() -> None:
    """An SDK tracer provider for this process: its spans are made, then dropped."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used, from /proc (s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """map(add) over 5,000 pairs: wall time from the call to the last result."""
    with _cluster(stack, args) as cluster:
        return _throughput(cluster, args.tasks, traced=bool(args.tracing))


def _throughput(cluster: LocalCluster, count: int, traced: bool = False) -> dict[str, Any]:
    # Redis's CPU per task: what one primary can carry at most (docs/redis-ha.md).
    redis_pid = cluster.stack.pids.get("redis")
    with yadtq.connect(cluster) as q:
        q.wait_for_workers(WORKERS, timeout=60)
        q.map(add, [(i, i) for i in range(100)]).results(timeout=60)  # warm-up
        redis_cpu = _cpu_seconds(redis_pid) if redis_pid else 0.0
        started = time.perf_counter()
        with _traced(traced):
            batch = q.map(add, [(i, i) for i in range(count)])
        submitted = time.perf_counter()
        results = batch.results(timeout=600)
        elapsed = time.perf_counter() - started
        redis_cpu = _cpu_seconds(redis_pid) - redis_cpu if redis_pid else 0.0
        assert results == [2 * i for i in range(count)], "wrong results"
        per_worker = batch.snapshot()["per_worker"]
    return {"tasks": count, "seconds": round(elapsed, 3),
            "submit_seconds": round(submitted - started, 3),
            "tasks_per_second": round(count / elapsed), "per_worker": per_worker,
            **({"redis_cpu_us_per_task": round(redis_cpu / count * 1e6)} if redis_pid else {})}


def metrics(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """``throughput`` with the workers' metrics off, then on (each worker serving them on a
    port of its own), alternately ``--runs`` times; checks that the workers' duration
    histograms counted every task (warm-up included)."""
    off: list[int] = []
    on: list[int] = []
    for _ in range(args.runs):
        with _cluster(stack, args) as cluster:
            off.append(_throughput(cluster, args.tasks)["tasks_per_second"])
        cluster = _cluster(stack, args)
        cluster.initial_workers = 0
        ports = []
        with cluster:
            base = cluster.worker_args
            for _ in range(WORKERS):
                ports.append(free_port())
                cluster.worker_args = (*base, "--metrics-port", str(ports[-1]))
                cluster.start_worker()
            on.append(_throughput(cluster, args.tasks)["tasks_per_second"])
            counted = sum(_duration_count(port) for port in ports)
        assert counted == args.tasks + 100, f"the workers counted {counted} tasks"
    return {"tasks": args.tasks, "runs": args.runs, "off_tasks_per_second": off,
            "on_tasks_per_second": on, "off_median": sorted(off)[len(off) // 2],
            "on_median": sorted(on)[len(on) // 2]}


def _duration_count(port: int) -> float:
    """How many attempts a worker's ``yadtq_task_duration_seconds`` counted."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        return sum(float(line.rsplit(" ", 1)[1]) for line in page.read().decode().splitlines()
                   if line.startswith("yadtq_task_duration_seconds_count{"))


def latency(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """1,500 sequential submit(add).result() after 20 warm-ups (``workloads``)."""
    with _cluster(stack, args) as cluster, yadtq.connect(cluster) as q:
        q.wait_for_workers(WORKERS, timeout=60)
        for _ in range(workloads.LATENCY_WARMUPS):
            q.submit(add, 1, 2).result(timeout=30)
        samples = []
        for _ in range(workloads.LATENCY_SAMPLES):
            started = time.perf_counter()
            assert q.submit(add, 1, 2).result(timeout=30) == 3
            samples.append((time.perf_counter() - started) * 1000)
    return workloads.tail_percentiles(samples)


def busy_submit(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """500 sequential submit(add) calls, each timed to its return, while every slot runs a
    long sleep: no worker claims them at once, and a lone task's wait for a claim
    (``yadtq.waking``) must not slow a busy queue's submits."""
    with _cluster(stack, args) as cluster, yadtq.connect(cluster) as q:
        q.wait_for_workers(WORKERS, timeout=60)
        slots = WORKERS * args.concurrency
        q.map(sleep, [(30.0,)] * slots)
        deadline = time.monotonic() + 30
        while q.stats().statuses.get("processing", 0) < slots:
            assert time.monotonic() < deadline, "the long sleeps did not all start"
            time.sleep(0.05)
        samples = []
        for _ in range(workloads.BUSY_SUBMITS):
            started = time.perf_counter()
            q.submit(add, 1, 2)
            samples.append((time.perf_counter() - started) * 1000)
        return {"mean_ms": round(sum(samples) / len(samples), 2),
                **workloads.tail_percentiles(samples)}


def balance(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """60 long-tailed sleeps a slot (an ideal makespan of about 3 s), 3 workers of
    1 slot and of 4 (``--balance-slots``; with 4, each duration four times in a row), ``--runs``
    times each: per run the makespan and efficiency (ideal / makespan), beside the ideal and
    what list scheduling in submission order reaches (the greedy bound), and where each
    worker's time went (``_worker_split``)."""
    figures: dict[str, Any] = {"runs": args.runs}
    for slots in args.balance_slots:
        # each duration once a slot, in turn: every slot meets the 1-slot problem
        durations = [d for d in workloads.long_tail_durations() for _ in range(slots)]
        ideal = workloads.ideal_makespan(durations, WORKERS * slots)
        greedy = workloads.greedy_makespan(durations, WORKERS * slots)
        makespans, splits = [], []
        with _cluster(stack, args, concurrency=slots) as cluster, yadtq.connect(cluster) as q:
            q.wait_for_workers(WORKERS, timeout=60)
            for _ in range(args.runs):
                submitted, started = time.time(), time.perf_counter()
                batch = q.map(sleep, durations)
                batch.results(timeout=120)
                makespans.append(time.perf_counter() - started)
                splits.append(_worker_split(batch.to_dataframe(), submitted))
        efficiencies = [round(ideal / makespan, 3) for makespan in makespans]
        figures[f"slots_{slots}"] = {
            "tasks": len(durations), "ideal_s": round(ideal, 3), "greedy_s": round(greedy, 3),
            "greedy_efficiency": round(ideal / greedy, 3),
            "makespan_s": [round(m, 3) for m in makespans],
            "efficiency_min": min(efficiencies), "efficiency": efficiencies,
            "workers": splits}
    return figures


def _worker_split(frame: Any, submitted: float) -> list[str]:
    """Each worker's share of a balance run, from its task records: tasks, seconds slept,
    ms from the map's call to its first start, and ms a task between its claim and its slot
    freed beyond the sleep itself (claim round trip, hand-offs, the task process's pipe)."""
    def seconds(column: Any) -> Any:
        return column.map(lambda v: v.timestamp() if hasattr(v, "timestamp") else float(v))

    rows = []
    for _, tasks in frame.groupby("worker"):
        began, ended = seconds(tasks["started_at"]), seconds(tasks["finished_at"])
        overhead = ((ended - began) - tasks["result"]).mean() * 1000
        rows.append(f"{len(tasks)} tasks {tasks['result'].sum():.2f} s, first "
                    f"{(began.min() - submitted) * 1000:.0f} ms, +{overhead:.1f} ms/task")
    return rows


def kill(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """300 tasks of 20 ms on 3 workers of 1 slot (like the peers); SIGKILL one worker
    after 1 s (``--kill-after``)."""
    with _cluster(stack, args, concurrency=1) as cluster, yadtq.connect(cluster) as q:
        q.wait_for_workers(WORKERS, timeout=60)
        started = time.perf_counter()
        batch = q.map(sleep, [0.02] * 300)
        deadline = time.monotonic() + args.kill_after
        while time.monotonic() < deadline:  # the fault's timing, not a synchronisation
            time.sleep(0.05)
        unfinished = len(batch) - len(batch.finished())
        cluster.kill_worker(0, signal.SIGKILL)
        killed = time.perf_counter()
        batch.wait(timeout=120)
        last = time.perf_counter()
        frame = batch.to_dataframe()
    return {"unfinished_at_kill": unfinished,
            "succeeded": int((frame["status"] == "success").sum()),
            "lost": int((frame["status"] != "success").sum()),
            "ran_more_than_once": int((frame["attempt"] > 1).sum()),
            "seconds_to_last_outcome": round(last - started, 2),
            "last_outcome_after_kill_s": round(last - killed, 2)}


def scale(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """Submit time and client memory for map over 100,000 tasks (no workers)."""
    config = yadtq.Config(bootstrap=stack.bootstrap, redis_url=stack.redis_url,
                          queue=f"bench-{uuid.uuid4().hex[:8]}", source="benchmark")
    with yadtq.connect(config) as q:
        rss_before = _rss_mb(os.getpid())
        started = time.perf_counter()
        batch = q.map(add, [(i, i) for i in range(100_000)])
        elapsed = time.perf_counter() - started
        rss_after = _rss_mb(os.getpid())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        assert len(batch) == 100_000
    return {"tasks": 100_000, "submit_s": round(elapsed, 2),
            "rss_before_mb": round(rss_before, 1), "rss_after_mb": round(rss_after, 1),
            "peak_rss_mb": round(peak, 1)}


def memory(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """Worker RSS (with its task processes) at rest and right after 5,000 tasks."""
    with _cluster(stack, args) as cluster, yadtq.connect(cluster) as q:
        q.wait_for_workers(WORKERS, timeout=60)
        pids = [w.pid for w in cluster.worker_processes]
        rest = [_rss_mb(p) for p in pids]
        rest_tree = [_tree_rss_mb(p) for p in pids]
        q.map(add, [(i, i) for i in range(5000)]).results(timeout=600)
        load = [_rss_mb(p) for p in pids]
        load_tree = [_tree_rss_mb(p) for p in pids]
    return {"rest_mb": round(max(rest), 1), "rest_with_task_processes_mb":
            round(max(rest_tree), 1), "load_mb": round(max(load), 1),
            "load_with_task_processes_mb": round(max(load_tree), 1)}


def idle(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """CPU of 3 idle workers and of the broker over ``--idle-seconds`` (% of one core)."""
    with _cluster(stack, args) as cluster, yadtq.connect(cluster) as q:
        q.wait_for_workers(WORKERS, timeout=60)
        q.map(add, [(i, i) for i in range(100)]).results(timeout=60)
        pids = [w.pid for w in cluster.worker_processes]
        brokers = [pid for name, pid in stack.pids.items() if name != "redis"]
        before = [_cpu_seconds(p) for p in pids + brokers]
        client_before = time.process_time()  # this process: the connected client's threads
        started = time.perf_counter()
        stop = time.monotonic() + args.idle_seconds
        while time.monotonic() < stop:  # the measured interval, not a synchronisation
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
        used = [_cpu_seconds(p) - b for p, b in zip(pids + brokers, before, strict=True)]
        client = time.process_time() - client_before
    workers_pct = [100 * u / elapsed for u in used[:len(pids)]]
    return {"seconds": round(elapsed, 1), "worker_cpu_pct_max": round(max(workers_pct), 2),
            "client_cpu_pct": round(100 * client / elapsed, 2),
            "broker_cpu_pct": round(100 * sum(used[len(pids):]) / elapsed, 2)}


def _offset_closure(offset: int) -> Callable[[int, int], int]:
    """A closure as a notebook would define one: shipped by value, not registered."""
    def shifted_add(x: int, y: int) -> int:
        return x + y + offset
    return shifted_add


def shipped(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """map of a shipped closure vs map(add) over the same pairs, and a 16 MB round trip."""
    import numpy

    count = args.tasks
    pairs = [(i, i) for i in range(count)]
    figures: dict[str, Any] = {"tasks": count}
    with _cluster(stack, args) as cluster, yadtq.connect(cluster) as q:
        q.wait_for_workers(WORKERS, timeout=60)
        closure = _offset_closure(0)
        for name, task in (("registered", add), ("shipped", closure)):
            q.map(task, pairs[:100]).results(timeout=60)  # warm-up
            started = time.perf_counter()
            results = q.map(task, pairs).results(timeout=600)
            elapsed = time.perf_counter() - started
            assert results == [2 * i for i in range(count)], "wrong results"
            figures[f"{name}_tasks_per_second"] = round(count / elapsed)
        figures["shipped_vs_registered"] = round(
            figures["shipped_tasks_per_second"] / figures["registered_tasks_per_second"], 3)
        array = numpy.random.default_rng(0).random(2 * 1024 * 1024)  # 16 MB of float64
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            back = q.submit(numpy.negative, array).result(timeout=60)
            samples.append(time.perf_counter() - started)
            assert numpy.array_equal(back, -array), "wrong 16 MB result"
        figures["roundtrip_16mb_seconds_median"] = round(sorted(samples)[2], 3)
        figures["roundtrip_16mb_seconds_max"] = round(max(samples), 3)
    return figures


def countdown(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    """1,000 tasks with countdowns spread over 10 s: lateness (start - due) and early starts."""
    with _cluster(stack, args) as cluster, yadtq.connect(cluster) as q:
        q.wait_for_workers(WORKERS, timeout=60)
        futures = [q.submit_with(add, (i, 1), countdown=i / 100) for i in range(1000)]
        for future in futures:
            future.result(timeout=60)
        records = q.backend.task_records([f.id for f in futures])
    lateness = [(r["started_at"] - r["due_at"]) * 1000 for r in records]
    return {"tasks": len(records), "started_early": sum(late < 0 for late in lateness),
            **{f"lateness_{k}": v for k, v in workloads.percentiles(lateness).items()}}


PEER_WORKLOADS = ("throughput", "latency", "balance")  # those peers.py runs too
WORKLOADS: dict[str, Callable[[LocalStack, argparse.Namespace], dict[str, Any]]] = {
    "throughput": throughput, "latency": latency, "busy_submit": busy_submit, "balance": balance,
    "kill": kill, "scale": scale, "memory": memory, "idle": idle, "shipped": shipped,
    "countdown": countdown, "schedules": schedule_bench.schedules,
    "catchup": schedule_bench.catchup, "priority": priority_bench.priority,
    "starvation": priority_bench.starvation,
    "rate_limit": lambda stack, args: limit_bench.rate_limit(stack, args, _cluster),
    "concurrency_limit": lambda stack, args: limit_bench.concurrency_limit(stack, args, _cluster),
    "metrics": metrics,
}


def main() -> int:
    if sys.argv[1:2] == ["workflows"]:  # dependent work: its own cases and options
        import workflows  # beside this script

        return workflows.main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workloads", nargs="*", metavar="WORKLOAD",
                        help=f"any of {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--mode", default="process", choices=["process", "thread"])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--steal", action=argparse.BooleanOptionalAction, default=True,
                        help="workers steal when idle (default: on)")
    parser.add_argument("--tasks", type=int, default=5000, help="throughput batch size")
    parser.add_argument("--runs", type=int, default=5,
                        help="balance and metrics runs (default: 5)")
    parser.add_argument("--balance-slots", type=lambda text: [int(n) for n in text.split(",")],
                        default=[1, 4], metavar="N[,N]",
                        help="balance: slots a worker, each measured (default: 1,4)")
    parser.add_argument("--kill-after", type=float, default=1.0, metavar="SECONDS",
                        help="when the kill workload kills a worker (default: 1)")
    parser.add_argument("--tuned", action="store_true",
                        help="heartbeat 0.5 s and lease 3 s instead of the defaults (2 s, 10 s)")
    parser.add_argument("--idle-seconds", type=float, default=30.0,
                        help="how long the idle workload measures (default: 30)")
    schedule_bench.add_options(parser)
    parser.add_argument("--broker", choices=BROKERS, default=TANSU,
                        help="the local stack's broker (default: tansu)")
    parser.add_argument("--fetch-wait-ms", type=int, default=None, metavar="MS",
                        help="the workers' fetch wait (default: the Config default)")
    parser.add_argument("--tracing", action="store_const", const=True, default=None,
                        help="workers trace to JSON-lines files and the client maps inside a "
                        "span (throughput; needs the otel extra)")
    parser.add_argument("--peers", action="store_true",
                        help="then run throughput, latency and balance on Celery, RQ and Dask "
                        "(benchmarks/peers.py, in its own virtualenv)")
    args = parser.parse_args()
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(sorted(unknown))}")
    figures: dict[str, Any] = {}
    if args.fetch_wait_ms is not None:
        os.environ["YADTQ_FETCH_WAIT_MS"] = str(args.fetch_wait_ms)  # workers inherit it
    settings = "tuned: heartbeat 0.5 s, lease 3 s" if args.tuned else "default settings"
    if not args.json:
        print(f"broker: {args.broker}, {settings}, mode {args.mode}", flush=True)
    spans = tempfile.TemporaryDirectory(prefix="yadtq-bench-spans-") if args.tracing else None
    if spans is not None:
        args.tracing = spans.name
        _trace_here()
        if not args.json:
            print(f"tracing: the workers' spans go to {spans.name}", flush=True)
    with LocalStack(broker=args.broker) as stack, spans or contextlib.nullcontext():
        for name in args.workloads or WORKLOADS:
            figures[name] = WORKLOADS[name](stack, args)
            if not args.json:
                line = "  ".join(f"{k}={v}" for k, v in figures[name].items() if v is not None)
                print(f"{name:<10} {line}", flush=True)
    if args.json:
        print(json.dumps({"broker": args.broker, "tuned": args.tuned, "mode": args.mode,
                          "concurrency": args.concurrency, **figures}),
              flush=True)
    if args.peers:
        shared = [w for w in args.workloads or WORKLOADS if w in PEER_WORKLOADS]
        peers = Path(__file__).with_name("peers.py")
        return subprocess.call([sys.executable, str(peers), *(["--json"] if args.json else []),
                                "--concurrency", str(args.concurrency), "--tasks",
                                str(args.tasks), *shared])
    return 0


if __name__ == "__main__":
    sys.exit(main())
