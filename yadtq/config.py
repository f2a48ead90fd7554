"""Settings (bottom layer): the one module that reads the environment.

Precedence: explicit arguments > environment (``YADTQ_BOOTSTRAP``,
``YADTQ_REDIS_URL``, ``YADTQ_QUEUE``, ...) > the record a running local stack
left in :func:`local_stack_record_path`. With none of them,
:func:`resolve_config` raises at once with a message that says how to start one.

A local stack's record also holds settings no address shows (its random secret,
its queue and key prefix): a client whose bootstrap and Redis addresses are those of
a running stack takes every setting it was not given from that stack's record, so
``export YADTQ_BOOTSTRAP=... YADTQ_REDIS_URL=...`` cannot silently drop the secret.
Every running stack has a record in :func:`local_stacks_dir`; the one ``yadtq local
up`` runs is also at :func:`local_stack_record_path`, where ``connect()`` finds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from yadtq.errors import ConfigurationError
from yadtq.priority import LEVELS
from yadtq.redis_urls import (
    REDIS_SCHEMES,
    SENTINEL_FORM,
    is_sentinel_url,
    parse_sentinel_url,
    redacted_url,
)

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")

# What a missing or bad server address is called, and how to give one, by who asks:
# a Python caller of connect(), the `yadtq` command, or `python -m worker_node`.
_ADDRESS_NAMES = {
    "python": {"bootstrap": "bootstrap", "redis_url": "redis_url"},
    "cli": {"bootstrap": "--bootstrap", "redis_url": "--redis"},
    "worker": {"bootstrap": "--bootstrap", "redis_url": "--redis"},
}
_NO_SERVERS_HELP = {
    "python": "pass yadtq.connect(bootstrap=..., redis_url=...), set YADTQ_BOOTSTRAP and "
    "YADTQ_REDIS_URL, start a local stack in a terminal with `yadtq local up --workers 3`, "
    "or use yadtq.connect('local') to start one owned by this process",
    "cli": "pass --bootstrap and --redis, set YADTQ_BOOTSTRAP and YADTQ_REDIS_URL, or start "
    "a local stack in another terminal with `yadtq local up`",
    "worker": "pass --bootstrap and --redis, or set YADTQ_BOOTSTRAP and YADTQ_REDIS_URL",
}


DURABILITIES = ("default", "replicated")


@dataclass(frozen=True)
class Config:
    """Everything a client or worker needs to find and use its servers."""

    bootstrap: str
    redis_url: str = field(repr=False)
    queue: str = "default"
    key_prefix: str = "yadtq"
    partitions: int = 12
    # Replicas of each topic yadtq creates; None: min(3, brokers in the cluster).
    replication_factor: int | None = None
    result_ttl: float = 7 * 24 * 3600.0
    max_message_bytes: int = 1_000_000
    lease_seconds: float = 10.0
    heartbeat_interval: float = 2.0
    connect_timeout: float = 5.0
    # How long a fetch may wait on the broker for new tasks. Apache Kafka answers as
    # soon as a task arrives; the embedded Tansu broker only looks again at intervals,
    # so a short wait keeps a task that arrives mid-fetch from waiting. An idle worker
    # does not spin on it: it sleeps on its partitions' doorbells in Redis instead.
    fetch_wait_ms: int = 5
    # The longest an idle worker sleeps on its doorbells before it looks at Kafka anyway
    # (for tasks produced by other clients, which ring no doorbell).
    idle_wait: float = 0.2
    default_timeout: float | None = None
    retry_backoff: float = 1.0
    # Seconds a task may wait before a worker takes it ahead of higher priorities, so no
    # level starves (``yadtq.priority``).
    priority_starvation: float = 30.0
    secret: str | None = field(default=None, repr=False)
    # A worker that trusts code runs functions shipped by value and loads pickled values,
    # from messages signed with ``secret`` only: anyone with the secret can run code on it.
    trust_code: bool = False
    # Whether a worker refuses plain JSON calls of registered tasks that are not signed
    # with ``secret``; None: yes when it has a secret. Code and pickles are always signed.
    require_signed: bool | None = None
    # Pickled arguments and results larger than this go to Redis as blobs, not inline.
    inline_bytes: int = 64 * 1024
    max_payload_bytes: int = 256 * 1024 * 1024  # the largest pickled argument set or result
    # Workers: run each task in an OpenTelemetry span (the ``otel`` extra); a trace file
    # (``{worker}`` replaced by the worker's name) gets them as JSON lines, and turns it on.
    # A client needs neither: it passes trace context whenever a span is current.
    tracing: bool = False
    trace_file: str | None = None
    kafka_options: Mapping[str, str] = field(default_factory=dict, repr=False)
    # "replicated": every state change is confirmed by a Redis replica (WAIT) before its
    # events go out and before a worker commits Kafka offsets past it, so no failover that
    # keeps a replica takes back an outcome a client saw (docs/redis-ha.md); "default": not.
    durability: str = "default"
    source: str = "arguments"

    def __post_init__(self) -> None:
        if self.redis_url:  # "" while a local stack has not started yet
            check_redis_url(self.redis_url, "redis_url")
        if not _QUEUE_NAME.match(self.queue):
            raise ConfigurationError(
                f"queue name {self.queue!r} is not valid: use 1-100 letters, digits, '.', '_' "
                "or '-'"
            )
        if self.partitions < 1:
            raise ConfigurationError(f"partitions must be at least 1, got {self.partitions}")
        if self.replication_factor is not None and self.replication_factor < 1:
            raise ConfigurationError(
                f"replication_factor must be at least 1, got {self.replication_factor}"
            )
        if self.default_timeout is not None and not self.default_timeout > 0:
            raise ConfigurationError(
                f"default_timeout must be a positive number of seconds, got {self.default_timeout}"
            )
        if not 0 < self.result_ttl < float("inf"):
            raise ConfigurationError(
                f"result_ttl must be a positive number of seconds, got {self.result_ttl}"
            )
        if self.trust_code and not self.secret:
            raise ConfigurationError(
                "trust_code needs a shared secret: set YADTQ_SECRET (the same value on clients "
                "and workers), so that only code signed with it runs"
            )
        if self.require_signed and not self.secret:
            raise ConfigurationError(
                "require_signed needs a shared secret: set YADTQ_SECRET (the same value on "
                "clients and workers), or unset YADTQ_REQUIRE_SIGNED"
            )
        if not 0 < self.inline_bytes <= self.max_payload_bytes:
            raise ConfigurationError(
                f"inline_bytes ({self.inline_bytes}) must be positive and at most "
                f"max_payload_bytes ({self.max_payload_bytes})"
            )
        if not self.priority_starvation > 0:
            raise ConfigurationError(
                f"priority_starvation must be a positive number of seconds, got "
                f"{self.priority_starvation}")
        if self.durability not in DURABILITIES:
            raise ConfigurationError(
                f"durability must be one of {', '.join(DURABILITIES)}, got {self.durability!r}")
        if self.lease_seconds <= self.heartbeat_interval:
            raise ConfigurationError(
                f"lease_seconds ({self.lease_seconds}) must be longer than heartbeat_interval "
                f"({self.heartbeat_interval}) so that live workers can renew their leases"
            )

    @property
    def signatures_required(self) -> bool:
        """True if a worker refuses unsigned plain calls (``require_signed``, else a secret)."""
        return bool(self.secret) if self.require_signed is None else self.require_signed

    @property
    def secret_digest(self) -> str | None:
        """A short digest that tells secrets apart without revealing one (heartbeats)."""
        return hashlib.sha256(self.secret.encode()).hexdigest()[:12] if self.secret else None

    @property
    def redis_address(self) -> str:
        """The Redis URL with any password masked, for messages and reprs."""
        return redacted_url(self.redis_url)

    @property
    def tasks_topic(self) -> str:
        """Kafka topic that carries this queue's tasks."""
        return f"yadtq.{self.queue}.tasks"

    def level_topics(self) -> list[str]:
        """The tasks topic of each priority level, highest first (``yadtq.priority``)."""
        return [level.topic(self.tasks_topic) for level in LEVELS]

    @property
    def dead_letter_topic(self) -> str:
        """Kafka topic for messages no worker could accept, with the reason."""
        return f"yadtq.{self.queue}.dlq"

    @property
    def consumer_group(self) -> str:
        """Kafka consumer group shared by every worker of this queue."""
        return f"yadtq.{self.queue}.workers"

    def to_environment(self) -> dict[str, str]:
        """Every setting as the ``YADTQ_*`` variables :func:`resolve_config` reads back.

        A setting that is None maps to "" (read as unset), so a variable in the
        parent's environment cannot leak a different value into a child.
        """
        environment = {
            variable: "" if getattr(self, name) is None else str(getattr(self, name))
            for name, (variable, _) in _ENV_SETTINGS.items()
        }
        for option, variable in _KAFKA_OPTIONS.items():
            environment[variable] = str(self.kafka_options.get(option, ""))
        return environment

    def shared_settings(self) -> dict[str, Any]:
        """The settings a queue's clients and workers must agree on (no addresses).

        The secret is represented by a digest of it, never the secret itself.
        """
        return {
            "key_prefix": self.key_prefix, "result_ttl": self.result_ttl,
            "max_message_bytes": self.max_message_bytes, "lease_seconds": self.lease_seconds,
            "heartbeat_interval": self.heartbeat_interval,
            "default_timeout": self.default_timeout, "retry_backoff": self.retry_backoff,
            "secret_digest": self.secret_digest,
        }

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with the given non-None settings replaced."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def check_redis_url(url: str, name: str) -> None:
    """Refuse a Redis URL redis-py would reject with a bare ValueError, or a malformed
    sentinel URL, naming where it came from (``name``: the argument, option or variable).

    Raises:
        ConfigurationError: ``url`` has no scheme yadtq knows, or is a bad sentinel URL.
    """
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme not in REDIS_SCHEMES:
        shown = redacted_url(url) if scheme else re.sub(r"^.*@", "***@", url)
        raise ConfigurationError(
            f"{name}={shown!r} is not a Redis URL: write redis://host:6379/0, "
            "rediss://host:6380/0 (TLS), unix:///path/to/redis.sock or "
            f"{SENTINEL_FORM} (Redis Sentinel)"
        )
    if is_sentinel_url(url):
        parse_sentinel_url(url, name)


