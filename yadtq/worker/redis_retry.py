"""Retrying a Redis call while Redis is unreachable (worker runtime).

A worker outlives a Redis outage: each thread that needs Redis retries its own
call with backoff, and only that thread waits. A claim waits until Redis is
back (or the worker stops); an outcome waits up to a minute, then its lease
expires and another worker runs the task again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from yadtq.errors import BackendUnavailable

logger = logging.getLogger(__name__)

MAX_DELAY = 5.0  # seconds between tries, at most
FIRST_DELAY = 0.1
T = TypeVar("T")


class GaveUp:
    """What :func:`retry_redis` returns when Redis stayed unreachable."""


GAVE_UP = GaveUp()


def retry_redis(step: Callable[[], T], what: str, *, worker: str, stopping: threading.Event,
                within: float | None = None) -> T | GaveUp:
    """Run ``step``, retrying with backoff while Redis is unreachable.

    Gives up (returning ``GAVE_UP``) after ``within`` seconds, or, with no
    limit, once ``stopping`` is set; a limited wait goes on while stopping,
    since an outcome is worth waiting for.
    """
    deadline = None if within is None else time.monotonic() + within
    delay = FIRST_DELAY
    while True:
        try:
            return step()
        except BackendUnavailable as exc:
            out_of_time = deadline is not None and time.monotonic() > deadline
            if out_of_time or (deadline is None and stopping.is_set()):
                logger.error("Worker %s: could not %s: %s", worker, what, exc)
                return GAVE_UP
            logger.warning("Worker %s: Redis unreachable, cannot %s (%s); retrying in "
                           "%.1f s", worker, what, exc, delay)
            if deadline is None:
                stopping.wait(delay)  # wakes at once when the worker stops
            else:
                time.sleep(delay)  # a backoff between tries, not a synchronisation
            delay = min(delay * 2, MAX_DELAY)
