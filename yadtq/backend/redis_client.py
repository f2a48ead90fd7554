"""A Redis URL made a client (adapter layer): the one place yadtq builds a ``redis.Redis``.

``redis://``, ``rediss://`` and ``unix://`` URLs go to redis-py as they are. A
``redis+sentinel://`` URL (:mod:`yadtq.redis_urls`) becomes a client of the master
its sentinels name: redis-py's :class:`~redis.sentinel.SentinelConnectionPool` asks
them again for every new connection, so after a failover the next connection (or the
one immediate retry of a dropped one) reaches the new primary.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

from yadtq.redis_urls import SentinelURL, is_sentinel_url, parse_sentinel_url


class SentinelRedis(redis.Redis):
    """A client of a sentinel-managed master that also closes its connections to the
    sentinels (redis-py's ``close`` closes only the master's pool)."""

    def close(self) -> None:
        super().close()
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            for sentinel in pool.sentinel_manager.sentinels:
                sentinel.close()


def redis_client(url: str, **kwargs: Any) -> redis.Redis:
    """A client of the Redis ``url`` names; ``kwargs`` are redis-py connection options
    (client name, timeouts, retry, ...), applied to the master's connections. The
    sentinels get the same socket timeouts, so a dead one costs no more than a dead server.

    Raises:
        ConfigurationError: a malformed sentinel URL.
    """
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **kwargs)
    target = parse_sentinel_url(url)
    sentinel_options = {name: value for name, value in kwargs.items()
                        if name.startswith("socket_")}
    if target.sentinel_password:
        sentinel_options["password"] = target.sentinel_password
    sentinels = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)
    return sentinels.master_for(target.master, redis_class=SentinelRedis, db=target.db,
                                username=target.username, password=target.password, **kwargs)


def sentinel_target(client: redis.Redis) -> SentinelURL | None:
    """What a sentinel client's URL named (its sentinels and master), else None."""
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return None
    sentinels = tuple(
        (s.connection_pool.connection_kwargs.get("host", "?"),
         s.connection_pool.connection_kwargs.get("port", 0))
        for s in pool.sentinel_manager.sentinels)
    return SentinelURL(sentinels, pool.service_name,
                       pool.connection_kwargs.get("db", 0))
