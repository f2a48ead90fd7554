"""A map rides through a failover of the Redis primary (issue 26): the harness of
benchmarks/failover.py, smaller, on the run's broker. Each run has a stack of its own whose
Redis is a primary, two replicas and three sentinels."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import failover  # noqa: E402  (benchmarks/ is not a package)


@pytest.mark.parametrize(("fault", "durability"), [
    ("kill", "default"),
    ("stop4", "replicated"),
])
def test_a_map_ends_whole_through_a_failover(fault, durability, tmp_path):
    # Given 3 workers and a 600-task map; when the primary fails at about 30 % done
    broker = os.environ.get("YADTQ_TEST_BROKER") or "tansu"
    figures = failover.run(fault, durability, tasks=600, broker=broker, tuned=True,
                           workdir=tmp_path)
    print(figures)

    # Then every task succeeds once accepted, nothing is left queued, the counters add up,
    # every worker is alive, and only the tasks running at the fault ran twice
    assert figures["ended"] and figures["success"] == 600, figures
    assert figures["left_queued"] == 0 and figures["counters_match"], figures
    assert figures["workers_alive"] == figures["worker_processes_alive"] == 3, figures
    assert figures["run_twice"] <= figures["running_at_fault"], figures
    if durability == "replicated":
        assert figures["changed_after_resolved"] == 0, figures
