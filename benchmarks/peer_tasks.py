"""Task functions for ``benchmarks/peers.py``: the same add and sleep as worker_node.tasks.

RQ and Dask workers import them by module name. Kept free of heavy imports: RQ's
default worker imports this module afresh in every forked work horse. Celery's
app and task wrappers are in ``peer_celery.py``.
"""

from __future__ import annotations

import time


def add(a: float, b: float) -> float:
    """a + b"""
    return a + b


def sleep(seconds: float) -> float:
    """Wait ``seconds`` and return how long it really slept."""
    started = time.perf_counter()
    time.sleep(seconds)
    return round(time.perf_counter() - started, 6)
