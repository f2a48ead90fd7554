"""A local stack's life: it is ready when it says so, findable while it runs, gone when its
owner is, however the owner died."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import wait_until

import yadtq
from yadtq.config import local_stack_record_path, resolve_config
from yadtq.local import LocalCluster, LocalStack

REPO_ROOT = Path(__file__).resolve().parents[1]
GONE_WITHIN = 20.0  # seconds: the bound for a dead owner's stack to be gone
OWNER_SCRIPT = (
    "import sys, yadtq.local as local\n"
    "cluster = local.LocalCluster(workers=2).start()\n"
    "print(cluster.stack.data_dir, flush=True)\n"
    "sys.stdin.read()\n"  # runs until the test closes stdin or kills it
)


def clean_env(home: Path) -> dict[str, str]:
    """No yadtq settings but the run's broker, records in ``home``, this checkout first."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("YADTQ_") or k == "YADTQ_LOCAL_BROKER"}
    env["YADTQ_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def descendants(pid: int) -> list[psutil.Process]:
    """Every live process below ``pid``: servers, workers, fork servers, task processes."""
    return psutil.Process(pid).children(recursive=True)


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def kill_leftovers(processes: list[psutil.Process]) -> None:
    """Leave nothing behind even when the code under test did (as the old code did)."""
    for process in running(processes):
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


class Lines:
    """A child's stdout read on a thread, so a test can wait for a line with a deadline."""

    def __init__(self, stream) -> None:
        self.seen: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._lines.put(line) for line in stream],
                         daemon=True).start()

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; saw {self.seen!r}") from None
            self.seen.append(line)
            if re.search(pattern, line):
                return line


def yadtq_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "yadtq", *args], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, list[psutil.Process]]]:
    """A script that owns a LocalCluster of 2 workers: (process, data dir, its descendants)."""
    process = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT], env=clean_env(tmp_path),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stack: list[psutil.Process] = []
    try:
        assert process.stdout is not None
        data_dir = process.stdout.readline().strip()
        assert data_dir, "the owner script did not start its cluster"
        # Its workers have started their fork servers and task processes.
        stack = wait_until(lambda: len(descendants(process.pid)) >= 8 and descendants(
            process.pid), 60, "the workers' fork servers and task processes")
        yield process, data_dir, stack
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        kill_leftovers(stack)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_dead_owners_cluster_leaves_no_process_no_folder_and_no_record(owner, tmp_path, how):
    # Given a script owning a started LocalCluster (broker, Redis, 2 workers and theirs)
    process, data_dir, stack = owner

    # When it dies without running any cleanup of its own
    process.send_signal(how)
    process.wait(timeout=10)

    # Then every process of its stack is gone within seconds, with its folder and its record
    started = time.monotonic()
    wait_until(lambda: not running(stack), GONE_WITHIN,
               f"the {len(stack)} processes of the dead owner's stack to be gone")
    print(f"{len(stack)} processes gone {time.monotonic() - started:.2f} s after the owner")
    assert not Path(data_dir).exists()
    assert not list((tmp_path / "stacks").glob("*.json"))


