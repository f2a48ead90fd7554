"""Writes confirmed by a replica before anyone sees them (adapter layer, beside the scripts).

With ``durability="replicated"`` (``YADTQ_DURABILITY``) every script call that moves
task states is followed, in the same round trip, by ``WAIT 1``: Redis answers once a
replica has the call's writes. Until then its change events wait in an outbox of the call
(``lua/lib/events.lua``) instead of going out, and the call is not done for its caller (a
worker commits Kafka offsets past its claims only after the claim call returned). So an
outcome a client saw, and a claim a worker relied on, survive a failover that promotes a
replica. A call no replica confirmed in time raises a transient error and its caller tries
again; its outbox is published as soon as a later call is confirmed (a replica has every
write before that one too), and dropped with the write if a failover lost it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

import redis

from yadtq.backend.keys import Keys
from yadtq.config import Config

REPLICAS = 1  # replicas that must have a write before it counts


class ReplicaUnconfirmed(redis.ConnectionError):
    """No replica confirmed a call's writes in time: the caller tries again (transient)."""


@dataclass(frozen=True)
class PublishOutboxCall:
    """publish_outbox.lua: publish the events a confirmed call left in its outbox."""

    script: ClassVar[str] = "publish_outbox.lua"
    outbox: str

    def keys(self, keys: Keys) -> list[str]:
        return [self.outbox]

    def args(self, keys: Keys) -> list[Any]:
        return [keys.events]

    def parse(self, reply: Any) -> int:
        return int(reply)


@dataclass
class Confirmation:
    """The replica confirmation of one backend's script calls, and their held events."""

    keys: Keys
    timeout_ms: int
    unpublished: list[str] = field(default_factory=list)  # outboxes of unconfirmed calls

    @classmethod
    def of(cls, config: Config, keys: Keys) -> Confirmation | None:
        """The confirmation ``config`` asks for; None with the default durability."""
        if config.durability != "replicated":
            return None
        return cls(keys, timeout_ms=max(1, int(config.connect_timeout * 500)))

    def target(self) -> tuple[str, str]:
        """A call's events target (the channel and a fresh outbox) and that outbox."""
        outbox = self.keys.outbox(uuid.uuid4().hex)
        return f"{self.keys.events}\n{outbox}", outbox

    def wait(self, pipe: redis.client.Pipeline) -> None:
        """Add the WAIT that confirms the pipeline's writes."""
        pipe.execute_command("WAIT", REPLICAS, self.timeout_ms)

    def confirmed(self, acknowledged: Any, outbox: str) -> list[str]:
        """The outboxes to publish now that WAIT answered ``acknowledged``.

        Raises:
            ReplicaUnconfirmed: fewer replicas than :data:`REPLICAS` have the writes.
        """
        if isinstance(acknowledged, Exception):
            raise acknowledged
        if int(acknowledged) < REPLICAS:
            self.unpublished.append(outbox)
            raise ReplicaUnconfirmed(
                f"no replica confirmed the write within {self.timeout_ms} ms (WAIT "
                f"{REPLICAS} answered {acknowledged}); durability is 'replicated': is a "
                "replica connected?")
        ready, self.unpublished = [*self.unpublished, outbox], []
        return ready
