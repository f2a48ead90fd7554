"""Several hosts on one machine: each node its own network stack and hostname.

The test builds a private network of its own hosts out of Linux network
namespaces: ``hub`` holds a bridge with the address 10.213.7.1/24 and runs the
broker and Redis on it (not on loopback); ``node1``-``node3`` (.11-.13) each run
one ``python -m worker_node`` inside their own UTS namespace, so each reports its
own hostname; ``client`` (.100) runs tests/multihost_client.py, the yadtq client.
Every host hangs off the hub's bridge by a veth pair, so taking the hub's end of
a node's pair down cuts that node off, as unplugging its cable would.

Traffic stays inside these namespaces: nothing is routed to or from the
machine's own network, and the subnet exists only inside them (so parallel
runs, each with its own namespaces, cannot clash). Every process is started in
its own process group and killed with it; every namespace is deleted, and with
them the bridge and veths, also when the test fails.

Needs root, ``ip`` (iproute2) and ``unshare`` (util-linux). Elsewhere it skips
and says why, unless ``YADTQ_REQUIRE_NETNS=1`` (set by .ci/run), where it fails.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from yadtq.local import resolve_broker_binary, resolve_redis_binary

ROOT = Path(__file__).resolve().parent.parent
SUBNET_PREFIX = 24
HUB_ADDRESS = "10.213.7.1"
NODE_ADDRESSES = {"node1": "10.213.7.11", "node2": "10.213.7.12", "node3": "10.213.7.13"}
CLIENT_ADDRESS = "10.213.7.100"
KAFKA_PORT = 9092
REDIS_PORT = 6379
SECOND_BATCH_SECONDS = 0.3

pytestmark = pytest.mark.slow


def _why_namespaces_cannot_be_made() -> str | None:
    if os.geteuid() != 0:
        return "creating network and UTS namespaces needs root (CI runs as root)"
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH; install {package}"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("YADTQ_REQUIRE_NETNS") == "1":
        pytest.fail(f"YADTQ_REQUIRE_NETNS=1 but {reason}")
    pytest.skip(reason)


def _run(*command: str) -> None:
    """Run a short setup command; fail with its output if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): "
                           f"{done.stderr.strip() or done.stdout.strip()}")


