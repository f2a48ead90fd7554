"""Demo tasks served by default (``--tasks worker_node.tasks``).

Clients import these functions only to name them: ``q.submit(add, 1, 2)``
sends the name ``add``; the function runs on a worker that registered it.
"""

from __future__ import annotations

import time
from typing import Any

import yadtq


@yadtq.task
def add(a: float, b: float) -> float:
    """a + b"""
    return a + b


@yadtq.task
def subtract(a: float, b: float) -> float:
    """a - b"""
    return a - b


@yadtq.task
def multiply(a: float, b: float) -> float:
    """a * b"""
    return a * b


@yadtq.task
def divide(a: float, b: float) -> float:
    """a / b; raises ZeroDivisionError for b == 0, which shows a failed task."""
    return a / b


@yadtq.task
def power(base: float, exponent: float) -> float:
    """base ** exponent"""
    return base**exponent


@yadtq.task
def sleep(seconds: float) -> float:
    """Wait ``seconds`` (an I/O-bound task) and return how long it really slept."""
    started = time.perf_counter()
    time.sleep(seconds)
    return round(time.perf_counter() - started, 6)


@yadtq.task
def count_primes(limit: int) -> int:
    """How many primes are below ``limit`` (a CPU-bound task)."""
    if limit < 3:
        return 0
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytearray(len(range(n * n, limit, n)))
    return sum(sieve)


@yadtq.task
def fail(message: str = "this task always fails") -> None:
    """Raise RuntimeError(message): shows how a failure reaches the client."""
    raise RuntimeError(message)


@yadtq.task
def spin(seconds: float, marker: str | None = None) -> int:
    """Busy-loop for ``seconds``, appending a line to ``marker`` every 50 ms.

    A runaway task for time-limit demos: the marker file shows from outside
    whether the code is still running.
    """
    deadline = time.monotonic() + seconds
    next_mark = 0.0
    loops = 0
    while time.monotonic() < deadline:
        loops += 1
        if marker and time.monotonic() >= next_mark:
            with open(marker, "a") as file:
                file.write(f"{time.time()}\n")
            next_mark = time.monotonic() + 0.05
    return loops


@yadtq.task(retry_on=(ConnectionError,))
def flaky(counter_path: str, failures: int) -> int:
    """Raise ConnectionError the first ``failures`` times it runs, then return the run count.

    Shows retries: the count lives in a file, so it survives from one attempt to the next.
    """
    with open(counter_path, "a+") as file:
        file.seek(0)
        runs = len(file.read().splitlines()) + 1
        file.write("run\n")
    if runs <= failures:
        raise ConnectionError(f"simulated outage (run {runs} of {failures} failing)")
    return runs


@yadtq.task
def total(values: list[float]) -> float:
    """The sum of ``values``: a reducer over a batch's results (workflows' fan-in)."""
    return sum(values)


@yadtq.task
def check_positive(value: float) -> float:
    """``value`` if it is positive, else raise ValueError: a step that can fail a branch."""
    if value <= 0:
        raise ValueError(f"{value} is not positive")
    return value


@yadtq.task
def describe(value: Any) -> str:
    """What a parent gave: its value, or, across an ``allow_failure`` edge, its error."""
    if isinstance(value, yadtq.TaskError):
        return f"error {value.type}: {value.message}"
    return f"value {value!r}"


@yadtq.task
def needs_file(path: str) -> str:
    """Return the text of the file at ``path``, or fail while it does not exist: a step that
    fails until someone fixes its input (then ``Workflow.retry()`` runs it again)."""
    with open(path) as file:
        return file.read()


# --- limits (docs/limits.md): they hold across every worker of the queue ---------------


@yadtq.task(rate_limit="20/s")
def throttled(seconds: float = 0.0) -> float:
    """Sleep ``seconds``: at most 20 calls start in any second, across all workers."""
    time.sleep(seconds)
    return seconds


@yadtq.task(rate_limit="5/s", rate_key="customer")
def call_api(customer: str, seconds: float = 0.0) -> str:
    """Stand in for a call to a rate-limited API: at most 5 a second per ``customer``."""
    time.sleep(seconds)
    return customer


@yadtq.task(concurrency=2)
def exclusive(seconds: float, marker: str | None = None) -> float:
    """Sleep ``seconds`` (busy-looping as :func:`spin` does, with ``marker``); at most 2
    run at once across all workers, as for a licence or a database that takes two."""
    if marker:
        spin(seconds, marker)
    else:
        time.sleep(seconds)
    return seconds
