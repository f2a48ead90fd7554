"""The ``chain`` case of ``workflows.py`` on Dask distributed: futures as arguments.

    benchmarks/.peers-venv/bin/python benchmarks/peer_chain.py 200

Runs in the peers' virtualenv (``python benchmarks/peers.py --setup`` makes it), as
peers.py's Dask: ``LocalCluster(n_workers=3, processes=True, threads_per_worker=4)``.
A chain of ``add(previous, 1)``: each task takes the previous one's future. Per-edge
latency is the child's compute start minus its parent's compute stop, from Dask's task
stream (worker clocks, one machine). Prints one JSON object.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import peer_tasks
import workloads

HERE = Path(__file__).resolve().parent


def chain(length: int, concurrency: int = 4) -> dict[str, Any]:
    """Run a ``length``-long chain after a 20-long warm-up; the figures of the timed one."""
    from dask.distributed import Client, LocalCluster, get_task_stream

    os.environ["PYTHONPATH"] = str(HERE)  # the worker processes import peer_tasks
    with tempfile.TemporaryDirectory(prefix="yadtq-dask-chain-") as tmp, LocalCluster(
            n_workers=3, threads_per_worker=concurrency, processes=True,
            dashboard_address=None, local_directory=tmp, silence_logs=logging.CRITICAL,
    ) as cluster, Client(cluster) as client:
        client.wait_for_workers(3, timeout=60)
        warm = client.submit(peer_tasks.add, 0, 1, pure=False)
        for _ in range(19):
            warm = client.submit(peer_tasks.add, warm, 1, pure=False)
        assert warm.result(timeout=60) == 20, "wrong warm-up result"
        with get_task_stream(client) as stream:
            started = time.perf_counter()
            futures = [client.submit(peer_tasks.add, 0, 1, pure=False)]
            for _ in range(length - 1):
                futures.append(client.submit(peer_tasks.add, futures[-1], 1, pure=False))
            assert futures[-1].result(timeout=120) == length, "wrong chain result"
            elapsed = time.perf_counter() - started
        spans: dict[str, tuple[float, float]] = {}
        for entry in stream.data:
            for span in entry["startstops"]:
                if span["action"] == "compute":
                    spans[str(entry["key"])] = (span["start"], span["stop"])
    keys = [str(f.key) for f in futures]
    edges = [(spans[child][0] - spans[parent][1]) * 1000
             for parent, child in zip(keys, keys[1:], strict=False)]
    first, last = spans[keys[0]][0], spans[keys[-1]][1]
    return {"system": "dask", "length": length, "wall_s": round(elapsed, 3),
            "chain_ms": round((last - first) * 1000, 1),
            "per_task_ms": round((last - first) * 1000 / length, 3),
            **{f"edge_{k}": v for k, v in workloads.percentiles(edges).items()}}


if __name__ == "__main__":
    print(json.dumps(chain(int(sys.argv[1]) if len(sys.argv) > 1 else 200)), flush=True)
