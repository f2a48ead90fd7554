"""Running the Lua scripts (adapter layer, beside the backend): each registered once on a
Redis client and run through its codec (``scripts``) by ``EVALSHA`` alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from yadtq.backend.due_scripts import ForgetSentCall, ProduceUnsentCall, ReleaseCall, TakeDueCall
from yadtq.backend.durability import Confirmation, PublishOutboxCall, ReplicaUnconfirmed
from yadtq.backend.failover_calls import RecountBatchCall
from yadtq.backend.keys import Keys
from yadtq.backend.limit_calls import WakeLimitsCall
from yadtq.backend.schedule_calls import FireScheduleCall
from yadtq.backend.scripts import (
    CancelCall,
    ClaimCall,
    EnqueueCall,
    FailQueuedCall,
    FinishCall,
    RenewCall,
    RequeueCall,
    ScriptCall,
)
from yadtq.backend.workflow_scripts import (
    InputsCall,
    RepairBlockedCall,
    RetryWorkflowCall,
    SettleCall,
)

R = TypeVar("R")

CALLS: tuple[type[ScriptCall[Any]], ...] = (
    EnqueueCall, ClaimCall, FinishCall, RequeueCall, CancelCall, FailQueuedCall,
    TakeDueCall, ReleaseCall, RenewCall, SettleCall, InputsCall, RetryWorkflowCall,
    RepairBlockedCall, FireScheduleCall, WakeLimitsCall, ForgetSentCall, PublishOutboxCall,
    RecountBatchCall, ProduceUnsentCall)


_USES = re.compile(r"^-- uses: (\S+\.lua)$", re.MULTILINE)


def source(script: str) -> str:
    """A script's text, after the libraries its header names (``-- uses: edges.lua``,
    from ``lua/lib``): the functions several scripts share are written once."""
    lua = resources.files("yadtq.backend").joinpath("lua")
    text = lua.joinpath(script).read_text()
    libraries = [lua.joinpath("lib", name).read_text() for name in _USES.findall(text)]
    return "\n".join([*libraries, text])


class Scripts:
    """The Lua scripts, registered once on a Redis client and run through their codecs."""

    def __init__(self, client: redis.Redis, keys: Keys,
                 confirmation: Confirmation | None = None) -> None:
        """``confirmation``: confirm each call that sends events with a replica before
        they go out (``durability``); None: send them at once."""
        self._redis = client
        self._keys = keys
        self._confirmation = confirmation
        self._registered: dict[str, Script] = {
            call.script: client.register_script(source(call.script)) for call in CALLS}

    def run(
        self, call: ScriptCall[R], also: Callable[[redis.client.Pipeline], Any] | None = None
    ) -> tuple[R, list[Any]]:
        """Run ``also``'s commands and then ``call`` in one round trip.

        Sends EVALSHA only: redis-py's pipelines would first ask SCRIPT EXISTS, a second
        round trip. A script Redis lost (after a restart) is loaded and the call re-run.
        With a confirmation, a call that sends events waits for a replica (``WAIT``, in
        the same round trip) and publishes them after it (a second one).

        Returns:
            The call's parsed reply, and the replies of ``also``'s commands.

        Raises:
            redis.RedisError: a command failed (the backend translates it).
            ValueError: the script answered in a shape its codec does not know.
        """
        script = self._registered[call.script]
        keys, args = call.keys(self._keys), call.args(self._keys)
        confirming = self._confirmation is not None and self._keys.events in args
        outbox = ""
        if confirming:
            assert self._confirmation is not None
            target, outbox = self._confirmation.target()
            args = [target if arg == self._keys.events else arg for arg in args]
        reply, also_replies, acknowledged = self._evalsha(script, keys, args, also, confirming)
        if isinstance(reply, NoScriptError):
            script.sha = self._redis.script_load(script.script)
            reply, _, acknowledged = self._evalsha(script, keys, args, None, confirming)
        for one in [*also_replies, reply]:
            if isinstance(one, Exception):
                raise one
        if confirming:
            assert self._confirmation is not None
            try:
                ready = self._confirmation.confirmed(acknowledged, outbox)
            except ReplicaUnconfirmed:
                # A primary no replica follows may be a stale one a failover replaced: the
                # next call connects afresh, through the sentinels to the current primary.
                self._redis.connection_pool.disconnect(inuse_connections=False)
                raise
            self._publish(ready)
        return call.parse(reply), also_replies

    def _evalsha(
        self,
        script: Script,
        keys: list[str],
        args: list[Any],
        also: Callable[[redis.client.Pipeline], Any] | None,
        confirming: bool,
    ) -> tuple[Any, list[Any], Any]:
        with self._redis.pipeline(transaction=False) as pipe:
            if also is not None:
                also(pipe)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            if confirming:
                assert self._confirmation is not None
                self._confirmation.wait(pipe)
            replies = pipe.execute(raise_on_error=False)
        acknowledged = replies.pop() if confirming else None
        *also_replies, reply = replies
        return reply, also_replies, acknowledged

    def _publish(self, outboxes: list[str]) -> None:
        """Publish confirmed calls' held events (one round trip)."""
        publish = self._registered[PublishOutboxCall.script]
        with self._redis.pipeline(transaction=False) as pipe:
            for outbox in outboxes:
                call = PublishOutboxCall(outbox)
                keys, args = call.keys(self._keys), call.args(self._keys)
                pipe.evalsha(publish.sha, len(keys), *keys, *args)
            replies = pipe.execute(raise_on_error=False)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            publish.sha = self._redis.script_load(publish.script)
            self._publish(outboxes)
