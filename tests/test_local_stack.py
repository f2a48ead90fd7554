"""The embedded local stack and the server-free CLI commands, against real child processes."""

from __future__ import annotations

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
from pathlib import Path

import pytest
import redis
from helpers import wait_until
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from yadtq.cli import parse_task_arg
from yadtq.config import local_stack_record_path, read_local_stack_record
from yadtq.errors import BackendUnavailable, ConfigurationError
from yadtq.local import LocalCluster, LocalStack

REPO_ROOT = Path(__file__).resolve().parents[1]



def live_children() -> set[int]:
    """Pids of this process's children that have not exited (from /proc, so Linux only)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue
        if int(ppid) == os.getpid() and state != "Z":
            children.add(int(stat.parent.name))
    return children


def cli_env(home: Path) -> dict[str, str]:
    """An environment with no yadtq configuration (but the run's broker) and an empty home."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("YADTQ_") or k == "YADTQ_LOCAL_BROKER"}
    env["YADTQ_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def yadtq_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("YADTQ_HOME", str(home))
    return home


def test_broker_carries_a_message_from_producer_to_consumer(stack: LocalStack) -> None:
    # Given a topic on the embedded broker
    topic = f"test-{uuid.uuid4().hex}"
    admin = KafkaAdminClient(bootstrap_servers=stack.bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()

    # When a message is produced
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap)
    producer.send(topic, b"hello").get(timeout=10)
    producer.close()

    # Then a reader of that partition receives it
    consumer = KafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False)
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    try:
        batches = wait_until(lambda: consumer.poll(timeout_ms=200), 15, "the produced message")
    finally:
        consumer.close()
    assert [record.value for record in batches[partition]] == [b"hello"]
    assert stack.bootstrap.startswith("127.0.0.1:")


def test_redis_answers_set_and_get_on_loopback(stack: LocalStack) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
    finally:
        client.close()
    assert stack.redis_url.startswith("redis://127.0.0.1:")


def test_redis_data_survives_restart_redis(tmp_path: Path) -> None:
    # Given a stack of its own (the session's is shared) and a key written before the restart
    with LocalStack(tmp_path) as own:
        url, old_pid = own.redis_url, own.pids["redis"]
        client = redis.Redis.from_url(url)
        client.set("survivor", "still here")
        client.close()

        # When Redis is stopped and started again
        own.restart_redis()

        # Then a new server answers on the same address with the data from its append-only file
        assert own.redis_url == url
        assert own.pids["redis"] != old_pid
        client = redis.Redis.from_url(url)
        try:
            assert client.get("survivor") == b"still here"
        finally:
            client.close()


def test_stop_leaves_no_child_process_alive() -> None:
    # Given a running stack in a temporary data dir it owns
    local = LocalStack().start()
    pids = set(local.pids.values())
    data_dir = local.data_dir
    assert data_dir is not None
    assert len(pids) == 2 and pids <= live_children()

    # When it stops
    local.stop()

    # Then neither server is left, and neither is its temporary data dir
    assert not pids & live_children()
    assert not data_dir.exists()
    local.stop()  # a second stop is harmless


def test_missing_broker_binary_raises_configuration_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("YADTQ_BROKER_BIN", "/nonexistent")
    before = live_children()

    with pytest.raises(ConfigurationError, match="YADTQ_BROKER_BIN='/nonexistent'"):
        LocalStack(broker="tansu").start()

    assert live_children() == before


def test_apache_kafka_without_java_or_maven_is_an_error_naming_the_missing_tool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    # Given a PATH with neither java nor mvn
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    before = live_children()

    # Then an Apache Kafka stack says java is missing, and starts nothing
    with pytest.raises(ConfigurationError, match="needs `java`"):
        LocalStack(broker="apache-kafka").start()
    assert live_children() == before

    # And with java but no mvn and no cached jars, it says mvn is missing
    java = shutil.which("java", path=os.defpath + ":/usr/lib/jvm/default-java/bin")
    if java is None:
        pytest.skip("no java on this machine to put on the PATH")
    (tmp_path / "java").symlink_to(java)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigurationError, match="needs `mvn`"):
        LocalStack(broker="apache-kafka").start()


def test_a_server_that_dies_at_startup_stops_what_was_already_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a "Redis" that exits at once (the broker starts first and works)
    monkeypatch.setenv("YADTQ_REDIS_BIN", "/bin/false")
    before = live_children()

    # When the stack starts, the error says what died and quotes its log
    with pytest.raises(BackendUnavailable, match="exited with code 1 during startup"):
        LocalStack().start()

    # Then the broker it had started is gone too
    assert live_children() == before


def test_recorded_cluster_is_found_by_read_local_stack_record_until_it_stops(
    stack: LocalStack, yadtq_home: Path
) -> None:
    # Given a cluster of no workers on an existing stack, recording its addresses
    with LocalCluster(workers=0, queue="recorded", stack=stack, record=True) as cluster:
        # Then other processes can read the addresses back
        record = read_local_stack_record()
        assert record is not None
        assert record["pid"] == os.getpid()
        assert (record["bootstrap"], record["redis_url"]) == (stack.bootstrap, stack.redis_url)
        assert record["queue"] == cluster.config.queue == "recorded"

        # And a second recorded stack is refused rather than overwriting the record
        with pytest.raises(ConfigurationError, match="already running"):
            LocalCluster(workers=0, stack=stack, record=True).start()

    # When it stops, the record goes, and the stack it was given keeps running
    assert not local_stack_record_path().exists()
    assert stack.running


