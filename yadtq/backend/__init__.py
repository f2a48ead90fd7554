"""The Redis adapter (adapter layer): the result store, the source of truth for a task.

- :class:`RedisBackend` (``redis_backend``): every read and status change the
  client and the worker make.
- ``moves``: :class:`Claim` and :class:`Outcome`, what a worker's status moves give and take.
- ``due_sets``: retries, scheduled tasks and readied children waiting in Redis, taken by
  workers when due.
- ``workflows``: workflows and the edges between tasks (dependent work).
- ``unrunnable``: ending the records of tasks nothing will run (undelivered, refused).
- ``scripts``, ``due_scripts``, ``workflow_scripts``: one codec a Lua script (``lua/``,
  with the functions they share in ``lua/lib``): its KEYS and ARGV by name, its reply as
  named fields.
- ``keys``: every Redis key and channel, under one prefix.
- ``records``: a task's hash, written and read.
- ``redis_errors``: redis-py's errors turned into yadtq's at the edge.
- ``redis_client``: a Redis URL (``redis://``, ``rediss://``, ``unix://`` or
  ``redis+sentinel://``) made a client; the one place a ``redis.Redis`` is built.

Nothing outside this package imports redis-py, except the event listener's
subscription (``yadtq.events``).
"""

from yadtq.backend.moves import Claim, Outcome, Stored
from yadtq.backend.parts import PIPELINE_CHUNK
from yadtq.backend.redis_backend import UNNAMED_RING, RedisBackend

__all__ = ["PIPELINE_CHUNK", "UNNAMED_RING", "Claim", "Outcome", "RedisBackend", "Stored"]
