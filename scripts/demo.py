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


def main() -> int:
    rng = random.Random(7)
    pairs = [(rng.randint(0, 999), rng.randint(0, 999)) for _ in range(100)]
    with LocalCluster(workers=WORKERS) as cluster:
        config = cluster.config
        print(f"local cluster: Kafka {config.bootstrap}, Redis {config.redis_url}, "
              f"{WORKERS} workers x {cluster.concurrency} slots")
        with yadtq.connect(bootstrap=config.bootstrap, redis_url=config.redis_url,
                           queue=config.queue) as q:
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
            for batch in batches.values():
                batch.wait(timeout=120)
            elapsed = time.monotonic() - started
            frame = pandas.concat([b.to_dataframe() for b in batches.values()])

    assert batches["add"].results() == [a + b for a, b in pairs]
    print(f"\n{len(frame)} tasks finished in {elapsed:.2f} s\n")
    print("tasks per worker and status:")
    print(frame.groupby(["worker", "status"]).size().unstack(fill_value=0).to_string())
    print("\ntasks per worker and task:")
    print(frame.groupby(["worker", "task"]).size().unstack(fill_value=0).to_string())
    failed = frame[frame["status"] == "failed"]
    print(f"\n{len(failed)} failed as expected, e.g. {failed['error'].iloc[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
