"""What every part of the Redis backend shares (adapter layer): the settings, the
connection, the registered scripts and the queue's keys, made once by ``RedisBackend``
and handed to each part (due sets, workflows and edges, schedules, unrunnable tasks).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import redis

from yadtq.backend.keys import Keys
from yadtq.backend.script_runner import Scripts
from yadtq.config import Config

PIPELINE_CHUNK = 1000  # commands a pipelined read or write sends at once

T = TypeVar("T")


def chunks(items: Iterable[T], size: int = PIPELINE_CHUNK) -> Iterator[tuple[int, list[T]]]:
    """``items`` (any iterable, read once) in lists of ``size``, each with the index it
    starts at: what one pipelined round trip handles."""
    chunk: list[T] = []
    start = 0
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield start, chunk
            start, chunk = start + size, []
    if chunk:
        yield start, chunk


class BackendPart:
    """One responsibility of the backend, on the backend's connection and scripts."""

    def __init__(self, config: Config, client: redis.Redis, scripts: Scripts, keys: Keys
                 ) -> None:
        self.config = config
        self.redis = client
        self._scripts = scripts
        self._keys = keys
