"""The local stack's servers as one object (top layer, in ``local``): :class:`LocalStack`.

It chooses free loopback ports, starts the broker(s) and Redis as child processes,
waits until each answers, and stops them all on exit, also when starting fails
halfway and at interpreter exit if the owner forgot to. Its :class:`Supervisor`
records it for ``yadtq local status``/``down`` and has its watchdog stop the
servers and remove the temporary data dir if the owner dies without stopping it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

from yadtq.config import local_broker, redacted_url
from yadtq.errors import BackendUnavailable, BrokerUnavailable, ConfigurationError, ConnectionFailed
from yadtq.local import apache_kafka
from yadtq.local.apache_kafka import KRaftNode
from yadtq.local.processes import (
    LOOPBACK,
    ChildProcess,
    ExitedDuringStartup,
    distinct_free_ports,
    free_port,
    spawn,
    stop_all,
    wait_until_answers,
)
from yadtq.local.redis_ha import ReplicatedRedis
from yadtq.local.servers import (
    broker_answers,
    cluster_has_brokers,
    redis_answers,
    redis_command,
    resolve_broker_binary,
    resolve_redis_binary,
    tansu_command,
)
from yadtq.local.supervision import Supervisor

TANSU, APACHE_KAFKA = "tansu", "apache-kafka"
BROKERS = (TANSU, APACHE_KAFKA)
# A stack's Kafka nodes stop together, so the last ones lose their quorum and would wait
# for it; their data is the stack's own, so they get this long and are then killed.
KAFKA_STOP_GRACE = 3.0


def _cleanup(children: list[ChildProcess], owned: dict[str, Path], timeout: float,
             supervisor: Supervisor) -> None:
    """Stop what is left, remove a temporary data dir and the record (also run at
    interpreter exit)."""
    stop_all(children, timeout)
    children.clear()
    if "dir" in owned:
        shutil.rmtree(owned.pop("dir"), ignore_errors=True)
    supervisor.close()


class LocalStack:
    """A Kafka-protocol broker and a Redis-protocol server on free loopback ports.

    ``broker`` is ``"tansu"`` (the default, pip only, topics kept in memory) or
    ``"apache-kafka"`` (Apache Kafka itself in KRaft mode, from Maven Central; see
    :mod:`yadtq.local.apache_kafka`), of ``nodes`` brokers (more than one needs Apache
    Kafka; three give replication factor 3 with ``min.insync.replicas`` 2). With no
    ``broker``, ``$YADTQ_LOCAL_BROKER`` chooses. Redis writes an append-only file to
    the data dir, so :meth:`restart_redis` keeps its data. With ``redis_replicas`` N
    Redis is a primary, N replicas and three sentinels (:mod:`yadtq.local.redis_ha`),
    :attr:`redis_url` a ``redis+sentinel://`` URL, and :meth:`kill_redis_primary`,
    :meth:`start_redis_node` and :meth:`wait_for_failover` make failovers. ``data_dir``
    defaults to a temporary directory that is removed on stop; a given one is kept (logs
    stay in it as ``broker.log`` or ``kafka-<n>.log``, and ``redis.log`` or
    ``redis-<n>.log`` and ``sentinel-<n>.log``).

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
        redis_replicas: int = 0,
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
        if redis_replicas < 0:
            raise ConfigurationError(f"redis_replicas must be 0 or more, got {redis_replicas}")
        self.nodes = nodes
        self.redis_replicas = redis_replicas
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
        self._replicated: ReplicatedRedis | None = None
        self._children: list[ChildProcess] = []  # shared with the exit-time finalizer
        self._owned_dir: dict[str, Path] = {}  # a temporary data dir, removed on stop
        self._finalizer: weakref.finalize | None = None
        self._supervisor: Supervisor | None = None

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return bool(self._broker_ports) and (self._redis or self._replicated) is not None

    def keep_data_dir(self) -> Path | None:
        """Keep a temporary data dir (its logs) when the stack stops; returns it."""
        if self._owned_dir.pop("dir", None) is not None and self._supervisor is not None:
            self._supervisor.keep(self.data_dir)
        return self.data_dir

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap addresses, ``127.0.0.1:PORT[,127.0.0.1:PORT...]``."""
        self._require_running()
        return ",".join(f"{LOOPBACK}:{port}" for port in self._broker_ports.values())

    @property
    def redis_url(self) -> str:
        """Redis URL, ``redis://[:password@]127.0.0.1:PORT/0``, or with ``redis_replicas``
        ``redis+sentinel://[:password@]127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/yadtq/0``."""
        self._require_running()
        if self._replicated is not None:
            return self._replicated.url
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
    def supervisor(self) -> Supervisor:
        """The stack's record and watchdog; a :class:`LocalCluster` of it records its workers
        there too."""
        if self._supervisor is None:
            raise RuntimeError("the local stack is not started; call start() or use `with`")
        return self._supervisor

    @property
    def processes(self) -> list[ChildProcess]:
        """The server processes started and not yet stopped (brokers, ``redis`` or
        ``redis-<n>`` and ``sentinel-<n>``)."""
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
        self._supervisor = Supervisor(broker=self.broker, data_dir=str(self.data_dir),
                                      owns_servers=True)
        if "dir" in self._owned_dir:
            self._supervisor.remove_on_exit(self.data_dir)
        self._finalizer = weakref.finalize(
            self, _cleanup, self._children, self._owned_dir, self.stop_timeout, self._supervisor
        )
        try:
            if tansu is not None:
                child, port = self._launch(
                    "broker", functools.partial(tansu_command, tansu),
                    broker_answers, BrokerUnavailable, "embedded Kafka broker",
                )
                self._brokers["broker"], self._broker_ports["broker"] = child, port
            else:
                self._start_kafka_cluster()
            if self.redis_replicas:
                self._start_replicated_redis()
            else:
                self._launch_redis(port=None)
            self._supervisor.update(bootstrap=self.bootstrap, redis_url=self.redis_url)
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
        self._replicated = None

    def restart_redis(self) -> None:
        """Stop Redis and start it again on the same port and data dir.

        Clean shutdown flushes the append-only file, which the new server loads, so
        this simulates a Redis outage without losing data.
        """
        self._require_running()
        if self._redis is None:
            raise RuntimeError("restart_redis() restarts the one Redis server; with "
                               "redis_replicas use kill_redis_primary() and start_redis_node()")
        stop_all([self._redis], self.stop_timeout)
        self._forget(self._redis)
        self._redis = None
        self._launch_redis(port=self._redis_port)

    def redis_primary(self) -> str:
        """The name (``redis-<n>``) of the node the sentinels name as the primary."""
        return self._replicas().primary()

    def redis_port(self, name: str) -> int:
        """The port Redis node or sentinel ``name`` listens on (kept across a restart)."""
        return self._replicas().ports[name]

    def kill_redis_primary(self, sig: int = signal.SIGKILL) -> str:
        """Send ``sig`` (one that ends it: SIGKILL, SIGTERM) to the current Redis primary and
        wait until it exits; returns its name. To pause it, use :meth:`signal_redis`."""
        replicated = self._replicas()
        name = replicated.primary()
        replicated.kill(name, sig)
        return name

    def signal_redis(self, name: str, sig: int) -> None:
        """Send ``sig`` (SIGSTOP, SIGCONT, ...) to Redis node or sentinel ``name``."""
        self._replicas().signal(name, sig)

    def start_redis_node(self, name: str, as_replica: bool = True) -> None:
        """Start a killed Redis node again on its port and data dir; returns once it is an
        online replica the sentinels know. ``as_replica=False`` starts it with its first
        options, so the sentinels must convert an old primary (see
        :meth:`ReplicatedRedis.start_node`)."""
        self._replicas().start_node(name, as_replica)

    def is_redundant(self, name: str) -> bool:
        """True for a server the stack keeps serving without: a Redis node or sentinel of a
        replicated Redis (a failover replaces a primary)."""
        return self._replicated is not None and name in self._replicated.ports

    def wait_for_failover(self, old_primary: str, timeout: float = 30.0) -> str:
        """Wait until the sentinels name a primary other than ``old_primary`` and it accepts
        writes; returns its name.

        Raises:
            TimeoutError: no new primary within ``timeout`` seconds.
        """
        return self._replicas().wait_for_failover(old_primary, timeout)

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
        self._forget(child)

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
            ports = distinct_free_ports(2 * self.nodes)
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
                    functools.partial(cluster_has_brokers, nodes[0].port, len(nodes)),
                    self.startup_timeout, f"Apache Kafka cluster of {len(nodes)} nodes",
                )
                return
            except (ExitedDuringStartup, BrokerUnavailable):
                stop_all(children, self.stop_timeout)
                for child in children:
                    self._forget(child)
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
                  self.data_dir / f"kafka-{node.node_id}.log", group=self.supervisor.group)
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
        child = self._spawn(name, apache_kafka.server_command(self._classpath, node),
                            stop_grace=KAFKA_STOP_GRACE)
        self._brokers[name], self._broker_ports[name] = child, node.port
        self._kafka_nodes[name] = node
        return child

    def _wait_for_broker(self, child: ChildProcess, port: int) -> None:
        try:
            wait_until_answers(child, functools.partial(broker_answers, port),
                               self.startup_timeout, f"{child.name} at {LOOPBACK}:{port}")
        except TimeoutError as exc:
            raise BrokerUnavailable(str(exc)) from None

    def _start_replicated_redis(self) -> None:
        assert self._redis_binary is not None and self.data_dir is not None

        def launch(name: str, command_for: Callable[[int], list[str]],
                   answers: Callable[[int], bool], port: int | None) -> tuple[ChildProcess, int]:
            return self._launch(name, command_for, answers, BackendUnavailable,
                                f"embedded Redis {name}", port=port)

        self._replicated = ReplicatedRedis(
            self._redis_binary, self.data_dir, self.redis_replicas, self.redis_password,
            launch, self._forget, self.startup_timeout, self.stop_timeout)
        try:
            self._replicated.start()
        except TimeoutError as exc:
            raise BackendUnavailable(str(exc)) from None

    def _replicas(self) -> ReplicatedRedis:
        self._require_running()
        if self._replicated is None:
            raise RuntimeError("this stack runs one Redis server; start it with "
                               "redis_replicas=2 for a primary, replicas and sentinels")
        return self._replicated

    def _launch_redis(self, port: int | None) -> None:
        binary, data_dir, password = self._redis_binary, self.data_dir, self.redis_password
        assert binary is not None and data_dir is not None
        self._redis, self._redis_port = self._launch(
            "redis", lambda p: redis_command(binary, p, data_dir, password),
            functools.partial(redis_answers, password=password), BackendUnavailable,
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
            child = self._spawn(name, command_for(chosen))
            try:
                wait_until_answers(
                    child, functools.partial(answers, chosen), self.startup_timeout,
                    f"{what} at {LOOPBACK}:{chosen}",
                )
                return child, chosen
            except ExitedDuringStartup as exc:
                self._forget(child)
                if attempt == attempts:
                    raise error(str(exc)) from None
            except TimeoutError as exc:
                raise error(str(exc)) from None
        raise AssertionError("unreachable")

    def _spawn(self, name: str, command: list[str],
               stop_grace: float | None = None) -> ChildProcess:
        """Start a server in the stack's process group, logging to ``<name>.log``; record it."""
        assert self.data_dir is not None
        child = spawn(name, command, self.data_dir / f"{name}.log", group=self.supervisor.group,
                      stop_grace=stop_grace)
        self._children.append(child)
        self.supervisor.add_child(child)
        return child

    def _forget(self, child: ChildProcess) -> None:
        """Drop a server that was stopped or failed from the stack and its record."""
        self._children.remove(child)
        self.supervisor.remove_child(child)

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