def test_cluster_kills_and_starts_named_workers_and_stops_them_all(stack: LocalStack) -> None:
    # Given a cluster of one worker on a queue of its own
    queue_name = f"t-{uuid.uuid4().hex[:10]}"
    with LocalCluster(workers=1, queue=queue_name, key_prefix=queue_name, stack=stack) as cluster:
        first = cluster.worker_processes[0]
        assert (first.name, first.alive) == ("local-worker-1", True)
        assert first.log_path.parent == stack.data_dir

        # When it is killed, it is dead and reaped but keeps its index
        assert cluster.kill_worker("local-worker-1") is first
        assert first.popen.returncode == -signal.SIGKILL

        # And a replacement gets the next name
        second = cluster.start_worker()
        assert second.name == "local-worker-2"
        assert cluster.worker_processes == [first, second]
        pids = {first.pid, second.pid}

    # Then stopping leaves no worker, and the given stack runs on
    assert not pids & live_children()
    assert stack.running


def test_command_line_task_args_are_json_when_they_parse_and_strings_otherwise() -> None:
    assert [parse_task_arg(a) for a in ["1", "-2.5", "null", "[1, 2]", '"3"', "hello", "{x"]] == [
        1, -2.5, None, [1, 2], "3", "hello", "{x",
    ]


def test_status_without_any_configuration_says_how_to_start_and_exits_1(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "yadtq", "status", "0" * 32],
        env=cli_env(tmp_path / "empty-home"), cwd=tmp_path, capture_output=True, text=True,
        timeout=60,
    )

    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("yadtq: error: ")
    assert "yadtq local up" in done.stderr
    assert "YADTQ_BOOTSTRAP" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_local_up_points_at_local_env_records_itself_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    # Given `yadtq local up` running with no workers
    home = tmp_path / "home"
    up = subprocess.Popen(
        [sys.executable, "-m", "yadtq", "local", "up", "--workers", "0"],
        env=cli_env(home), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in up.stdout], daemon=True)
    reader.start()
    try:
        # When it is up, it tells other shells to eval `yadtq local env`, not a partial export
        deadline = time.monotonic() + 60
        seen: list[str] = []
        while not any("yadtq local env" in line for line in seen):
            try:
                seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"no pointer to `yadtq local env` from `yadtq local up`; saw {seen!r}")
        assert not any(line.startswith("export ") for line in seen)
        env = subprocess.run([sys.executable, "-m", "yadtq", "local", "env"], env=cli_env(home),
                             capture_output=True, text=True, timeout=60)
        exports = dict(line.split(" ", 1)[1].split("=", 1) for line in env.stdout.splitlines()
                       if line.startswith("export "))
        record = json.loads((home / "local-stack.json").read_text())
        assert exports.items() >= {  # and any other setting its workers do not default
            "YADTQ_BOOTSTRAP": record["bootstrap"], "YADTQ_REDIS_URL": record["redis_url"],
            "YADTQ_SECRET": record["secret"],
        }.items()
        client = redis.Redis.from_url(exports["YADTQ_REDIS_URL"])
        assert client.ping()
        client.close()

        # Then SIGTERM stops it with status 0 and removes the record and its servers
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0, up.stderr.read() if up.stderr else ""
        assert not (home / "local-stack.json").exists()
        assert not list((home / "stacks").glob("*.json"))
        client = redis.Redis.from_url(exports["YADTQ_REDIS_URL"], socket_connect_timeout=1)
        with pytest.raises(redis.ConnectionError):
            client.ping()
        client.close()
    finally:
        if up.poll() is None:  # SIGTERM first: it stops its servers in order
            up.terminate()
            try:
                up.wait(timeout=30)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()


def worker_children(pid: int) -> set[int]:
    """Pids of the live ``worker_node`` processes whose parent is ``pid``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if int(ppid) == pid and state != "Z" and b"worker_node" in command:
            found.add(int(stat.parent.name))
    return found


def test_local_up_replaces_a_killed_worker_and_status_and_down_manage_it(tmp_path: Path) -> None:
    # Given `yadtq local up` with 2 workers
    home = tmp_path / "home"
    env = cli_env(home)
    up = subprocess.Popen(
        [sys.executable, "-m", "yadtq", "local", "up", "--workers", "2"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )

    def yadtq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "yadtq", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    try:
        first = wait_until(lambda: len(worker_children(up.pid)) == 2 and worker_children(up.pid),
                           90, "two workers")
        wait_until(lambda: "2 alive of 2" in yadtq("local", "status").stdout, 90,
                   "status to list 2 alive workers")

        # When one worker is killed with SIGKILL
        victim = min(first)
        os.kill(victim, signal.SIGKILL)

        # Then a new worker process takes its place, and status shows both alive again
        wait_until(lambda: len(worker_children(up.pid) - first) == 1
                   and len(worker_children(up.pid)) == 2, 60, "the killed worker replaced")
        wait_until(lambda: "2 alive" in yadtq("local", "status").stdout, 60,
                   "status to list 2 alive workers after the restart")
        status = yadtq("local", "status")
        assert status.returncode == 0
        assert "Kafka" in status.stdout and "Redis" in status.stdout and "logs" in status.stdout

        # And `yadtq local down` stops it, keeping its logs because a worker died
        down = yadtq("local", "down")
        assert down.returncode == 0, down.stderr
        assert "stopped the local stack" in down.stdout
        assert up.wait(timeout=60) == 0
        stderr = up.stderr.read() if up.stderr else ""
        assert "restarted local-worker-" in stderr
        kept = [line.split("logs kept in ", 1)[1] for line in stderr.splitlines()
                if "logs kept in " in line]
        assert kept and Path(kept[0]).is_dir(), stderr
        assert any(Path(kept[0]).glob("worker-*.log"))
        after = yadtq("local", "status")
        assert after.returncode == 1 and "no local stack is running" in after.stderr
    finally:
        if up.poll() is None:
            up.terminate()
            up.wait(timeout=60)
