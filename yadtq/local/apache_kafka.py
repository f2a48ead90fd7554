"""Apache Kafka for the local stack (top layer, in ``local``): its jars and its KRaft nodes.

Apache Kafka is the broker users run in production; the local stack can run it
instead of Tansu (``LocalStack(broker="apache-kafka")``, ``yadtq local up --broker
apache-kafka``). Its jars are not on PyPI: :func:`runtime_classpath` asks Maven to
resolve the pinned version in ``java/pom.xml`` with its runtime
dependencies, once, into ``~/.cache/yadtq/apache-kafka/<version>/libs``, and every
later stack reuses them. Java 17 or newer runs them.

Each node is one JVM that is both broker and KRaft controller (no ZooKeeper); a
cluster of several nodes names every controller as a static voter. This module
only writes a node's ``server.properties`` and says how to format and start it;
:class:`yadtq.local.LocalStack` owns the processes.
"""

from __future__ import annotations

import base64
import fcntl
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from yadtq.config import cache_dir, java_home
from yadtq.errors import ConfigurationError

KAFKA_VERSION = "4.1.1"  # keep in step with pom.xml and docker-compose.yml
# As kafka-server-start.sh runs the broker, with a smaller heap for a laptop or CI.
JVM_OPTIONS = (
    "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
_HERE = Path(__file__).with_name("java")  # pom.xml and log4j2.properties
_RESOLVE_TIMEOUT = 900.0  # seconds; the first resolution downloads about 40 MB


@dataclass(frozen=True)
class KRaftNode:
    """One Apache Kafka process of a local cluster: broker and controller in one JVM."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path

    @property
    def address(self) -> str:
        """The broker's ``host:port``, for clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def properties_path(self) -> Path:
        """Where this node's ``server.properties`` is written."""
        return self.data_dir / "server.properties"


def _require(program: str, what: str) -> str:
    """The path of ``program``, or a ConfigurationError that says how to get it."""
    home = java_home()
    if program == "java" and home:
        candidate = Path(home) / "bin" / "java"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(program)
    if found is None:
        raise ConfigurationError(
            f"the Apache Kafka broker needs `{program}` ({what}), which is not on PATH; "
            "install Java 17+ and Maven (Debian: `apt-get install openjdk-17-jre-headless "
            "maven`), or use the embedded Tansu broker (broker='tansu', the default)"
        )
    return found


def java_binary() -> str:
    """The ``java`` that runs the broker: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    return _require("java", "Java 17 or newer runs the broker")


def runtime_classpath() -> str:
    """The classpath of the pinned Apache Kafka, resolving its jars with Maven the first time.

    Concurrent callers (two stacks starting at once) wait for one resolution.

    Raises:
        ConfigurationError: ``java`` or ``mvn`` is missing, or Maven failed (its
            output is quoted).
    """
    java_binary()
    libs = cache_dir() / "apache-kafka" / KAFKA_VERSION / "libs"
    if not (libs / ".complete").exists():
        libs.parent.mkdir(parents=True, exist_ok=True)
        with open(libs.parent / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (libs / ".complete").exists():
                _resolve_jars(libs)
    return str(libs / "*")  # java expands the wildcard to every jar in the folder


def _resolve_jars(libs: Path) -> None:
    maven = _require("mvn", "Maven resolves the broker's jars from Maven Central")
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    try:
        done = subprocess.run(
            [maven, "-B", "-q", "-f", str(_HERE / "pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
            capture_output=True, text=True, timeout=_RESOLVE_TIMEOUT, cwd=libs.parent,
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigurationError(
            f"Maven did not resolve Apache Kafka {KAFKA_VERSION} within "
            f"{_RESOLVE_TIMEOUT:g} s; check that Maven Central is reachable"
        ) from None
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        output = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise ConfigurationError(
            f"Maven could not resolve Apache Kafka {KAFKA_VERSION} (exit {done.returncode}); "
            f"check that Maven Central is reachable. Maven said:\n{output}"
        )
    (staging / ".complete").touch()
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)


def new_cluster_id() -> str:
    """A random KRaft cluster id, as ``kafka-storage random-uuid`` prints one."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):  # Kafka's own rule: an id must not look like an option
            return text


def write_properties(node: KRaftNode, cluster: Sequence[KRaftNode]) -> Path:
    """Write ``node``'s ``server.properties`` for a cluster of ``cluster`` (static voters).

    Internal topics get replication min(3, nodes); with three nodes or more,
    ``min.insync.replicas`` is 2, so one broker may fail without losing a write.
    Topic auto-creation is off, as on most production clusters: yadtq creates its own.
    """
    replicas = min(3, len(cluster))
    in_sync = 2 if replicas >= 3 else 1
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in cluster)
    settings = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:"
                     f"{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": node.data_dir / "log",
        "auto.create.topics.enable": "false",
        "min.insync.replicas": in_sync,
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": in_sync,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": in_sync,
        "group.initial.rebalance.delay.ms": 0,
        # A dead node is fenced, and its partitions get new leaders, after 3 s (not 9 s).
        "broker.session.timeout.ms": 3000,
        "broker.heartbeat.interval.ms": 500,
    }
    node.data_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{key}={value}\n" for key, value in settings.items())
    node.properties_path.write_text(text)
    return node.properties_path


def _java_command(classpath: str, main: str, *arguments: str) -> list[str]:
    return [
        java_binary(), *JVM_OPTIONS,
        f"-Dlog4j2.configurationFile={_HERE / 'log4j2.properties'}",
        "-cp", classpath, main, *arguments,
    ]


def format_command(classpath: str, node: KRaftNode, cluster_id: str) -> list[str]:
    """The command that formats ``node``'s log dir for ``cluster_id`` (run once, before start)."""
    return _java_command(
        classpath, "kafka.tools.StorageTool", "format", "--cluster-id", cluster_id,
        "--config", str(node.properties_path), "--ignore-formatted",
    )


def server_command(classpath: str, node: KRaftNode) -> list[str]:
    """The command that runs ``node`` until it is sent SIGTERM."""
    return _java_command(classpath, "kafka.Kafka", str(node.properties_path))
