"""Schedules in Redis (adapter layer): one hash per schedule, a sorted set of their next
occurrences, and a capped history list each.

- ``schedule:<queue>:<name>`` hash: ``spec`` (``ScheduleSpec`` JSON), ``template`` (the
  task message as the client encoded and signed it), ``task``, ``next``, ``rev`` (moved
  by every change: the compare-and-set of ``fire_schedule.lua``), ``paused``,
  ``last_task``, ``blobs`` (the pickles it needs, kept while it lives), counters.
- ``schedules:<queue>`` sorted set: name -> next occurrence (``+inf`` while paused). A
  worker's idle look is one ``ZRANGEBYSCORE`` of its head (:meth:`ScheduleStore.due`).
- ``schedule-history:<queue>:<name>`` list: one JSON row per occurrence, newest last.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from yadtq.backend.parts import BackendPart
from yadtq.backend.records import text
from yadtq.backend.redis_errors import at_the_edge
from yadtq.backend.schedule_calls import FireScheduleCall

LOOK_AHEAD = 16  # schedules a look reads from the head of the set; more due wait a look
HISTORY_KEPT = 1000  # history rows a schedule keeps
PAUSED = float("inf")  # a paused schedule's score: never due
CLOCK_MARGIN = 10.0  # seconds this machine's clock may lag Redis's and still see a schedule due


@at_the_edge
class ScheduleStore(BackendPart):
    """One queue's schedules: stored, looked at, fired by compare-and-set, changed."""

    def now(self) -> float:
        """Redis's clock: the one every worker and client judges schedules by."""
        seconds, micros = self.redis.time()
        return seconds + micros / 1e6

    def due(self, now: float | None = None) -> tuple[list[str], float]:
        """The names of schedules due now, and the time it judged by: Redis's, or ``now``
        if given (tests).

        An idle look is one command: the head of the set up to this machine's clock plus
        ``CLOCK_MARGIN``. Only when something is that close does it read Redis's ``TIME``
        and judge by it (the firing script judges again), so a fast clock never fires
        early, and a clock slow by more than the margin only leaves firing to others.
        """
        if now is not None:
            head = self.redis.zrangebyscore(self._keys.schedules, "-inf", now, start=0,
                                            num=LOOK_AHEAD, withscores=True)
            return [text(name) for name, _ in head], now
        near = self.redis.zrangebyscore(self._keys.schedules, "-inf",
                                        time.time() + CLOCK_MARGIN, start=0, num=LOOK_AHEAD,
                                        withscores=True)
        if not near:
            return [], 0.0
        now = self.now()
        return [text(name) for name, score in near if score <= now], now

    def save(self, name: str, fields: Mapping[str, str], next_at: float, blobs: dict[str, bytes]
             ) -> None:
        """Create or replace a schedule (a firing planned from before is refused); pickles
        only a replaced one needed expire like a finished task's."""
        key = self._keys.schedule(name)
        replaced = set(json.loads(text(self.redis.hget(key, "blobs")) or "[]")) - set(blobs)
        with self.redis.pipeline(transaction=True) as pipe:
            for sha256 in replaced:
                pipe.expire(self._keys.blob(sha256), int(self.config.result_ttl))
            for sha256, data in blobs.items():  # kept as long as the schedule
                pipe.set(self._keys.blob(sha256), data)
            pipe.hset(key, mapping={**fields, "next": repr(next_at), "paused": "0",
                                    "blobs": json.dumps(sorted(blobs))})
            pipe.hincrby(key, "rev", 1)
            pipe.zadd(self._keys.schedules, {name: next_at})
            pipe.execute()

    def get(self, name: str) -> dict[str, str] | None:
        """The schedule's hash as text, or None if there is no such schedule."""
        raw = self.redis.hgetall(self._keys.schedule(name))
        return {text(k): text(v) for k, v in raw.items()} or None

    def names(self) -> list[str]:
        """Every schedule of the queue, the next to fire first (paused ones last)."""
        return [text(name) for name in self.redis.zrange(self._keys.schedules, 0, -1)]

    def get_many(self, names: Sequence[str]) -> list[dict[str, str] | None]:
        """The hashes of ``names`` in order, None for one removed meanwhile."""
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self._keys.schedule(name))
            raws = pipe.execute()
        return [{text(k): text(v) for k, v in raw.items()} or None for raw in raws]

    def fire(self, call: FireScheduleCall) -> tuple[str, list[str]]:
        """Run ``fire_schedule.lua``: ``("ok", task ids written)``, or why nothing was done."""
        return self._scripts.run(call)[0]

    def set_paused(self, name: str, paused: bool, next_at: float | None = None) -> bool:
        """Pause, or resume from ``next_at``; False if there is no such schedule."""
        key = self._keys.schedule(name)
        if not self.redis.exists(key):
            return False
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "paused", "1" if paused else "0")
            if next_at is not None:
                pipe.hset(key, "next", repr(next_at))
            pipe.hincrby(key, "rev", 1)
            pipe.zadd(self._keys.schedules,
                      {name: PAUSED if paused or next_at is None else next_at})
            pipe.execute()
        return True

    def remove(self, name: str) -> bool:
        """Delete the schedule and its history; its pickles expire like a finished task's.
        False if there was no such schedule."""
        key = self._keys.schedule(name)
        blobs = json.loads(text(self.redis.hget(key, "blobs")) or "[]")
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.zrem(self._keys.schedules, name)
            pipe.delete(self._keys.schedule_history(name))
            for sha256 in blobs:
                pipe.expire(self._keys.blob(sha256), int(self.config.result_ttl))
            deleted, *_ = pipe.execute()
        return bool(deleted)

    def history(self, name: str) -> list[dict[str, Any]]:
        """The schedule's recorded occurrences, oldest first."""
        rows = [json.loads(row) for row in
                self.redis.lrange(self._keys.schedule_history(name), 0, -1)]
        for row in rows:
            row["occurrence"] = float(row["occurrence"])  # kept as text: no digit lost
        return sorted(rows, key=lambda row: row["occurrence"])