@dataclass
class Host:
    """One process in one namespace, in its own process group, with a log file."""

    name: str
    host: str
    popen: subprocess.Popen[Any]
    log_path: Path

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _stop_together(processes: Sequence[Host], timeout: float) -> None:
    """SIGTERM each process group, wait ``timeout`` for all, then SIGKILL what is left."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(max(0.0, deadline - time.monotonic()))
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGKILL)  # also task slots left in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(10)


@dataclass
class Network:
    """The test's namespaces, named with a random suffix, and the processes in them."""

    suffix: str
    workdir: Path
    namespaces: list[str] = field(default_factory=list)
    processes: list[Host] = field(default_factory=list)
    cut_off: set[str] = field(default_factory=set)

    def ns(self, host: str) -> str:
        return f"yadtq-{self.suffix}-{host}"

    def hostname(self, host: str) -> str:
        return f"{host}-{self.suffix}"

    def build(self) -> None:
        """hub with a bridge; node1-3 and client each joined to it by a veth pair."""
        for host in ("hub", *NODE_ADDRESSES, "client"):
            _run("ip", "netns", "add", self.ns(host))
            self.namespaces.append(self.ns(host))
            _run("ip", "-n", self.ns(host), "link", "set", "lo", "up")
        hub = self.ns("hub")
        _run("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", hub, "addr", "add", f"{HUB_ADDRESS}/{SUBNET_PREFIX}", "dev", "br0")
        _run("ip", "-n", hub, "link", "set", "br0", "up")
        for host, address in {**NODE_ADDRESSES, "client": CLIENT_ADDRESS}.items():
            # The hub's end is named after the host; the host's end is its eth0.
            _run("ip", "-n", hub, "link", "add", host, "type", "veth",
                 "peer", "name", "eth0", "netns", self.ns(host))
            _run("ip", "-n", hub, "link", "set", host, "master", "br0")
            _run("ip", "-n", hub, "link", "set", host, "up")
            _run("ip", "-n", self.ns(host), "addr", "add", f"{address}/{SUBNET_PREFIX}",
                 "dev", "eth0")
            _run("ip", "-n", self.ns(host), "link", "set", "eth0", "up")

    def cut(self, host: str) -> None:
        """Take the hub's end of the host's cable down: the host is off the network."""
        _run("ip", "-n", self.ns("hub"), "link", "set", host, "down")
        self.cut_off.add(host)

    def start(
        self, host: str, name: str, command: Sequence[str], *, hostname: str | None = None,
        pipes: bool = False,
    ) -> Host:
        """Run ``command`` in ``host``'s namespace (and its own UTS one if ``hostname``)."""
        prefix = ["ip", "netns", "exec", self.ns(host)]
        if hostname is not None:
            prefix += ["unshare", "--uts", "sh", "-c", 'hostname "$1" && shift && exec "$@"',
                       "sh", hostname]
        env = {k: v for k, v in os.environ.items() if not k.startswith("YADTQ_")}
        env["PYTHONUNBUFFERED"] = "1"
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                [*prefix, *command], cwd=ROOT, env=env, start_new_session=True,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log, stderr=log,
                text=pipes or None,
            )
        started = Host(name, host, popen, log_path)
        self.processes.append(started)
        return started

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} (exit {p.popen.poll()}):\n{p.log_tail()}"
                         for p in self.processes)

    def tear_down(self) -> None:
        """Stop every process (workers and client before servers), then every namespace."""
        # A cut-off worker cannot hand its tasks back or leave the group: no grace.
        _stop_together([p for p in self.processes if p.host in self.cut_off], timeout=0)
        _stop_together([p for p in self.processes if p.host != "hub"], timeout=5)
        # Tansu waits ~5 s for connected clients before it exits; its data is in memory only.
        _stop_together([p for p in self.processes if p.host == "hub"], timeout=1)
        self.processes.clear()
        for namespace in reversed(self.namespaces):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _run("ip", "netns", "del", namespace)
        self.namespaces.clear()


class ClientHost:
    """The yadtq client on the ``client`` host, driven one JSON request at a time."""

    def __init__(self, process: Host, network: Network) -> None:
        self.process = process
        self.network = network
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.popen.stdout is not None
        for line in self.process.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def answer(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the client host gave no answer within {timeout} s\n"
                                 f"{self.network.logs()}") from None
        if line is None:
            raise AssertionError(f"the client host exited\n{self.network.logs()}")
        reply = json.loads(line)
        if "error" in reply:
            raise AssertionError(f"the client host failed:\n{reply['error']}\n"
                                 f"{self.network.logs()}")
        return reply

    def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        """Send one request; its answer must come within its ``timeout`` + 30 seconds."""
        assert self.process.popen.stdin is not None
        self.process.popen.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.popen.stdin.flush()
        return self.answer(arguments.get("timeout", 0) + 30)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    """The hub, three nodes and a client host; all torn down afterwards, whatever happens."""
    reason = _why_namespaces_cannot_be_made()
    if reason:
        _skip_or_fail(reason)
    built = Network(uuid.uuid4().hex[:6], tmp_path)
    try:
        try:
            built.build()
        except RuntimeError as exc:
            if not built.namespaces:  # not even one namespace: the machine does not allow it
                _skip_or_fail(f"cannot create a network namespace here: {exc}")
            raise
        yield built
    finally:
        built.tear_down()


@dataclass
class Cluster:
    network: Network
    client: ClientHost
    queue: str
    hostnames: dict[str, str]  # worker name -> the hostname its node was given


