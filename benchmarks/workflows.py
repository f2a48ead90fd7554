"""Workflow benchmarks (issue 21, "Measure") on the embedded stack, default settings.

    python benchmarks/workflows.py                      # every case
    python benchmarks/workflows.py outlives chain       # some of them
    python benchmarks/workflows.py --small              # every case at a small scale
    python benchmarks/workflows.py --broker apache-kafka
    python benchmarks/bench.py workflows [CASE ...]     # the same, through bench.py

Each case starts a fresh queue with 3 worker processes (LocalCluster defaults: 4
process slots each, heartbeat 2 s, lease 10 s) on one LocalStack, and prints its
figures and PASS or FAIL:

- ``outlives``: a subprocess submits, in ``q.workflow("outlives")``, a map of N
  ``sleep(0.01)``, N ``add(<future i>, i)`` and ``total`` over that second batch, and
  is SIGKILLed once ~30 % of the tasks succeeded; this process finds the workflow with
  ``q.workflows()``, re-attaches it (``q.get_workflow``), waits, checks every task.
- ``fanin-faults``: ``total`` over a batch of 2N ``sleep(0.01)``; one of the 3 workers
  is SIGKILLed mid-batch; the reducer must start after the batch's last finish and
  have exactly one accepted outcome (history: one success, no failed).
- ``chain``: 200 ``add(previous, 1)``, submitted behind a gate task so that every
  edge is a dependency being released, not a submission; per-edge latency (child
  started_at - parent finished_at) against Dask's futures-as-arguments chain
  (``peer_chain.py`` in the peers' virtualenv, skipped if that is missing).
- ``fanout``: root -> map of 10N ``add(root, i)`` -> ``total``, against a plain map
  of ``add(0, i)`` + ``total`` of its results (``--rounds`` alternations), with where
  the workflow's time went (``wf_*``, from the records). The root is quick, so most
  children are submitted after it finished; a "gated" run (a root of ``sleep`` that
  outlasts the submission) also times releasing 10N blocked children at once.
- ``failure-rules``: a failing ``needs_file`` root with a three-level subtree, an
  ``allow_failure`` child and an independent branch; then the file is written and
  ``wf.retry()`` must bring all to success with the untouched tasks on attempt 1.

Figures are wall-clock on this machine; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout as-is

import workloads  # noqa: E402 - beside this script

import yadtq  # noqa: E402
from worker_node.tasks import add, describe, needs_file, sleep, total  # noqa: E402
from yadtq.local import BROKERS, TANSU, LocalCluster, LocalStack  # noqa: E402
from yadtq.local.cluster import client_environment  # noqa: E402

HERE = Path(__file__).resolve().parent
WORKERS = 3
KILL_AT = 0.3  # outlives: the share of tasks succeeded when the submitter is killed
SUBMIT_CHILD = "_outlives-submitter"  # argv[1] of the subprocess that submits and dies


def _cluster(stack: LocalStack) -> LocalCluster:
    """3 workers on a fresh queue, every setting at its default."""
    return LocalCluster(workers=WORKERS, stack=stack, queue=f"wf-{uuid.uuid4().hex[:8]}",
                        log_level="WARNING")


def _ready(cluster: LocalCluster) -> yadtq.Client:
    q = yadtq.connect(cluster)
    q.wait_for_workers(WORKERS, timeout=60)
    q.map(add, [(i, i) for i in range(100)]).results(timeout=60)  # warm-up
    return q


def _records(q: yadtq.Client, ids: list[str]) -> list[dict[str, Any]]:
    return [r or {} for r in q.backend.task_records(ids)]


def _accepted(q: yadtq.Client, task_id: str) -> Counter[str]:
    return Counter(e.get("event") for e in q.history(task_id))


# --- outlives ----------------------------------------------------------------------


def submit_and_linger(n: int) -> None:
    """The subprocess: submit the workflow, say so, then wait to be killed."""
    q = yadtq.connect()  # the YADTQ_* variables the parent passed
    started = time.perf_counter()
    with q.workflow("outlives") as wf:
        first = q.map(sleep, [0.01] * n)
        second = q.map(add, [(future, i) for i, future in enumerate(first)])
        reducer = q.submit(total, second)
    print(json.dumps({"id": wf.id, "reducer": reducer.id,
                      "submit_s": round(time.perf_counter() - started, 3)}), flush=True)
    wf.wait(timeout=600)  # killed long before


def outlives(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    n = args.scale
    with _cluster(stack) as cluster, _ready(cluster) as q:
        env = {**os.environ, **client_environment(cluster.config),
               "PYTHONPATH": str(HERE.parent)}
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, __file__, SUBMIT_CHILD, str(n)],
                                 stdout=subprocess.PIPE, env=env, text=True)
        told = json.loads(child.stdout.readline() or "{}")  # type: ignore[union-attr]
        expected_total = 2 * n + 1
        watch = q.get_workflow(told["id"]) if "id" in told else None
        counts: dict[str, int] = {}
        while watch is not None:  # the fault's timing: poll until ~30 % succeeded
            counts = watch.status_counts()
            if counts["success"] >= KILL_AT * expected_total or child.poll() is not None:
                break
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        killed = time.perf_counter()
        # Found as a user would: the newest workflow of that name, re-attached by its id.
        rows = [r for r in q.workflow_rows() if r["name"] == "outlives"]
        frame = q.workflows()
        found = frame[frame["name"] == "outlives"]["id"].tolist()
        workflow_id = rows[0]["id"] if rows else None
        again = q.get_workflow(workflow_id) if workflow_id else None  # a fresh handle
        final = again.wait(timeout=600) if again else {}
        done = time.perf_counter()
        frame = again.to_dataframe() if again else None
    ok_rows = frame is not None and len(frame) == expected_total
    first = frame.iloc[:n] if ok_rows else None
    reducer = frame.iloc[-1] if ok_rows else None
    expected_value = (float(first["result"].sum()) + n * (n - 1) / 2) if ok_rows else None
    value_right = bool(ok_rows and reducer["task"] == "total" and abs(
        reducer["result"] - expected_value) < 1e-6 * max(1.0, expected_value))
    passed = bool(ok_rows and told.get("id") == workflow_id and found[:1] == [workflow_id]
                  and final.get("success") == expected_total and value_right
                  and reducer["id"] == told.get("reducer"))
    return {"tasks": expected_total, "submit_s": told.get("submit_s"),
            "found_by_workflows": found[:1] == [workflow_id] and workflow_id == told.get("id"),
            "succeeded_at_kill": counts.get("success"),
            "done_at_kill_pct": round(100 * counts.get("success", 0) / expected_total, 1),
            "submitter_alive_at_kill": child.returncode == -signal.SIGKILL,
            "succeeded": final.get("success"), "not_success": expected_total
            - final.get("success", 0), "reducer_value_right": value_right,
            "rerun": int((frame["attempt"] > 1).sum()) if ok_rows else None,
            "seconds_total": round(done - started, 2),
            "seconds_after_kill": round(done - killed, 2), "pass": passed}


# --- fan-in under faults -----------------------------------------------------------


def _fanin(q: yadtq.Client, n: int, kill: Callable[[], None] | None) -> dict[str, Any]:
    """``total`` over ``n`` sleep(0.01); ``kill`` once 40 % of them finished."""
    started, killed_at = time.perf_counter(), None
    batch = q.map(sleep, [0.01] * n)
    reducer = q.submit(total, batch)
    unfinished = None
    if kill is not None:
        while len(batch.finished()) < 0.4 * n:  # the fault's timing, not a synchronisation
            time.sleep(0.02)
        unfinished = n - len(batch.finished())
        kill()
        killed_at = time.time()
    value = reducer.result(timeout=600)
    seconds = time.perf_counter() - started
    records = _records(q, [f.id for f in batch])
    mine = _records(q, [reducer.id])[0]
    events = _accepted(q, reducer.id)
    statuses = Counter(r.get("status") for r in records)
    last = max(records, key=lambda r: r.get("finished_at") or 0.0)
    gap_ms = (mine["started_at"] - last["finished_at"]) * 1000
    expected = sum(r["result"] for r in records if r.get("status") == "success")
    reruns = [r for r in records if (r.get("attempt") or 1) > 1]
    once = events["success"] == 1 and events["failed"] == 0
    return {"unfinished_at_kill": unfinished, "batch_succeeded": statuses["success"],
            "batch_rerun": len(reruns),
            "reruns_done_after_kill_s": round(max(r["finished_at"] for r in reruns)
                                              - killed_at, 2) if reruns and killed_at else None,
            "last_parent_was_rerun": (last.get("attempt") or 1) > 1,
            "reducer_start_after_last_finish_ms": round(gap_ms, 1),
            "reducer_claimed": events["claimed"], "reducer_success_events": events["success"],
            "reducer_failed_events": events["failed"], "reducer_attempt": mine.get("attempt"),
            "reducer_value_right": abs(value - expected) < 1e-6, "seconds": round(seconds, 2),
            "pass": statuses["success"] == n and gap_ms >= 0 and once
            and abs(value - expected) < 1e-6 and mine.get("status") == "success"}


def fanin_faults(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    n = 2 * args.scale
    with _cluster(stack) as cluster, _ready(cluster) as q:
        calm = _fanin(q, n, None)  # the same without a fault, for the reducer's start gap
        faulted = _fanin(q, n, lambda: cluster.kill_worker(0, signal.SIGKILL))
    return {"batch": n, **faulted, "no_fault_seconds": calm["seconds"],
            "no_fault_reducer_start_after_last_finish_ms":
            calm["reducer_start_after_last_finish_ms"],
            "pass": faulted["pass"] and calm["pass"]}


# --- chain -------------------------------------------------------------------------


def chain(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    length = args.chain
    with _cluster(stack) as cluster, _ready(cluster) as q:
        warm = q.submit(add, 0, 1)
        for _ in range(19):
            warm = q.submit(add, warm, 1)
        assert warm.result(timeout=60) == 20, "wrong warm-up result"
        started = time.perf_counter()
        gate = q.submit(sleep, 1.0)  # holds the chain until all of it is submitted
        futures = [q.submit_with(add, (0, 1), depends_on=[gate])]
        for _ in range(length - 1):
            futures.append(q.submit(add, futures[-1], 1))
        submitted = time.perf_counter()
        value = futures[-1].result(timeout=300)
        elapsed = time.perf_counter() - started
        records = _records(q, [gate.id] + [f.id for f in futures])
    gate_rec, links = records[0], records[1:]
    edges = [(child["started_at"] - parent["finished_at"]) * 1000
             for parent, child in zip(links, links[1:], strict=False)]
    span = links[-1]["finished_at"] - links[0]["started_at"]
    figures: dict[str, Any] = {
        "length": length, "submit_s": round(submitted - started, 3),
        "gate_held_all": submitted - started < gate_rec["finished_at"] - gate_rec["started_at"],
        "wall_s": round(elapsed, 3), "chain_ms": round(span * 1000, 1),
        "per_task_ms": round(span * 1000 / length, 3),
        **{f"edge_{k}": v for k, v in workloads.percentiles(edges).items()},
        "edge_max_ms": round(max(edges), 2), "pass": value == length}
    figures["dask"] = _dask_chain(length)
    if isinstance(figures["dask"], dict) and "edge_p50_ms" in figures["dask"]:
        figures["faster_than_dask_p50"] = figures["edge_p50_ms"] < figures["dask"]["edge_p50_ms"]
    return figures


def _dask_chain(length: int) -> dict[str, Any] | str:
    python = HERE / ".peers-venv" / "bin" / "python"
    if not python.exists():
        return "skipped: no benchmarks/.peers-venv (python benchmarks/peers.py --setup)"
    run = subprocess.run([str(python), str(HERE / "peer_chain.py"), str(length)],
                         capture_output=True, text=True, timeout=300, cwd=HERE)
    if run.returncode:
        return f"failed: {run.stderr.strip().splitlines()[-1:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


# --- fan-out -> fan-in -------------------------------------------------------------


def fanout(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    n = 10 * args.scale
    expected = n * (n - 1) / 2
    times: dict[str, list[float]] = {"workflow": [], "plain": []}
    phases: dict[str, list[float]] = {}
    gated: list[tuple[float, float]] = []
    with _cluster(stack) as cluster, _ready(cluster) as q:
        for _ in range(args.rounds):
            started = time.perf_counter()
            batch = q.map(add, [(0, i) for i in range(n)])
            value = q.submit(total, batch.results(timeout=600)).result(timeout=600)
            times["plain"].append(time.perf_counter() - started)
            assert value == expected, f"plain: {value} != {expected}"
            started, wall = time.perf_counter(), time.time()
            root = q.submit(add, 0, 0)
            children = q.map(add, [(root, i) for i in range(n)])
            submitted = time.time()
            reducer = q.submit(total, children)
            value = reducer.result(timeout=600)
            times["workflow"].append(time.perf_counter() - started)
            assert value == expected, f"workflow: {value} != {expected}"
            for name, seconds in _fanout_phases(q, root, children, reducer, wall,
                                                submitted).items():
                phases.setdefault(name, []).append(seconds)
            gated.append(_gated_fanout(q, n, expected))
    ratio = min(times["workflow"]) / min(times["plain"])
    return {"width": n, "rounds": args.rounds,
            "plain_s": [round(t, 2) for t in times["plain"]],
            "workflow_s": [round(t, 2) for t in times["workflow"]],
            "ratio_best": round(ratio, 3),
            "ratio_per_round": [round(w / p, 3) for w, p in
                                zip(times["workflow"], times["plain"], strict=True)],
            **{f"wf_{k}_s": [round(v, 3) for v in vs] for k, vs in phases.items()},
            "gated_root_done_to_reducer_done_s": [round(t, 2) for t, _ in gated],
            "gated_root_done_to_last_child_start_s": [round(t, 2) for _, t in gated],
            "gated_children_started_per_s": [round(n / t) for _, t in gated],
            "gated_vs_plain_best": round(min(t for t, _ in gated) / min(times["plain"]), 3),
            "pass": ratio <= 1.2}


def _gated_fanout(q: yadtq.Client, n: int, expected: float) -> tuple[float, float]:
    """The children all blocked first: a root of ``sleep`` long enough for the whole map to
    be submitted. Seconds from the root's finish to the reducer's, and to the last child's
    start (how fast the children were released), from the records."""
    root = q.submit(sleep, max(1.0, n / 3000))
    children = q.map(add, [(root, i) for i in range(n)])
    reducer = q.submit(total, children)
    value, want = reducer.result(timeout=600), expected + n * root.result(timeout=10)
    assert abs(value - want) < 1e-6 * want, f"gated: {value} != {want}"
    root_rec, reducer_rec = _records(q, [root.id, reducer.id])
    kids = _records(q, [f.id for f in children])
    assert max(r["queued_at"] for r in kids) < root_rec["finished_at"], \
        "gated: the root finished before the whole map was submitted"
    return (reducer_rec["finished_at"] - root_rec["finished_at"],
            max(r["started_at"] for r in kids) - root_rec["finished_at"])


def _fanout_phases(q: yadtq.Client, root: Any, children: Any, reducer: Any, wall: float,
                   submitted: float) -> dict[str, float]:
    """Where the workflow's time went, from the records (seconds from the first submit)."""
    root_rec, reducer_rec = _records(q, [root.id, reducer.id])
    kids = _records(q, [f.id for f in children])
    queued = sorted(r["queued_at"] for r in kids)
    return {"submit_children": submitted - wall,
            "root_finished": root_rec["finished_at"] - wall,
            "first_child_queued": queued[0] - wall, "last_child_queued": queued[-1] - wall,
            "first_child_started": min(r["started_at"] for r in kids) - wall,
            "last_child_finished": max(r["finished_at"] for r in kids) - wall,
            "reducer_started": reducer_rec["started_at"] - wall,
            "reducer_finished": reducer_rec["finished_at"] - wall}


