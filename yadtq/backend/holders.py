"""Which leased tasks' workers are gone (adapter layer, a part of the backend).

A worker names every Redis connection after itself, and the kernel closes a dead
process's sockets at once, so a leased task whose worker has no connection is an orphan.
A live worker is briefly without one only when its Redis changed under it: a restart, or a
failover to a replica (which has been up for hours: its uptime says nothing). So a server
whose run id this worker has not seen before gets the grace a restart gets, except for
workers whose heartbeat says they beat on this very server: they had a connection to it
since it took over, so its loss is their death, and their tasks run again at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from yadtq.backend.parts import BackendPart
from yadtq.backend.records import text
from yadtq.backend.redis_errors import at_the_edge

SERVER_FIELD = "redis_run_id"  # a worker record's field: the server it last beat on


@at_the_edge
class Holders(BackendPart):
    """The look for dead workers' tasks; remembers the server it last saw."""

    _monotonic: Callable[[], float] = staticmethod(time.monotonic)  # tests set a clock
    _run_id: str | None = None
    _seen_since = 0.0

    def dead(self, me: str, restarted_within: float
             ) -> list[tuple[str, str | None, str]] | None:
        """(task id, batch id, worker) of leased tasks whose worker has no connection
        to Redis: its process died.

        While the server is younger than ``restarted_within`` seconds, or this worker has
        known it for less than that (its run id changed: a restart or a failover; live
        workers are reconnecting), only workers whose last heartbeat went to this server
        are answered. None: Redis refuses CLIENT LIST (no answer).
        """
        ids = [text(i) for i in self.redis.zrange(self._keys.leases, 0, -1)]
        if not ids:  # an idle queue: no client list to read (the costly part)
            return []
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                clients, server = pipe.client_list().info("server").execute()
        except redis.ResponseError:
            return None
        fresh = self._new_server(server, restarted_within)
        connected = {client.get("name") for client in clients}
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hmget(self._keys.task(task_id), "worker", "batch")
            holders = pipe.execute()
        orphans = [(task_id, text(batch) or None, text(worker))
                   for task_id, (worker, batch) in zip(ids, holders, strict=True)
                   if worker and text(worker) != me
                   and self._keys.connection(text(worker)) not in connected]
        if not orphans or not fresh:
            return orphans
        run_id = str(server.get("run_id", ""))
        gone = {worker for worker in {orphan[2] for orphan in orphans}
                if self._beat_on(worker) == run_id}
        return [orphan for orphan in orphans if orphan[2] in gone]

    def _beat_on(self, worker: str) -> str:
        """The run id of the server the worker's last heartbeat went to ("" if unknown)."""
        return text(self.redis.hget(self._keys.worker(worker), SERVER_FIELD)) or ""

    def _new_server(self, server: dict[str, object], within: float) -> bool:
        """True while the server is younger than ``within``, or known here for less."""
        now = self._monotonic()
        run_id = str(server.get("run_id", ""))
        if run_id != self._run_id:
            self._run_id, self._seen_since = run_id, now
        return (float(str(server.get("uptime_in_seconds", 0))) < within
                or now - self._seen_since < within)
