"""Demo: three local workers share about 300 mixed tasks; prints who ran what.

Run with ``make demo``. It needs only what ``make venv`` installs: the broker,
Redis and the workers run as child processes and stop when the demo ends.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout as-is

import pandas  # noqa: E402

import yadtq  # noqa: E402
from worker_node.tasks import add, count_primes, divide, multiply, sleep  # noqa: E402
from yadtq.local import LocalCluster  # noqa: E402

WORKERS = 3
TIMEOUT = 120  # seconds any step may take before the demo fails


def main() -> int:
    rng = random.Random(7)
    pairs = [(rng.randint(0, 999), rng.randint(0, 999)) for _ in range(100)]
    with LocalCluster(workers=WORKERS) as cluster:
        config = cluster.config
        print(f"local cluster: Kafka {config.bootstrap}, Redis {config.redis_url}, "
              f"{WORKERS} workers x {cluster.concurrency} slots")
        # connect(cluster) carries the cluster's queue and secret, which its workers check.
        with yadtq.connect(cluster) as q:
            # Otherwise the first worker to join the group takes every partition.
            q.wait_for_workers(WORKERS, timeout=60)
            started = time.monotonic()
            batches = {
                "add": q.map(add, pairs),
                "multiply": q.map(multiply, pairs),
                "sleep": q.map(sleep, [0.05] * 50),
                "count_primes": q.map(count_primes, [100_000 + 1_000 * i for i in range(40)]),
                "divide": q.map(divide, [(n, n % 5) for n in range(10)]),  # 2 divide by zero
            }
            for name, batch in batches.items():
                _, unfinished = batch.wait(timeout=TIMEOUT)
                if unfinished:
                    raise SystemExit(f"demo failed: {len(unfinished)} of {len(batch)} {name} "
                                     f"tasks unfinished after {TIMEOUT} s: "
                                     f"{batch.status_counts()}")
            elapsed = time.monotonic() - started
            frame = pandas.concat([b.to_dataframe() for b in batches.values()])
            sums = batches["add"].results(timeout=TIMEOUT)

    print(f"\n{len(frame)} tasks finished in {elapsed:.2f} s\n")
    print("tasks per worker and status:")
    print(frame.groupby(["worker", "status"]).size().unstack(fill_value=0).to_string())
    print("\ntasks per worker and task:")
    print(frame.groupby(["worker", "task"]).size().unstack(fill_value=0).to_string())
    failed = frame[frame["status"] == "failed"]
    print(f"\n{len(failed)} failed as expected, e.g. {failed['error'].iloc[0]}")
    return _check(frame, sums, [a + b for a, b in pairs])


def _check(frame: pandas.DataFrame, sums: list[int], expected: list[int]) -> int:
    """What the demo shows, asserted: right sums, only the 2 divisions by zero failed,
    and every worker ran some tasks."""
    problems = []
    if sums != expected:
        problems.append("the sums are wrong")
    failed = frame[frame["status"] != "success"]
    if len(failed) != 2 or set(failed["task"]) != {"divide"}:
        problems.append(f"expected 2 failed divisions, got:\n{failed[['task', 'status']]}")
    ran = frame["worker"].value_counts()
    if len(ran) != WORKERS:
        problems.append(f"expected all {WORKERS} workers to run tasks, got {ran.to_dict()}")
    for problem in problems:
        print(f"demo failed: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