# --- failure rules -----------------------------------------------------------------


def failure_rules(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="yadtq-wf-") as tmp, _cluster(stack) as cluster, \
            _ready(cluster) as q:
        path = str(Path(tmp) / "input.txt")
        with q.workflow("failure-rules") as wf:
            root = q.submit(needs_file, path)
            level1 = [q.submit(describe, root) for _ in range(2)]
            level2 = [q.submit(describe, parent) for parent in level1 for _ in range(2)]
            level3 = [q.submit_with(describe, (level2[0],), depends_on=level2[1:]),
                      q.submit(describe, level2[3])]
            tolerant = q.submit(describe, yadtq.allow_failure(root))
            other = q.submit(add, 1, 2)
            others = q.map(add, [(other, i) for i in range(3)])
            other_total = q.submit(total, others)
        subtree = {f.id for f in level1 + level2 + level3}
        independent = {other.id, other_total.id, *(f.id for f in others)}
        started = time.perf_counter()
        wf.wait(timeout=120)
        first_s, waited = time.perf_counter() - started, time.time()
        before = wf.to_dataframe().set_index("id")
        last_finish = max(r.get("finished_at") or 0.0 for r in _records(q, wf.task_ids))
        skipped = set(before.index[before["status"] == "skipped"])
        tolerant_result = str(before.loc[tolerant.id, "result"])
        Path(path).write_text("fixed")
        started = time.perf_counter()
        rerun = wf.retry()
        after_counts = wf.wait(timeout=120)
        retry_s = time.perf_counter() - started
        after = wf.to_dataframe().set_index("id")
        final_value = other_total.result(timeout=10)
    untouched = independent | {tolerant.id}
    checks = {
        "root_failed": before.loc[root.id, "status"] == "failed",
        "subtree_all_skipped_and_only_it": skipped == subtree,
        "independent_succeeded": bool((before.loc[list(independent), "status"]
                                       == "success").all()),
        "allow_failure_got_task_error": before.loc[tolerant.id, "status"] == "success"
        and tolerant_result.startswith("error FileNotFoundError"),
        "after_retry_all_success": after_counts["success"] == len(after),
        "rerun_count_right": rerun == 1 + len(subtree),
        "untouched_on_attempt_1": bool((after.loc[list(untouched), "attempt"] == 1).all()),
        "retried_on_attempt_2": bool((after.loc[[root.id, *subtree], "attempt"] == 2).all()),
        "values_right": final_value == 3 * 3 + 3
        and after.loc[level1[0].id, "result"] == "value 'fixed'",
    }
    return {"tasks": len(after), "subtree": len(subtree), "skipped": len(skipped),
            "allow_failure_result": tolerant_result, "first_run_s": round(first_s, 2),
            "wait_returned_after_last_finish_ms": round((waited - last_finish) * 1000, 1),
            "retried": rerun, "retry_to_all_success_s": round(retry_s, 2),
            "attempts_after": dict(Counter(after["attempt"].tolist())),
            **checks, "pass": all(checks.values())}


