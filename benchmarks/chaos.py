"""Chaos benchmark: run a batch on the embedded stack while injecting faults.

Starts a broker and an append-only Redis (``LocalStack``, data dir in a temp
dir) and three workers (heartbeat 0.5 s, lease 3 s, 4 slots each), submits a
batch of short ``sleep`` tasks plus a small batch of ``fail`` tasks, and
injects these faults in turn, each once the batch has made some progress:

1. ``kill``: SIGKILL a worker, then start a replacement;
2. ``stop``: SIGSTOP a worker for longer than its lease, then SIGCONT it;
3. ``redis``: restart Redis;
4. ``poison``: feed poison messages (garbage bytes, wrong types, missing
   fields, unknown version) straight to the tasks topic.

Then it audits every task's Redis record and attempts history and reads the
dead-letter topic, and prints what happened: lost tasks, re-runs, overwritten
results, dead-lettered poison, and how long each fault took to recover from.
The faults are triggered by progress, not by time, so with a short batch a
fault may still be recovering when the next one starts; the ``overlaps``
column says so. ``--faults`` runs a subset, to measure one fault on its own.

Exit status 0 when no task was lost, no accepted result was overwritten and
every poison message reached the dead-letter topic without running as a task (one that
names a valid id ends that id's record refused, as every refused task does); 1
otherwise.

Usage::

    .venv/bin/python benchmarks/chaos.py [--tasks N] [--json] [--faults kill,stop,redis,poison]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from chaos_audit import Fault, audit, render, seconds  # beside this script
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import yadtq
from worker_node.tasks import fail, sleep
from yadtq.local import LocalCluster, LocalStack

WORKERS = 3
CONCURRENCY = 4
HEARTBEAT_SECONDS = 0.5
LEASE_SECONDS = 3.0
STOP_SECONDS = 5.0  # how long the SIGSTOPped worker stays stopped (longer than the lease)
POISON_COUNT = 200
EXPECTED_FAILURES = 20
SEED = 4
FAULTS = ("kill", "stop", "redis", "poison")
FAULT_AT = {"kill": 0.10, "stop": 0.30, "redis": 0.50, "poison": 0.70}  # fraction done
POLL_SECONDS = 0.05
PROGRESS_TIMEOUT = 30.0  # longest wait for the batch to move (bounded polls)
FINISH_TIMEOUT = 90.0  # a task with no final outcome by then counts as lost
POISON_KEY = "chaos-poison-"

Poison = tuple[str, str, bytes | None]  # (key marking it, kind, value)


def log(message: str, started: float) -> None:
    """A progress line on stderr (stdout is kept for the report)."""
    print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; returns whether it was."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def done(batch: yadtq.TaskBatch) -> int:
    """How many tasks of ``batch`` this client has seen finish."""
    return int(batch.snapshot()["done"])


def wait_for_progress(batch: yadtq.TaskBatch, above: int, since: float,
                      timeout: float = PROGRESS_TIMEOUT) -> float | None:
    """Seconds from ``since`` (unix) until the done-count passes ``above``; None if it did not."""
    if wait_for(lambda: done(batch) > above, timeout):
        return time.time() - since
    return None


def held_by(client: yadtq.Client, worker: str) -> list[str]:
    """Ids of the tasks ``worker`` holds now: the leased tasks whose record names it."""
    backend = client.backend
    leased = [i.decode() for i in backend.redis.zrange(backend.keys.leases, 0, -1)]
    records = backend.task_records(leased)
    return [i for i, r in zip(leased, records, strict=True)
            if r and r.get("status") == "processing" and r.get("worker") == worker]


def kill_worker(cluster: LocalCluster, client: yadtq.Client, batch: yadtq.TaskBatch) -> Fault:
    """SIGKILL the first worker, note what it held, start a replacement."""
    victim = cluster.worker_processes[0]
    fault = Fault("kill", "SIGKILL a worker", done(batch), time.time(), victim.name)
    cluster.kill_worker(0, signal.SIGKILL)  # returns once it is dead
    fault.held = held_by(client, victim.name)
    baseline = done(batch)
    cluster.start_worker()
    fault.progress_resumed = wait_for_progress(batch, baseline, fault.injected_at)
    return fault


def stop_worker(cluster: LocalCluster, client: yadtq.Client, batch: yadtq.TaskBatch,
                stopped: list[int]) -> Fault:
    """SIGSTOP the second worker for STOP_SECONDS (past its lease), then SIGCONT it."""
    victim = cluster.worker_processes[1]
    fault = Fault("stop", f"SIGSTOP a worker {STOP_SECONDS:g} s", done(batch), time.time(),
                  victim.name)
    cluster.kill_worker(1, signal.SIGSTOP)
    stopped.append(1)
    fault.held = held_by(client, victim.name)
    baseline = done(batch)
    fault.progress_resumed = wait_for_progress(batch, baseline, fault.injected_at,
                                               timeout=STOP_SECONDS)
    time.sleep(max(0.0, fault.injected_at + STOP_SECONDS - time.time()))  # the fault's duration
    cluster.kill_worker(1, signal.SIGCONT)
    stopped.remove(1)
    fault.duration = time.time() - fault.injected_at
    if fault.progress_resumed is None:
        fault.progress_resumed = wait_for_progress(batch, baseline, fault.injected_at)
    return fault


def restart_redis(stack: LocalStack, batch: yadtq.TaskBatch) -> Fault:
    """Restart Redis (its append-only file keeps the data) and wait for the batch to move."""
    fault = Fault("redis", "restart Redis", done(batch), time.time())
    stack.restart_redis()
    fault.duration = time.time() - fault.injected_at
    fault.progress_resumed = wait_for_progress(batch, done(batch), fault.injected_at)
    return fault


def poison_messages(count: int, rng: random.Random) -> list[Poison]:
    """``count`` messages no worker may run, each marked by its Kafka key."""
    def v1(**fields: Any) -> bytes:
        return json.dumps(fields).encode()

    makers: list[tuple[str, Callable[[str], bytes | None]]] = [
        ("garbage bytes", lambda m: b"\xff\xfe\x00" + m.encode() + rng.randbytes(32)),
        ("not JSON", lambda m: f'{{"v": 1, "id": "{m}", "task": '.encode()),
        ("JSON array", lambda m: json.dumps([1, m, "add"]).encode()),
        ("tombstone", lambda m: None),
        ("id of wrong type", lambda m: v1(v=1, id=12345, task="add", note=m)),
        ("args of wrong type", lambda m: v1(v=1, id=m, task="add", args="1, 2")),
        ("kwargs of wrong type", lambda m: v1(v=1, id=m, task="add", kwargs=[1, 2])),
        ("attempt of wrong type", lambda m: v1(v=1, id=m, task="add", attempt="two")),
        ("missing task", lambda m: v1(v=1, id=m, args=[1, 2])),
        ("missing id", lambda m: v1(v=1, task="add", args=[1, 2], note=m)),
        ("unknown version", lambda m: v1(v=99, id=m, task="add", args=[1, 2])),
        ("version of wrong type", lambda m: v1(v="1", id=m, task="add", args=[1, 2])),
    ]
    messages = []
    for n in range(count):
        kind, make = makers[n % len(makers)]
        marker = f"{POISON_KEY}{n}"
        messages.append((marker, kind, make(marker)))
    return messages


def feed_poison(client: yadtq.Client, batch: yadtq.TaskBatch,
                messages: Sequence[Poison]) -> Fault:
    """Produce the poison messages to the tasks topic with a plain Kafka producer."""
    fault = Fault("poison", f"{len(messages)} poison messages", done(batch), time.time())
    producer = KafkaProducer(bootstrap_servers=client.config.bootstrap)
    try:
        for key, _, value in messages:
            producer.send(client.config.tasks_topic, value=value, key=key.encode())
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)
    fault.duration = time.time() - fault.injected_at
    fault.progress_resumed = wait_for_progress(batch, done(batch), fault.injected_at)
    return fault


def read_dead_letters(client: yadtq.Client, wanted: set[str],
                      timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    """Dead letters keyed by a ``wanted`` key, read from the beginning without a group."""
    topic = client.config.dead_letter_topic
    consumer = KafkaConsumer(bootstrap_servers=client.config.bootstrap, group_id=None,
                             enable_auto_commit=False)
    letters: dict[str, dict[str, Any]] = {}
    try:
        if not wait_for(lambda: bool(consumer.partitions_for_topic(topic)), 10):
            return letters
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout
        while len(letters) < len(wanted) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    key = (record.key or b"").decode(errors="replace")
                    if key in wanted:
                        letters[key] = json.loads(record.value)
    finally:
        consumer.close()
    return letters


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="sleep tasks in the batch (2000)")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated faults to inject, in order ({','.join(FAULTS)})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"random seed ({SEED})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the data dir with the server and worker logs")
    args = parser.parse_args(argv)
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = set(args.faults) - set(FAULTS)
    if unknown or len(set(args.faults)) != len(args.faults):
        parser.error(f"--faults takes each of {', '.join(FAULTS)} at most once")
    if args.tasks < 100:
        parser.error("--tasks must be at least 100 so that the faults land mid-batch")
    return args


def wait_for_workers(cluster: LocalCluster, client: yadtq.Client, timeout: float = 60.0) -> None:
    """Wait until the workers share every partition; fail at once if one of them exits."""
    deadline = time.monotonic() + timeout
    while True:
        for worker in cluster.worker_processes:
            if not worker.alive:
                raise RuntimeError(f"worker {worker.name} exited during startup; its log "
                                   f"ends with:\n{worker.log_tail()}")
        try:
            client.wait_for_workers(WORKERS, timeout=min(1.0, deadline - time.monotonic()))
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def run(args: argparse.Namespace, data_dir: Path, stopped: list[int],
        owned: dict[str, Any], started: float) -> dict[str, Any]:
    """Start everything, run the batch through the faults, audit, return the report."""
    stack = owned["stack"] = LocalStack(data_dir).start()
    cluster = owned["cluster"] = LocalCluster(
        workers=WORKERS, stack=stack, concurrency=CONCURRENCY,
        heartbeat_interval=HEARTBEAT_SECONDS, lease_seconds=LEASE_SECONDS,
    ).start()
    client = owned["client"] = yadtq.Client(cluster.config)
    wait_for_workers(cluster, client)
    log(f"stack up, {WORKERS} workers share the topic; data dir {data_dir}", started)

    rng = random.Random(args.seed)
    main = client.map(sleep, [round(rng.uniform(0.01, 0.05), 4) for _ in range(args.tasks)])
    failing = client.map(fail, [f"expected failure {i}" for i in range(EXPECTED_FAILURES)])
    log(f"submitted {args.tasks} sleep tasks and {EXPECTED_FAILURES} fail tasks", started)

    poison = poison_messages(POISON_COUNT, rng) if "poison" in args.faults else []
    inject: dict[str, Callable[[], Fault]] = {
        "kill": lambda: kill_worker(cluster, client, main),
        "stop": lambda: stop_worker(cluster, client, main, stopped),
        "redis": lambda: restart_redis(stack, main),
        "poison": lambda: feed_poison(client, main, poison),
    }
    faults = []
    for kind in args.faults:
        target = int(args.tasks * FAULT_AT[kind])
        if not wait_for(lambda t=target: done(main) >= t, PROGRESS_TIMEOUT):
            log(f"batch stalled below {target} done; injecting {kind} anyway", started)
        fault = inject[kind]()
        if fault.progress_resumed is None and main.done():
            fault.note = "batch finished before it moved again"
        faults.append(fault)
        log(f"{fault.name} at {fault.done_at_injection}/{len(main)} done"
            + (f" ({fault.victim} held {len(fault.held)})" if fault.victim else "")
            + f"; moving again after {seconds(fault.progress_resumed)}", started)

    finished = wait_for(lambda: main.done() and failing.done(), FINISH_TIMEOUT)
    log("batch finished" if finished else f"batch unfinished after {FINISH_TIMEOUT:g} s",
        started)
    ids = [f.id for f in main] + [f.id for f in failing]
    snapshots = [dict(zip(ids, client.backend.task_records(ids), strict=True))]
    # Let every live worker drain, so the resumed one has reported its late results.
    wait_for(lambda: int(client.workers().query("status == 'alive'")["in_flight"].sum()) == 0,
             15)

    letters = read_dead_letters(client, {key for key, _, _ in poison}) if poison else {}
    # A poison message that names a valid id ends that id's record refused (failed,
    # MessageRefused), so no record waits for it; any other record means it ran.
    poison_records = [r for r in client.backend.task_records([key for key, _, _ in poison])
                      if r is not None]
    refused = sum(r.get("error_type") == "MessageRefused" for r in poison_records)
    run_as_tasks = len(poison_records) - refused
    counts = audit(client, main, failing, faults, snapshots, PROGRESS_TIMEOUT)
    for fault in faults:
        if fault.kind == "poison" and letters:
            last = max(float(letter.get("at") or 0) for letter in letters.values())
            fault.note = (f"all dead-lettered {last - fault.injected_at:.2f} s after"
                          if len(letters) == len(poison)
                          else f"{len(poison) - len(letters)} never dead-lettered")
    kinds = {key: kind for key, kind, _ in poison}
    problems = []
    if counts["lost"]:
        problems.append(f"{counts['lost']} tasks lost")
    if counts["overwritten"]:
        problems.append(f"{counts['overwritten']} accepted results overwritten")
    if len(letters) != len(poison):
        problems.append(f"{len(poison) - len(letters)} poison messages not dead-lettered")
    if run_as_tasks:
        problems.append(f"{run_as_tasks} poison messages run as tasks")
    return {
        "counts": counts,
        "expected_failures": EXPECTED_FAILURES,
        "poison": {"sent": len(poison), "dead_lettered": len(letters),
                   "run_as_tasks": run_as_tasks, "records_ended_refused": refused,
                   "reasons": {kinds[k]: letters[k].get("reason") for k in sorted(letters)}},
        "faults": [{**asdict(f), "recovery": f.recovery} for f in faults],
        "workers_alive": sum(w.alive for w in cluster.worker_processes),
        "settings": {"tasks": args.tasks, "seed": args.seed, "faults": args.faults,
                     "workers": WORKERS, "concurrency": CONCURRENCY,
                     "heartbeat_interval": HEARTBEAT_SECONDS, "lease_seconds": LEASE_SECONDS,
                     "stop_seconds": STOP_SECONDS},
        "elapsed": time.monotonic() - started,
        "ok": not problems,
        "problems": problems,
    }


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


def cleanup(owned: dict[str, Any], stopped: list[int]) -> None:
    """Close the client, continue stopped workers, stop the workers and then the servers."""
    cluster = owned.get("cluster")
    if owned.get("client") is not None:
        with contextlib.suppress(Exception):
            owned["client"].close()
    if cluster is not None:
        for index in stopped:  # a stopped worker cannot act on SIGTERM
            with contextlib.suppress(Exception):
                cluster.kill_worker(index, signal.SIGCONT)
        cluster.stop()
    if owned.get("stack") is not None:
        owned["stack"].stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    data_dir = Path(tempfile.mkdtemp(prefix="yadtq-chaos-"))
    stopped: list[int] = []  # indexes of workers SIGSTOPped right now
    owned: dict[str, Any] = {}  # what run() started, for cleanup
    report: dict[str, Any] | None = None
    try:
        report = run(args, data_dir, stopped, owned, started)
    except KeyboardInterrupt:
        print("interrupted; stopping workers and servers", file=sys.stderr)
        return 130
    finally:
        cleanup(owned, stopped)
        if args.keep_logs or report is None or not report["ok"]:
            print(f"logs kept in {data_dir}", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
