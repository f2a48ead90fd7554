"""The failover repair's script, by name (adapter layer, beside the scripts): its keys,
arguments and reply, laid out as ``lua/recount_batch.lua``'s header says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from yadtq.backend.keys import Keys
from yadtq.status import COUNTERS


@dataclass(frozen=True)
class RecountBatchCall:
    """recount_batch.lua: set a batch's counters from its tasks' records."""

    script: ClassVar[str] = "recount_batch.lua"
    batch_id: str

    def keys(self, keys: Keys) -> list[str]:
        return [keys.batch(self.batch_id), keys.batch_tasks(self.batch_id)]

    def args(self, keys: Keys) -> list[Any]:
        return [f"{keys.prefix}:task:", *COUNTERS]

    def parse(self, reply: Any) -> int:
        return int(reply)
