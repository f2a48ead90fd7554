"""Redis errors at the backend's edge (adapter layer): which ones pass, and what each becomes.

No redis exception leaves the backend (DESIGN.md): each becomes
:class:`BackendUnavailable` when trying again later cures it, else
:class:`BackendError`, and the message names the server and what to do.
:func:`is_transient` is the one place that decides which is which.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    MasterDownError,
    ReadOnlyError,
    TryAgainError,
)
from redis.sentinel import MasterNotFoundError

from yadtq.backend.redis_client import sentinel_target
from yadtq.config import Config
from yadtq.errors import BackendError, BackendUnavailable

# Replies of a Redis that is loading its data, running a long script, read-only after
# a failover, without a reachable master, short of the replicas `min-replicas-to-write`
# asks for, or whose role changed under a blocked command (a failover): each passes once
# the server is ready, or once the client reconnects to the new primary. So does no
# sentinel naming a master (MasterNotFoundError): a failover in progress.
_TRANSIENT_REPLIES = ("LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN", "NOREPLICAS",
                      "UNBLOCKED")
_TRANSIENT_TYPES = (redis.ConnectionError, redis.TimeoutError, ReadOnlyError, TryAgainError,
                    MasterDownError, MasterNotFoundError)  # BusyLoadingError is a ConnectionError

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)


def is_transient(exc: redis.RedisError) -> bool:
    """True for the Redis errors that trying again later cures (the one place that decides)."""
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        return False  # a ConnectionError, but wrong credentials stay wrong
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


def address(client: redis.Redis) -> str:
    """Where ``client`` connects, for messages: ``host:port``, ``unix:<path>``, or
    ``sentinels h1:p1,h2:p2 (master name)``."""
    target = sentinel_target(client)
    if target is not None:
        return target.describe()
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def translate(exc: redis.RedisError, client: redis.Redis, config: Config
              ) -> BackendUnavailable | BackendError:
    """The yadtq error for a redis one, naming the server and what to do."""
    cause = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, redis.TimeoutError):
        cause = f"no answer within {config.connect_timeout:g} s ({cause})"
    if is_transient(exc):
        return BackendUnavailable(
            f"Redis at {address(client)} is unavailable: {cause}; check that it is running "
            f"and reachable (address from {config.source}), then try again")
    return BackendError(f"Redis at {address(client)} refused a command: {cause}")


def _translating(method: F) -> F:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except redis.RedisError as exc:
            raise translate(exc, self.redis, self.config) from None
    return call  # type: ignore[return-value]


def at_the_edge(cls: C) -> C:
    """Wrap every public method of ``cls`` so that no redis exception leaves it.

    Its instances must have ``redis`` (the client) and ``config`` attributes. A class
    decorator rather than one per method, so a method added later cannot forget.
    """
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and callable(member):
            setattr(cls, name, _translating(member))
    return cls
