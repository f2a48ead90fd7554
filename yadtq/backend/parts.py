"""What every part of the Redis backend shares (adapter layer): the settings, the
connection, the registered scripts and the queue's keys, made once by ``RedisBackend``
and handed to each part (due sets, workflows and edges, schedules, unrunnable tasks).
"""

from __future__ import annotations

import redis

from yadtq.backend.keys import Keys
from yadtq.backend.script_runner import Scripts
from yadtq.config import Config

PIPELINE_CHUNK = 1000  # commands a pipelined read or write sends at once


class BackendPart:
    """One responsibility of the backend, on the backend's connection and scripts."""

    def __init__(self, config: Config, client: redis.Redis, scripts: Scripts, keys: Keys
                 ) -> None:
        self.config = config
        self.redis = client
        self._scripts = scripts
        self._keys = keys
