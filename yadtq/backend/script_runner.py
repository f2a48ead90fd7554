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

from yadtq.backend.due_scripts import ForgetSentCall, ReleaseCall, TakeDueCall
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
    RepairBlockedCall, FireScheduleCall, WakeLimitsCall, ForgetSentCall)


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

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys
        self._registered: dict[str, Script] = {
            call.script: client.register_script(source(call.script)) for call in CALLS}

    def run(
        self, call: ScriptCall[R], also: Callable[[redis.client.Pipeline], Any] | None = None
    ) -> tuple[R, list[Any]]:
        """Run ``also``'s commands and then ``call`` in one round trip.

        Sends EVALSHA only: redis-py's pipelines would first ask SCRIPT EXISTS, a second
        round trip. A script Redis lost (after a restart) is loaded and the call re-run.

        Returns:
            The call's parsed reply, and the replies of ``also``'s commands.

        Raises:
            redis.RedisError: a command failed (the backend translates it).
            ValueError: the script answered in a shape its codec does not know.
        """
        script = self._registered[call.script]
        keys, args = call.keys(self._keys), call.args(self._keys)
        reply, also_replies = self._evalsha(script, keys, args, also)
        if isinstance(reply, NoScriptError):
            script.sha = self._redis.script_load(script.script)
            reply, _ = self._evalsha(script, keys, args)
        for one in [*also_replies, reply]:
            if isinstance(one, Exception):
                raise one
        return call.parse(reply), also_replies

    def _evalsha(
        self,
        script: Script,
        keys: list[str],
        args: list[Any],
        also: Callable[[redis.client.Pipeline], Any] | None = None,
    ) -> tuple[Any, list[Any]]:
        with self._redis.pipeline(transaction=False) as pipe:
            if also is not None:
                also(pipe)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            *also_replies, reply = pipe.execute(raise_on_error=False)
        return reply, also_replies
