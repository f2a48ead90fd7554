"""docker-compose.yml, the Dockerfile and the systemd unit, checked as data.

No Docker engine (nor systemd) runs here, so nothing is started.

The compose file is parsed with a YAML parser and its wiring is checked against
yadtq itself: the environment names come from ``yadtq.config._ENV_SETTINGS``,
the worker command from ``worker_node``'s own argument parser, the bootstrap
address from Kafka's advertised listeners.
"""

from __future__ import annotations

import base64
import configparser
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from worker_node.__main__ import parse_args
from yadtq.config import _ENV_SETTINGS, _KAFKA_OPTIONS
from yadtq.local import apache_kafka

ROOT = Path(__file__).resolve().parent.parent
VERSION_TAG = re.compile(r"^\d+(\.\d+){1,2}([-.][A-Za-z0-9.]+)?$")  # 3.9.1, 7.4.2-alpine
ENV_NAME = {name: variable for name, (variable, _) in _ENV_SETTINGS.items()}
KNOWN_VARIABLES = set(ENV_NAME.values()) | set(_KAFKA_OPTIONS.values())
YADTQ_SERVICES = ("worker", "jupyter")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    path = ROOT / "Dockerfile"
    assert path.is_file(), "docker-compose.yml builds from a Dockerfile at the repository root"
    # Continuation lines joined, comments dropped: one instruction per line.
    text = re.sub(r"\\\n", " ", path.read_text())
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _stages(dockerfile: str) -> dict[str, str]:
    """Each ``FROM ... AS name`` stage's instructions, by name (the last also as "")."""
    stages: dict[str, str] = {}
    parts = re.split(r"^FROM\s+", dockerfile, flags=re.MULTILINE | re.IGNORECASE)[1:]
    for part in parts:
        header, _, body = part.partition("\n")
        match = re.search(r"\bAS\s+(\S+)", header, re.IGNORECASE)
        stages[match.group(1) if match else header.split()[0]] = f"FROM {header}\n{body}"
    if parts:
        stages[""] = stages[list(stages)[-1]]
    return stages


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` as {NAME: (host, port)}."""
    found = {}
    for entry in value.split(","):
        name, _, address = entry.strip().partition("://")
        host, _, port = address.rpartition(":")
        found[name] = (host, int(port))
    return found


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_compose_has_kafka_redis_three_workers_and_jupyter(services):
    assert {"kafka", "redis", "worker", "jupyter"} <= set(services)
    assert not any("zookeeper" in name for name in services), "KRaft needs no ZooKeeper"
    assert services["worker"]["deploy"]["replicas"] == 3


def test_every_image_is_pinned_to_a_version(services):
    for name, service in services.items():
        if "image" not in service:
            assert "build" in service, f"service {name} has neither image nor build"
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and VERSION_TAG.match(tag), f"{name}: {image!r} is not pinned"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["redis"]["image"].startswith("redis:")


def test_kafka_runs_in_kraft_mode_as_one_combined_node(services):
    env = services["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node = str(env["KAFKA_NODE_ID"])
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1 and voters[0].startswith(f"{node}@kafka:")
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    listeners = _listeners(env["KAFKA_LISTENERS"])
    assert listeners[controller][1] == int(voters[0].rpartition(":")[2])
    protocols = dict(entry.split(":") for entry in
                     env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols), "every listener needs a security protocol"
    # The cluster id is what `kafka-storage.sh random-uuid` prints: 16 bytes, base64url.
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, cluster_id
    for setting in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert int(env[setting]) == 1, f"{setting} must be 1 on a single node"


def test_compose_runs_the_apache_kafka_the_suite_runs_with_auto_creation_off(services):
    tested = apache_kafka.KAFKA_VERSION
    pom = (ROOT / "yadtq" / "local" / "java" / "pom.xml").read_text()

    assert services["kafka"]["image"] == f"apache/kafka:{tested}"
    assert f"<kafka.version>{tested}</kafka.version>" in pom
    assert str(services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]) == "false"


def test_redis_persists_with_append_only_file(services):
    command = _command(services["redis"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(str(volume).endswith(":/data") for volume in services["redis"]["volumes"])


def test_kafka_and_redis_have_health_checks_that_workers_wait_for(services):
    for name in ("kafka", "redis"):
        check = services[name].get("healthcheck") or {}
        assert check.get("test"), f"{name} has no health check"
    for name in YADTQ_SERVICES:
        depends = services[name]["depends_on"]
        for server in ("kafka", "redis"):
            assert depends[server]["condition"] == "service_healthy", (name, server)


def test_worker_and_jupyter_environment_uses_yadtq_configuration_names(services):
    for name in YADTQ_SERVICES:
        env = services[name]["environment"]
        assert isinstance(env, dict), f"{name}: write environment as a mapping"
        yadtq_names = {k for k in env if k.startswith("YADTQ_")}
        assert yadtq_names <= KNOWN_VARIABLES, f"{name}: unknown {yadtq_names - KNOWN_VARIABLES}"
        assert {ENV_NAME["bootstrap"], ENV_NAME["redis_url"]} <= yadtq_names, name
    partitions = int(services["worker"]["environment"].get(ENV_NAME["partitions"], 12))
    assert partitions >= services["worker"]["deploy"]["replicas"], \
        "fewer partitions than worker replicas leaves workers idle"


def test_bootstrap_is_kafkas_advertised_listener_and_redis_url_the_redis_service(services):
    kafka = services["kafka"]["environment"]
    advertised = _listeners(kafka["KAFKA_ADVERTISED_LISTENERS"])
    bound = _listeners(kafka["KAFKA_LISTENERS"])
    redis_command = _command(services["redis"])
    redis_port = int(redis_command[redis_command.index("--port") + 1]) \
        if "--port" in redis_command else 6379
    for name in YADTQ_SERVICES:
        env = services[name]["environment"]
        host, _, port = env[ENV_NAME["bootstrap"]].partition(":")
        matching = [listener for listener, address in advertised.items()
                    if address == (host, int(port))]
        assert host == "kafka" and matching, (name, env[ENV_NAME["bootstrap"]], advertised)
        assert bound[matching[0]][1] == int(port), "advertised on a port Kafka does not bind"
        url = urlsplit(env[ENV_NAME["redis_url"]])
        assert (url.scheme, url.hostname, url.port) == ("redis", "redis", redis_port), name


def test_worker_service_runs_worker_node_with_options_it_accepts(services, dockerfile):
    worker = services["worker"]
    assert "build" in worker
    command = _command(worker) or _stage_command(dockerfile, worker["build"].get("target", ""))
    assert command[:3] == ["python", "-m", "worker_node"], command
    parse_args(command[3:])  # exits (fails the test) on an option the worker does not know
    grace = parse_args([]).shutdown_grace
    assert _seconds(worker["stop_grace_period"]) > grace, \
        f"docker stop must wait longer than the worker's {grace:g} s shutdown grace"


def test_jupyter_serves_the_notebooks_with_a_token_from_the_environment(services, dockerfile):
    jupyter = services["jupyter"]
    command = _command(jupyter) or _stage_command(dockerfile, jupyter["build"].get("target", ""))
    assert command[:2] == ["jupyter", "lab"], command
    assert any(str(v).startswith("./notebooks:") for v in jupyter.get("volumes", [])) \
        or "notebooks" in _stages(dockerfile)[jupyter["build"]["target"]]
    assert str(jupyter["environment"]["JUPYTER_TOKEN"]).startswith("${JUPYTER_TOKEN")


def test_dockerfile_installs_the_package_on_python_311_slim(dockerfile, services):
    stages = _stages(dockerfile)
    assert dockerfile.lstrip().startswith("FROM python:3.11-slim")
    assert re.search(r"^RUN\s+pip install[^\n]*\s\.(\s|$)", dockerfile, re.MULTILINE), \
        "the Dockerfile must pip install the package from the build context"
    for directory in ("yadtq", "worker_node"):
        assert re.search(rf"^COPY\s.*\b{directory}\b", dockerfile, re.MULTILINE), directory
    for name in YADTQ_SERVICES:
        target = services[name]["build"].get("target", "")
        assert target in stages, f"{name} builds target {target!r}, not in the Dockerfile"
    assert _stage_command(dockerfile, "") == ["python", "-m", "worker_node"], \
        "a plain `docker build .` must give the worker image"


def test_systemd_unit_runs_worker_node_and_outlasts_its_shutdown_grace():
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string((ROOT / "worker_node" / "yadtq-worker.service").read_text())
    service = unit["Service"]
    assert service["EnvironmentFile"] == "/etc/yadtq/worker.env" and service["User"]
    executable, module_flag, module, *options = shlex.split(service["ExecStart"])
    assert executable.endswith("python") and (module_flag, module) == ("-m", "worker_node")
    parse_args(options)  # exits (fails the test) on an option the worker does not know
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed", "SIGTERM must reach the worker, not its task slots"
    assert _seconds(service["TimeoutStopSec"]) > parse_args([]).shutdown_grace
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def _stage_command(dockerfile: str, target: str) -> list[str]:
    """The CMD of a stage, in exec form."""
    stage = _stages(dockerfile)[target]
    commands = re.findall(r"^CMD\s+(\[.*\])\s*$", stage, re.MULTILINE)
    assert commands, f"stage {target!r} has no exec-form CMD"
    return yaml.safe_load(commands[-1])


def _seconds(duration: str | int) -> float:
    """A compose duration (``45s``, ``1m30s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    return sum(float(n) * units[u] for n, u in parts) if parts else float(duration)