@pytest.fixture
def cluster(network: Network) -> Cluster:
    """Broker and Redis on the hub's address, a worker on each node, the client connected."""
    hub = f"{HUB_ADDRESS}:{KAFKA_PORT}"
    redis_url = f"redis://{HUB_ADDRESS}:{REDIS_PORT}/0"
    listener = f"tcp://{hub}"
    # Same servers and options as yadtq.local.LocalStack, bound to the hub's address.
    network.start("hub", "broker", [
        resolve_broker_binary(), "broker", "--listener-url", listener,
        "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/",
        "--silent",
    ])
    redis_dir = network.workdir / "redis"
    redis_dir.mkdir()
    network.start("hub", "redis", [
        resolve_redis_binary(), "--port", str(REDIS_PORT), "--bind", HUB_ADDRESS,
        "--dir", str(redis_dir), "--appendonly", "yes", "--save", "",
        "--protected-mode", "no", "--daemonize", "no", "--logfile", "",
    ])
    unique = uuid.uuid4().hex[:8]
    queue_name, key_prefix = f"multihost-{unique}", f"multihost-{unique}"
    # The client creates the topic (12 partitions) once the hub answers.
    client = ClientHost(network.start("client", "client", [
        sys.executable, str(ROOT / "tests" / "multihost_client.py"), "--bootstrap", hub,
        "--redis", redis_url, "--queue", queue_name, "--key-prefix", key_prefix,
    ], pipes=True), network)
    client.answer(timeout=90)  # {"ready": true} once the hub answers
    hostnames = {}
    for node in NODE_ADDRESSES:
        hostnames[node] = network.hostname(node)
        network.start(node, node, [
            sys.executable, "-m", "worker_node", "--bootstrap", hub, "--redis", redis_url,
            "--queue", queue_name, "--key-prefix", key_prefix, "--heartbeat-interval", "0.5",
            "--lease-seconds", "3", "--concurrency", "4", "--name", node,
        ], hostname=hostnames[node])
    return Cluster(network, client, queue_name, hostnames)


def _hosts_running_together(
    rows: list[dict[str, Any]], host_of: dict[str, str]
) -> tuple[int, int]:
    """(the most tasks running at once, the most distinct hosts running at once)."""
    events = sorted(itertools.chain.from_iterable(
        ((r["started_at"], 1, host_of[r["worker"]]), (r["finished_at"], -1, host_of[r["worker"]]))
        for r in rows), key=lambda e: (e[0], e[1]))  # ends before starts at the same instant
    running: Counter[str] = Counter()
    most_tasks = most_hosts = 0
    for _, step, host in events:
        running[host] += step
        most_tasks = max(most_tasks, sum(running.values()))
        most_hosts = max(most_hosts, sum(1 for n in running.values() if n > 0))
    return most_tasks, most_hosts


def _assigned_after(worker_log: Path, after: float) -> float:
    """When the worker logged its first partition assignment after ``after`` (Unix time)."""
    for line in worker_log.read_text(errors="replace").splitlines():
        if "assigned partitions" in line:
            logged = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if logged > after:
                return logged
    return float("inf")


def _overlapping_host_pairs(
    rows: list[dict[str, Any]], host_of: dict[str, str]
) -> set[frozenset[str]]:
    """Pairs of hosts that ran tasks during overlapping intervals."""
    ordered = sorted(rows, key=lambda r: r["started_at"])
    pairs: set[frozenset[str]] = set()
    for i, row in enumerate(ordered):
        for other in ordered[i + 1:]:
            if other["started_at"] >= row["finished_at"]:
                break
            a, b = host_of[row["worker"]], host_of[other["worker"]]
            if a != b:
                pairs.add(frozenset((a, b)))
    return pairs


