"""The codec of the limits' sweep script, ``wake_limits.lua`` (adapter layer, beside the
backend; see ``scripts`` for how a codec lays out a script's KEYS and ARGV). The limits'
decisions are claim.lua's (``ClaimCall``), with ``lua/lib/limits.lua``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from yadtq.backend.keys import Keys


@dataclass(frozen=True)
class WakeLimitsCall:
    """wake_limits.lua: wake the waiters of limits left with free shares; forget idle limits."""

    script: ClassVar[str] = "wake_limits.lua"
    now: float | None = None  # None: Redis's clock

    def keys(self, keys: Keys) -> list[str]:
        return [keys.limits]

    def args(self, keys: Keys) -> list[Any]:
        return [keys.task(""), "" if self.now is None else self.now]

    def parse(self, reply: Any) -> int:
        """How many waiters were woken."""
        return int(reply)
