"""Rate and concurrency limits in Redis (adapter layer): what a claim is limited by, what
waits for which limit, and the sweep that wakes waiters a missed wake-up left behind.

The limits themselves are decided inside claim.lua (``lua/lib/limits.lua``), on Redis's
clock; see ``yadtq.limits`` for what a task declares. The worker's own registry is the
source of a task's limits, so every message of a task it serves, from any client, is
claimed under them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from yadtq import registry
from yadtq.backend.limit_calls import WakeLimitsCall
from yadtq.backend.parts import BackendPart
from yadtq.backend.records import text
from yadtq.backend.redis_errors import at_the_edge
from yadtq.protocol import TaskMessage

LIMIT_KINDS = ("rate", "concurrency")


def claim_limits(message: TaskMessage) -> str:
    """What limits a claim of ``message`` (``Limits.claim_spec``), or "" for nothing.

    A function shipped by value declares none. Pickled arguments are not read before the
    task runs, so a keyed rate limit counts those calls under the key "".
    """
    if message.code is not None:
        return ""
    limits = registry.options(message.task).limits
    return "" if limits is None else limits.claim_spec(message.args, message.kwargs)


def limited_names() -> list[str]:
    """The registered tasks that declare limits (a claim from a record alone skips them)."""
    return [name for name in registry.registered_names()
            if registry.options(name).limits is not None]


@at_the_edge
class LimitStore(BackendPart):
    """The queue's limits as Redis holds them."""

    def waiting(self) -> list[dict[str, Any]]:
        """Each limit in use: ``limit`` (its text, "rate 20/s (acme)"), ``task``, ``kind``,
        ``running`` (concurrency: holding a share; rate: started in the last period) and
        ``waiting`` (tasks ``scheduled`` until it lets them start), busiest first."""
        names = sorted(text(name) for name in self.redis.smembers(self._keys.limits))
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                kind = _kind(name)
                pipe.hmget(name, "spec", "task")
                pipe.zcard(f"{name}:{'running' if kind == 'concurrency' else 'window'}")
                pipe.zcard(f"{name}:waiting")
            replies = pipe.execute()
        rows = []
        for i, name in enumerate(names):
            (spec, task), running, waiting = replies[3 * i:3 * i + 3]
            rows.append({"limit": text(spec), "task": text(task), "kind": _kind(name),
                         "running": int(running), "waiting": int(waiting)})
        return sorted(rows, key=lambda row: (-row["waiting"], row["task"], row["limit"]))

    def wake_stranded(self, now: float | None = None) -> int:
        """Wake waiters of limits with free shares that no wake-up reached (see
        ``wake_limits.lua``), and forget limits no longer in use; returns how many woke."""
        woken, _ = self._scripts.run(WakeLimitsCall(now))
        return woken

    def waits_for(self, task_ids: Sequence[str]) -> list[str]:
        """What limit each task waits for ("" for none), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(self._keys.task(task_id), "waits_for")
            return [text(value) for value in pipe.execute()]


def _kind(name: str) -> str:
    return "concurrency" if ":concurrency:" in name else "rate"