@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGKILL], ids=["sighup", "sigkill"])
def test_local_up_killed_or_hung_up_leaves_no_process_of_its_stack(tmp_path, how):
    # Given `yadtq local up` with a worker, up
    up = subprocess.Popen([sys.executable, "-m", "yadtq", "local", "up", "--workers", "1"],
                          env=clean_env(tmp_path), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    stack: list[psutil.Process] = []
    try:
        assert up.stdout is not None
        Lines(up.stdout).wait_for("is up", 90)
        stack = descendants(up.pid)

        # When its terminal hangs up, or it is killed
        up.send_signal(how)
        code = up.wait(timeout=60)

        # Then nothing of its stack is left within seconds, nor its record
        wait_until(lambda: not running(stack), GONE_WITHIN,
                   f"the {len(stack)} processes of the stack to be gone")
        assert not (tmp_path / "local-stack.json").exists()
        if how == signal.SIGHUP:
            assert code == 0  # a hang-up is a clean stop
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        kill_leftovers(stack)


def test_local_status_lists_a_script_owned_cluster_and_local_down_stops_it(owner, tmp_path):
    # Given a script owning a LocalCluster (not `yadtq local up`)
    process, data_dir, stack = owner
    env = clean_env(tmp_path)

    # When `yadtq local status` runs elsewhere, it lists the stack and its workers
    status = wait_until(lambda: (done := yadtq_cli(env, "local", "status")).returncode == 0
                        and "2 alive of 2" in done.stdout and done, 60,
                        "local status to list the cluster's 2 workers")
    assert f"owner pid {process.pid}" in status.stdout
    assert data_dir in status.stdout

    # And `yadtq local down` stops it all, but not its owner (a notebook kernel lives on)
    down = yadtq_cli(env, "local", "down")
    assert down.returncode == 0, down.stderr
    assert not running([p for p in stack if p.pid != process.pid])
    assert process.poll() is None
    after = yadtq_cli(env, "local", "status")
    assert after.returncode == 1 and "no local stack is running" in after.stderr


def test_local_up_says_up_only_when_a_task_runs_at_once(tmp_path, monkeypatch):
    # Given `yadtq local up` with 2 workers
    env = clean_env(tmp_path)
    up = subprocess.Popen([sys.executable, "-m", "yadtq", "local", "up", "--workers", "2"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert up.stdout is not None
        Lines(up.stdout).wait_for("is up", 90)

        # When a client submits the moment it says so
        for name in [k for k in os.environ if k.startswith("YADTQ_") and k != "YADTQ_LOCAL_BROKER"]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("YADTQ_HOME", str(tmp_path))
        with yadtq.connect() as q:
            started = time.monotonic()
            assert q.submit("add", 1, 2).result(timeout=30) == 3
            latency = time.monotonic() - started

        # Then the task ran at once, not after the consumer group formed
        print(f"first task after `local up` said up: {latency:.3f} s")
        assert latency < 1.0
    finally:
        up.terminate()
        up.wait(timeout=60)


def test_connect_local_returns_with_its_workers_holding_their_partitions(tmp_path, monkeypatch):
    # Given no servers configured and no stack running
    for name in [k for k in os.environ if k.startswith("YADTQ_") and k != "YADTQ_LOCAL_BROKER"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("YADTQ_HOME", str(tmp_path))

    # When connect('local') starts a stack of 2 workers
    q = yadtq.connect("local", workers=2)
    try:
        # Then both workers are there already, and the first task runs at once
        assert list(q.workers()["status"]) == ["alive", "alive"]
        started = time.monotonic()
        assert q.submit("add", 2, 3).result(timeout=30) == 5
        latency = time.monotonic() - started
    finally:
        q.close()
    print(f"first task after connect('local') returned: {latency:.3f} s")
    assert latency < 1.0


@pytest.fixture
def recorded(stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A recorded cluster (the machine's default stack) with 1 worker trusting code, in a
    YADTQ_HOME of its own, on the session's servers."""
    for name in [k for k in os.environ if k.startswith("YADTQ_") and k != "YADTQ_LOCAL_BROKER"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("YADTQ_HOME", str(tmp_path))
    queue_name = f"t-{os.urandom(5).hex()}"
    with LocalCluster(workers=1, stack=stack, queue=queue_name, key_prefix=queue_name,
                      record=True) as cluster:
        yield cluster


def test_eval_of_local_env_gives_a_shell_a_client_with_the_stacks_secret(recorded, tmp_path):
    # Given the exports `yadtq local env` prints for the recorded stack
    env = clean_env(tmp_path)
    exports = yadtq_cli(env, "local", "env")
    assert exports.returncode == 0, exports.stderr
    assert f"export YADTQ_SECRET={recorded.config.secret}" in exports.stdout

    # When a shell evals them, with no record to fall back on, and ships code
    shell_env = {**env, "YADTQ_HOME": str(tmp_path / "empty"), "EXPORTS": exports.stdout}
    script = ("import yadtq; q = yadtq.connect(); "
              "print(q.submit(lambda x: x * 7, 6).result(timeout=60)); q.close()")
    done = subprocess.run(["bash", "-c", f'eval "$EXPORTS"; {sys.executable} -c "{script}"'],
                          env=shell_env, capture_output=True, text=True, timeout=120)

    # Then its client signs with the stack's secret and the stack's worker runs it
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"


def test_environment_addresses_of_a_stack_bring_its_secret_unless_one_is_given(
    recorded, monkeypatch,
):
    # Given the recorded stack's addresses exported, but no secret and no queue
    monkeypatch.setenv("YADTQ_BOOTSTRAP", recorded.config.bootstrap)
    monkeypatch.setenv("YADTQ_REDIS_URL", recorded.config.redis_url)

    # Then a client's settings are the stack's: its secret, queue and key prefix
    config = resolve_config()
    assert config.secret == recorded.config.secret
    assert (config.queue, config.key_prefix) == (recorded.config.queue,
                                                 recorded.config.key_prefix)
    with yadtq.connect("local") as q:
        assert q.config.secret == recorded.config.secret

    # But a secret named explicitly wins, even a wrong one
    monkeypatch.setenv("YADTQ_SECRET", "not-the-stacks")
    assert resolve_config().secret == "not-the-stacks"


def test_local_status_shows_the_stacks_uptime_not_its_last_started_workers(recorded, tmp_path):
    # Given a recorded stack that has run a while, when a worker starts
    started_at = json.loads(local_stack_record_path().read_text())["started_at"]
    wait_until(lambda: time.time() > started_at + 1.5, 10, "the stack to have run 1.5 s")
    recorded.start_worker()

    # Then its record and `local status` still count from the stack's start
    assert json.loads(local_stack_record_path().read_text())["started_at"] == started_at
    status = yadtq_cli(clean_env(tmp_path), "local", "status")
    uptime = int(re.search(r"up (\d+) s", status.stdout).group(1))
    assert uptime >= 1, status.stdout


def test_local_status_into_a_reader_that_went_away_exits_quietly(recorded, tmp_path):
    # Given stdout a pipe nobody reads any more (`yadtq local status | head` after head exits)
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run([sys.executable, "-m", "yadtq", "local", "status"],
                              env=clean_env(tmp_path), stdout=writer, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(writer)

    # Then it ends as a process killed by SIGPIPE would, with no traceback
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 128 + signal.SIGPIPE