def test_batch_runs_on_three_hosts_in_parallel_and_a_cut_off_nodes_tasks_finish_elsewhere(
    cluster: Cluster,
):
    client, network = cluster.client, cluster.network
    # Given three nodes, each with its own hostname, sharing the topic's partitions
    workers = client.call("workers", count=3, timeout=60)["workers"]
    host_of = {w["name"]: w["host"] for w in workers}
    assert host_of == cluster.hostnames, workers

    # When a batch of 300 short tasks runs
    started = time.monotonic()
    first = client.call("run", seconds=0.05, count=300, timeout=60)
    first_seconds = time.monotonic() - started

    # Then every result is right, and the tasks ran on all three hostnames ...
    rows = first["rows"]
    assert len(rows) == 300 and all(r["status"] == "success" for r in rows)
    assert all(0.05 <= result < 5 for result in first["results"]), first["results"]
    per_host = Counter(host_of[r["worker"]] for r in rows)
    assert set(per_host) == set(cluster.hostnames.values()), per_host
    # ... in parallel: every pair of hosts overlapped, and at moments all three ran at once.
    pairs = _overlapping_host_pairs(rows, host_of)
    most_tasks, most_hosts = _hosts_running_together(rows, host_of)
    assert len(pairs) == 3, pairs
    assert most_hosts == 3 and most_tasks > 4, (most_tasks, most_hosts)
    print(f"\nbatch 1: 300 x sleep(0.05) in {first_seconds:.2f} s; tasks per host "
          f"{dict(sorted(per_host.items()))}; overlapping host pairs {len(pairs)}/3; "
          f"at most {most_tasks} tasks on {most_hosts} hosts at once")

    # Given a second batch, with node1 running tasks and a quarter of the batch done
    # (tasks of 0.3 s, so those node1 runs are still running when the cut comes)
    victim = "node1"
    batch = client.call("submit", seconds=SECOND_BATCH_SECONDS, count=240)["batch"]
    midway = client.call("wait_midway", batch=batch, worker=victim, min_done=60, timeout=60)

    # When node1 is cut off the network
    network.cut(victim)
    cut_at = time.time()

    # Then every task succeeds, with one accepted result each, and none is lost ...
    done = client.call("collect", batch=batch, timeout=120)
    rows, history = done["rows"], done["history"]
    assert done["unfinished"] == 0, f"{done['unfinished']} tasks unfinished\n{network.logs()}"
    assert len({r["id"] for r in rows}) == 240
    assert all(r["status"] == "success" and r["result"] >= SECOND_BATCH_SECONDS
               for r in rows), [r for r in rows if r["status"] != "success"]
    assert done["counts"]["success"] == 240 and done["counts"]["failed"] == 0, done["counts"]
    # ... the cut-off node is seen dead and finished nothing after the cut ...
    state = {w["name"]: w["status"] for w in done["workers"]}
    assert state[victim] == "dead" and state["node2"] == state["node3"] == "alive", state
    assert all(r["finished_at"] <= cut_at for r in rows if r["worker"] == victim)
    # ... and the tasks it held ran again on the other nodes after its lease expired.
    held = {task_id for task_id, events in history.items()
            if any(e["event"] == "claimed" and e["worker"] == victim for e in events)
            and any(e["event"] == "lease expired" and e["worker"] == victim for e in events)}
    recovered = [r for r in rows if r["id"] in held]
    assert recovered, f"node1 held no task at the cut; it was running {midway['running']}"
    assert all(r["worker"] in ("node2", "node3") for r in recovered), recovered
    assert set(midway["running"]) <= held | {r["id"] for r in rows if r["worker"] == victim}

    # ... and once Kafka dropped node1 from the group, node2 and node3 hold every partition
    # (the batch can finish first: idle nodes steal node1's waiting tasks).
    settled = client.call("workers", count=2, timeout=30)["workers"]
    survivors = [w for w in settled if w["name"] != victim]
    partitions = sorted(int(p) for w in survivors for p in w["partitions"].split(",") if p)
    assert partitions == list(range(12)), survivors
    moved = min(_assigned_after(network.workdir / f"{w['name']}.log", cut_at) for w in survivors)

    per_host = Counter(host_of[r["worker"]] for r in rows)
    requeued = max(e["at"] for task_id in held for e in history[task_id]
                   if e["event"] == "lease expired") - cut_at
    held_recovery = max(r["finished_at"] for r in recovered) - cut_at
    batch_recovery = max(r["finished_at"] for r in rows) - cut_at
    print(f"batch 2: 240 x sleep({SECOND_BATCH_SECONDS}); {cluster.hostnames[victim]} cut off "
          f"after {midway['done']} tasks were done, while it ran {len(midway['running'])}; "
          f"tasks per host {dict(sorted(per_host.items()))}; lost 0; the {len(held)} tasks "
          f"it held were queued again {requeued:.2f} s after the cut (lease 3 s) and done "
          f"elsewhere after {held_recovery:.2f} s; its partitions moved to the others after "
          f"{moved - cut_at:.2f} s (Kafka session timeout 6 s); last task of the batch done "
          f"{batch_recovery:.2f} s after the cut")