def boolean(text: str) -> bool:
    """A yes/no environment value: 1/true/yes or 0/false/no."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ValueError(text)


_ENV_SETTINGS = {
    "bootstrap": ("YADTQ_BOOTSTRAP", str),
    "redis_url": ("YADTQ_REDIS_URL", str),
    "queue": ("YADTQ_QUEUE", str),
    "key_prefix": ("YADTQ_KEY_PREFIX", str),
    "partitions": ("YADTQ_PARTITIONS", int),
    "replication_factor": ("YADTQ_REPLICATION_FACTOR", int),
    "result_ttl": ("YADTQ_RESULT_TTL", float),
    "max_message_bytes": ("YADTQ_MAX_MESSAGE_BYTES", int),
    "lease_seconds": ("YADTQ_LEASE_SECONDS", float),
    "heartbeat_interval": ("YADTQ_HEARTBEAT_INTERVAL", float),
    "default_timeout": ("YADTQ_DEFAULT_TIMEOUT", float),
    "fetch_wait_ms": ("YADTQ_FETCH_WAIT_MS", int),
    "retry_backoff": ("YADTQ_RETRY_BACKOFF", float),
    "priority_starvation": ("YADTQ_PRIORITY_STARVATION", float),
    "secret": ("YADTQ_SECRET", str),
    "trust_code": ("YADTQ_TRUST_CODE", boolean),
    "require_signed": ("YADTQ_REQUIRE_SIGNED", boolean),
    "inline_bytes": ("YADTQ_INLINE_BYTES", int),
    "max_payload_bytes": ("YADTQ_MAX_PAYLOAD_BYTES", int),
    "tracing": ("YADTQ_TRACING", boolean),
    "trace_file": ("YADTQ_TRACE_FILE", str),
    "durability": ("YADTQ_DURABILITY", str),
}

# Passed through to every kafka-python client as they are (TLS and SASL).
_KAFKA_OPTIONS = {
    "security_protocol": "YADTQ_KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "YADTQ_KAFKA_SASL_MECHANISM",
    "sasl_plain_username": "YADTQ_KAFKA_SASL_USERNAME",
    "sasl_plain_password": "YADTQ_KAFKA_SASL_PASSWORD",
    "ssl_cafile": "YADTQ_KAFKA_SSL_CAFILE",
    "ssl_certfile": "YADTQ_KAFKA_SSL_CERTFILE",
    "ssl_keyfile": "YADTQ_KAFKA_SSL_KEYFILE",
}


def yadtq_home() -> Path:
    """Where yadtq keeps its records: ``$YADTQ_HOME``, else ``~/.yadtq``."""
    return Path(os.environ.get("YADTQ_HOME") or Path.home() / ".yadtq")


def local_stack_record_path() -> Path:
    """Where ``yadtq local up`` records the addresses of the stack it runs."""
    return yadtq_home() / "local-stack.json"


def local_stacks_dir() -> Path:
    """The folder of records of every running local stack, one ``<id>.json`` each."""
    return yadtq_home() / "stacks"


def cache_dir() -> Path:
    """Where yadtq keeps downloads it reuses across runs (Apache Kafka's jars)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "yadtq"


def dashboard_token() -> str | None:
    """``$YADTQ_DASHBOARD_TOKEN``: the token ``yadtq dashboard`` asks of every request."""
    return os.environ.get("YADTQ_DASHBOARD_TOKEN") or None


def java_home() -> str | None:
    """``$JAVA_HOME``, the Java installation that runs Apache Kafka, if set."""
    return os.environ.get("JAVA_HOME") or None


def local_broker() -> str:
    """The broker a local stack runs when none is named: ``$YADTQ_LOCAL_BROKER``, else Tansu."""
    return os.environ.get("YADTQ_LOCAL_BROKER") or "tansu"


def metrics_port() -> str | None:
    """The port a worker serves its metrics on, unless told: ``$YADTQ_METRICS_PORT``
    (unset or empty: none)."""
    return os.environ.get("YADTQ_METRICS_PORT") or None


def otel_traces_exporters() -> list[str]:
    """The span exporters ``$OTEL_TRACES_EXPORTER`` names (OpenTelemetry's own variable),
    e.g. ``["otlp"]``; [] when unset."""
    names = os.environ.get("OTEL_TRACES_EXPORTER") or ""
    return [name.strip() for name in names.split(",") if name.strip()]


def binary_override(variable: str) -> str | None:
    """The server binary an override variable (``YADTQ_BROKER_BIN``, ...) names, if set."""
    return os.environ.get(variable) or None


def read_stack_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path`` if it is one (a JSON object naming its owner's pid), else None."""
    try:
        record = json.loads(path.read_text())
        int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record


def owner_alive(record: dict[str, Any]) -> bool:
    """True while the process that owns a recorded stack runs."""
    try:
        os.kill(int(record["pid"]), 0)
    except OSError:  # gone, or another user's process that took the pid
        return False
    return True


def read_local_stack_record() -> dict[str, Any] | None:
    """The running local stack's addresses, or None if there is none alive."""
    record = read_stack_record(local_stack_record_path())
    return record if record is not None and owner_alive(record) else None


def local_stack_records() -> list[dict[str, Any]]:
    """The records of every local stack whose owner runs, ``yadtq local up``'s first."""
    pointer = read_local_stack_record()
    records = [pointer] if pointer is not None else []
    for path in sorted(local_stacks_dir().glob("*.json")):
        record = read_stack_record(path)
        if record is None or not owner_alive(record):
            continue
        if pointer is None or record.get("id") != pointer.get("id"):
            records.append(record)
    return records


def record_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The client settings a stack's record holds (its ``environment``, else its secret)."""
    settings = _parse_environment(record.get("environment") or {})
    if record.get("secret"):
        settings.setdefault("secret", record["secret"])
    return settings


def _from_environment() -> dict[str, Any]:
    settings = _parse_environment(os.environ)
    kafka_options = {
        option: os.environ[variable]
        for option, variable in _KAFKA_OPTIONS.items() if os.environ.get(variable)
    }
    if kafka_options:
        settings["kafka_options"] = kafka_options
    return settings


def _parse_environment(environment: Mapping[str, str]) -> dict[str, Any]:
    """The settings ``YADTQ_*`` variables in ``environment`` name (empty ones are unset)."""
    settings: dict[str, Any] = {}
    for name, (variable, convert) in _ENV_SETTINGS.items():
        raw = environment.get(variable)
        if raw in (None, ""):
            continue
        try:
            settings[name] = convert(raw)
        except ValueError:
            raise ConfigurationError(
                f"{variable}={raw!r} is not a valid {convert.__name__}; fix or unset it"
            ) from None
    return settings


def resolve_config(
    bootstrap: str | None = None,
    redis_url: str | None = None,
    queue: str | None = None,
    *,
    audience: str = "python",
    **settings: Any,
) -> Config:
    """Build a :class:`Config` from arguments, then environment, then a local stack.

    ``audience`` ("python", "cli" or "worker") words the errors for who gives the
    addresses: ``connect()`` arguments, or the ``yadtq`` or ``worker_node`` options.

    Raises:
        ConfigurationError: no broker or Redis address could be found, or a
            setting is invalid.
    """
    known = {f.name for f in fields(Config)} - {"source"}
    unknown = set(settings) - known
    if unknown:
        raise ConfigurationError(
            f"unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )
    names = _ADDRESS_NAMES[audience]
    explicit = {"bootstrap": bootstrap, "redis_url": redis_url, "queue": queue, **settings}
    explicit = {k: v for k, v in explicit.items() if v is not None}
    merged = {**_from_environment(), **explicit}
    if "redis_url" in merged:
        check_redis_url(merged["redis_url"], names["redis_url"] if redis_url is not None
                        else _ENV_SETTINGS["redis_url"][0])
    source = "arguments" if {"bootstrap", "redis_url"} & explicit.keys() else "environment"
    if "bootstrap" not in merged or "redis_url" not in merged:
        record = read_local_stack_record()
        if record is None:
            missing = [names[n] for n in ("bootstrap", "redis_url") if n not in merged]
            raise ConfigurationError(f"no yadtq servers configured ({' and '.join(missing)} "
                                     f"not set): {_NO_SERVERS_HELP[audience]}")
        merged.setdefault("bootstrap", record["bootstrap"])
        merged.setdefault("redis_url", record["redis_url"])
        source = f"local stack ({local_stack_record_path()})"
    else:
        record = _stack_at(merged["bootstrap"], merged["redis_url"])
    if record is not None:  # its workers expect its secret, queue, key prefix ...
        merged = {**record_settings(record), **merged}
    return Config(**merged, source=source)


def _stack_at(bootstrap: str, redis_url: str) -> dict[str, Any] | None:
    """The record of the running local stack at these addresses, if there is one."""
    for record in local_stack_records():
        if record.get("owns_servers") is False and not record.get("pointer"):
            continue  # workers on servers another record speaks for
        if (record.get("bootstrap"), record.get("redis_url")) == (bootstrap, redis_url):
            return record
    return None
