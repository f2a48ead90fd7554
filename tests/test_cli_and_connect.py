"""The command line and connect(): finding a stack from other processes, by each route."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wait_until

import yadtq
from yadtq.config import read_local_stack_record
from yadtq.local import LocalCluster


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YADTQ_")}
    return {**env, "YADTQ_HOME": str(home)}


def _run(args: list[str], env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


def test_local_up_stack_is_found_by_the_cli_and_connect_in_other_processes(tmp_path):
    # Given `yadtq local up` running in its own process
    env = _env(tmp_path)
    up = subprocess.Popen([sys.executable, "-m", "yadtq", "local", "up", "--workers", "2"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        record_file = tmp_path / "local-stack.json"
        wait_until(record_file.exists, 60, "local up to record its addresses")
        record = json.loads(record_file.read_text())

        # When other processes use it with no addresses given
        submitted = _run([sys.executable, "-m", "yadtq", "submit", "add", "1", "2", "--wait",
                          "--timeout", "60"], env)
        script = ("import yadtq; q = yadtq.connect(); f = q.submit('multiply', 6, 7); "
                  "print(f.result(timeout=60), f.id); q.close()")
        connected = _run([sys.executable, "-c", script], env)
        product, task_id = connected.stdout.split()
        status = _run([sys.executable, "-m", "yadtq", "status", task_id], env)
        workers = _run([sys.executable, "-m", "yadtq", "workers"], env)

        # Then each found the stack and the tasks ran on its workers
        assert submitted.returncode == 0, submitted.stderr
        assert submitted.stdout.strip() == "3"
        assert product == "42", connected.stderr
        assert status.stdout.strip() == "success"
        assert "local-worker-1" in workers.stdout and "local-worker-2" in workers.stdout
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert record["bootstrap"] in output and record["redis_url"] in output
    assert not record_file.exists()


def test_cli_prints_a_failed_tasks_remote_traceback_and_exits_1(tmp_path, config,
                                                              start_workers):
    start_workers(1)
    env = {**_env(tmp_path), "YADTQ_BOOTSTRAP": config.bootstrap,
           "YADTQ_REDIS_URL": config.redis_url, "YADTQ_QUEUE": config.queue,
           "YADTQ_KEY_PREFIX": config.key_prefix}

    failed = _run([sys.executable, "-m", "yadtq", "submit", "divide", "1", "0", "--wait",
                   "--timeout", "60"], env)

    assert failed.returncode == 1
    assert "ZeroDivisionError: division by zero" in failed.stderr
    assert "Remote traceback" in failed.stderr
    assert "Traceback (most recent call last)" in failed.stderr


def no_yadtq_configuration(monkeypatch) -> None:
    """Unset every YADTQ_ variable but the broker the test run uses."""
    for name in [k for k in os.environ if k.startswith("YADTQ_") and k != "YADTQ_LOCAL_BROKER"]:
        monkeypatch.delenv(name)


def test_connect_local_starts_a_stack_it_owns_and_stops_it_on_close(tmp_path, monkeypatch):
    # Given no configured servers and no running local stack
    no_yadtq_configuration(monkeypatch)
    monkeypatch.setenv("YADTQ_HOME", str(tmp_path))
    assert read_local_stack_record() is None

    # When connect('local') is asked for a stack
    q = yadtq.connect("local", workers=1)
    try:
        result = q.submit("power", 2, 8).result(timeout=60)
        pids = [int(p) for p in q.workers()["pid"]]
    finally:
        q.close()

    # Then it started one that ran the task, and closing stopped its workers
    assert result == 256
    assert len(pids) == 1
    wait_until(lambda: not _alive(pids[0]), 30, "the owned worker to exit")


def test_connect_local_gives_its_workers_every_setting_of_its_client(tmp_path, monkeypatch):
    # Given no configured servers and no running local stack
    no_yadtq_configuration(monkeypatch)
    monkeypatch.setenv("YADTQ_HOME", str(tmp_path))

    # When connect('local') starts one with a key prefix and result TTL of its own
    q = yadtq.connect("local", workers=1, key_prefix="own-prefix", result_ttl=600)
    try:
        # Then its worker serves that prefix (the task runs) and agrees on every setting
        assert q.submit("power", 2, 5).result(timeout=60) == 32
        workers = q.workers()
        assert list(workers["settings_differ"]) == [""]
        finished = q.submit("add", 1, 1)
        assert finished.result(timeout=60) == 2
        assert 0 < q.backend.redis.ttl(q.backend.keys.task(finished.id)) <= 600
    finally:
        q.close()


def test_a_worker_whose_settings_differ_from_the_clients_is_reported(client, stack, config):
    # Given a worker of the client's queue started with a longer lease than the client's
    with LocalCluster(workers=1, stack=stack, queue=config.queue, key_prefix=config.key_prefix,
                      heartbeat_interval=config.heartbeat_interval,
                      lease_seconds=config.lease_seconds + 2, trust_code=False):
        # When the client lists its workers
        wait_until(lambda: len(client.workers()) == 1, 60, "the worker's first heartbeat")

        # Then the worker's row names the setting that differs
        assert list(client.workers()["settings_differ"]) == ["lease_seconds"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent's wait remains.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_connect_without_configuration_says_how_to_start_a_stack(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("YADTQ_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("YADTQ_HOME", str(tmp_path))

    with pytest.raises(yadtq.ConfigurationError, match="yadtq local up"):
        yadtq.connect()


def test_worker_warns_when_the_group_has_more_members_than_partitions(config, start_workers):
    # Given a topic created with one partition, and two workers
    cluster = start_workers(2, partitions=1)

    # Then one of them gets no partition and says why in its log
    def warned() -> bool:
        logs = [w.log_path.read_text() for w in cluster.worker_processes]
        return any("more members than its 1 partitions" in log for log in logs)

    wait_until(warned, 60, "a worker to warn about too few partitions")


def test_connect_local_never_closed_exits_quietly_and_stops_its_stack(tmp_path, monkeypatch):
    # Given a script that connects to a stack of its own and never closes the client
    no_yadtq_configuration(monkeypatch)
    monkeypatch.setenv("YADTQ_HOME", str(tmp_path))
    script = ("import yadtq\nq = yadtq.connect('local', workers=1)\n"
              "print(q.submit('add', 1, 2).result(60))\n"
              "print(*q.workers()['pid'])\n")

    # When it runs to the end
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)

    # Then it printed the result, said nothing about lost connections, and left no worker
    assert done.returncode == 0, done.stderr
    result, pid = done.stdout.split("\n")[:2]
    assert result == "3"
    assert "connection lost" not in done.stderr, done.stderr
    wait_until(lambda: not _alive(int(pid)), 30, "the stack's worker to be gone")