CASES: dict[str, Callable[[LocalStack, argparse.Namespace], dict[str, Any]]] = {
    "outlives": outlives, "fanin-faults": fanin_faults, "chain": chain, "fanout": fanout,
    "failure-rules": failure_rules,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options (shared with ``bench.py workflows``)."""
    parser.add_argument("cases", nargs="*", metavar="CASE",
                        help=f"any of {', '.join(CASES)} (default: all)")
    parser.add_argument("--small", action="store_true",
                        help="a tenth of the scale (a check that the cases run)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="fanout: alternations of plain and workflow (default: 2)")
    parser.add_argument("--broker", choices=BROKERS, default=TANSU,
                        help="the local stack's broker (default: tansu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Run the chosen cases; 0 if every one passed."""
    unknown = set(args.cases) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(sorted(unknown))}")
    args.scale = 100 if args.small else 1000  # outlives N, fan-in 2N, fan-out 10N
    args.chain = 20 if args.small else 200
    figures: dict[str, Any] = {}
    if not args.json:
        print(f"broker: {args.broker}, default settings, scale {args.scale}", flush=True)
    with LocalStack(broker=args.broker) as stack:
        for name in args.cases or CASES:
            figures[name] = CASES[name](stack, args)
            if not args.json:
                line = "  ".join(f"{k}={v}" for k, v in figures[name].items())
                print(f"{name:<14} {line}", flush=True)
    if args.json:
        print(json.dumps({"broker": args.broker, "scale": args.scale, **figures},
                         default=str), flush=True)
    return 0 if all(f.get("pass") for f in figures.values()) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == SUBMIT_CHILD:
        submit_and_linger(int(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
