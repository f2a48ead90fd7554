"""What bench.py and peers.py both measure, defined once so the comparison is like for like.

Imports nothing from yadtq: peers.py runs in its own virtualenv.
"""

from __future__ import annotations

import heapq
import random
import statistics

BALANCE_TASKS = 60
BALANCE_TOTAL_SECONDS = 9.0
BALANCE_WORKERS = 3
LATENCY_WARMUPS = 20
BUSY_SUBMITS = 500  # submits into a queue whose every slot is busy
LATENCY_SAMPLES = 1500  # sequential submits: enough for a p99 of 15 samples and a p99.9


def long_tail_durations() -> list[float]:
    """60 sleep durations from a Pareto tail (random.Random(42)), about 9 s in all."""
    rng = random.Random(42)
    raw = [rng.paretovariate(1.5) for _ in range(BALANCE_TASKS)]
    return [round(BALANCE_TOTAL_SECONDS * d / sum(raw), 3) for d in raw]


def ideal_makespan(durations: list[float], workers: int = BALANCE_WORKERS) -> float:
    """The best any scheduler can do: max(total / workers, longest task)."""
    return max(sum(durations) / workers, max(durations))


def greedy_makespan(durations: list[float], slots: int) -> float:
    """What list scheduling in submission order reaches: each slot, once free, takes the next
    task (as one shared queue with no overhead would)."""
    free_at = [0.0] * slots
    for duration in durations:
        heapq.heappush(free_at, heapq.heappop(free_at) + duration)
    return max(free_at)


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50, p90 and p99 of latency samples in milliseconds."""
    cuts = statistics.quantiles(samples_ms, n=100)
    return {"p50_ms": round(cuts[49], 2), "p90_ms": round(cuts[89], 2),
            "p99_ms": round(cuts[98], 2)}


def tail_percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50, p90 and p99, plus p99.9 and the maximum: where a lone task's tail shows."""
    cuts = statistics.quantiles(samples_ms, n=1000)
    return {**percentiles(samples_ms), "p99.9_ms": round(cuts[998], 2),
            "max_ms": round(max(samples_ms), 2)}
