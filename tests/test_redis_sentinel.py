"""Redis behind sentinels: ``redis+sentinel://`` URLs everywhere, and failover of the primary.

The URL tests need no server. The rest share one local stack whose Redis is a primary,
two replicas and three sentinels (``LocalStack(redis_replicas=2)``), on the run's broker;
a test that kills a node starts it again afterwards, so each finds the set whole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from helpers import status_counts, wait_until
from redis.sentinel import MasterNotFoundError
from test_local_lifecycle import Lines, clean_env, descendants, kill_leftovers, running

import yadtq
from worker_node.tasks import add, sleep
from yadtq.backend import RedisBackend
from yadtq.backend.redis_client import redis_client
from yadtq.backend.redis_errors import address, is_transient
from yadtq.config import Config, redacted_url, resolve_config
from yadtq.errors import BackendUnavailable, ConfigurationError
from yadtq.local import LocalCluster, LocalStack, free_port
from yadtq.redis_urls import parse_sentinel_url

REDIS_NODES = ("redis-1", "redis-2", "redis-3")


def report(text: str) -> None:
    print(f"\n[sentinel] {text}")


# --- URLs (no server) -------------------------------------------------------------------


def test_a_sentinel_url_names_its_sentinels_master_db_and_passwords() -> None:
    target = parse_sentinel_url(
        "redis+sentinel://:s%40cret@h1:26379,h2,[::1]:26380/mymaster/3?sentinel_password=sp")

    assert target.sentinels == (("h1", 26379), ("h2", 26379), ("::1", 26380))
    assert (target.master, target.db) == ("mymaster", 3)
    assert (target.password, target.sentinel_password) == ("s@cret", "sp")
    assert parse_sentinel_url("redis+sentinel://h1:1/m").db == 0


@pytest.mark.parametrize(("url", "reason"), [
    ("redis+sentinel:///mymaster/0", "it names no sentinel host"),
    ("redis+sentinel://h1:26379", "it names no master"),
    ("redis+sentinel://h1:26379/", "it names no master"),
    ("redis+sentinel://h1:port/m/0",
     "the sentinel 'h1:port' has port 'port', not a number from 1 to 65535"),
    ("redis+sentinel://h1:70000/m/0", "the sentinel 'h1:70000' has port '70000'"),
    ("redis+sentinel://h1:1,:2/m/0", "the sentinel ':2' has no host"),
    ("redis+sentinel://h1:1/m/zero", "the db 'zero' is not a number"),
    ("redis+sentinel://h1:1/m/0/x", "its path has 3 parts"),
    ("redis+sentinel://h1:1/m?ssl=1", "unknown parameter ssl"),
])
def test_a_malformed_sentinel_url_is_refused_saying_what_is_wrong_and_the_form(
        url: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_config(bootstrap="a:1", redis_url=url)

    text = str(caught.value)
    assert f"redis_url='{url}' is not a valid sentinel URL: {reason}" in text
    assert "write redis+sentinel://[:password@]host1:26379,host2:26379/<master>[/<db>]" in text


def test_a_malformed_sentinel_url_does_not_show_its_passwords() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Config(bootstrap="a:1", redis_url="redis+sentinel://:hunter2@h1:1?sentinel_password=pw2")

    assert "hunter2" not in str(caught.value) and "pw2" not in str(caught.value)
    assert "redis+sentinel://:***@h1:1?sentinel_password=***" in str(caught.value)


def test_redacted_url_hides_the_master_and_sentinel_passwords() -> None:
    url = "redis+sentinel://:pw@h1:1,h2:2/m/0?sentinel_password=spw"

    assert redacted_url(url) == "redis+sentinel://:***@h1:1,h2:2/m/0?sentinel_password=***"
    assert redacted_url("redis+sentinel://h1:1/m/0") == "redis+sentinel://h1:1/m/0"


def test_a_sentinel_client_is_named_by_its_sentinels_and_master_in_messages() -> None:
    client = redis_client("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/2")
    try:
        assert address(client) == "sentinels 127.0.0.1:26379,127.0.0.1:26380 (master mymaster)"
        assert client.connection_pool.connection_kwargs["db"] == 2
    finally:
        client.close()


def test_no_master_found_is_transient_a_failover_in_progress() -> None:
    assert is_transient(MasterNotFoundError("No master found for 'yadtq'"))


def test_without_a_sentinel_running_the_error_says_to_check_the_name_and_the_sentinels(
) -> None:
    # Given a sentinel URL whose sentinels do not run
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/nosuch/0"
    backend = RedisBackend(Config(bootstrap="a:1", redis_url=url, connect_timeout=1))

    # When the backend checks its connection
    with pytest.raises(BackendUnavailable) as caught:
        backend.check_connection()
    backend.close()

    # Then the error names the sentinels, the master and what to check
    assert "knows master 'nosuch'" in str(caught.value)
    assert "check the master name and that the sentinels run" in str(caught.value)


def test_the_cli_refuses_a_malformed_sentinel_url_naming_the_option(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "yadtq", "status", "--bootstrap", "a:1",
         "--redis", "redis+sentinel://h1:26379"],
        env=clean_env(tmp_path), capture_output=True, text=True, timeout=60)

    assert run.returncode != 0
    assert "--redis='redis+sentinel://h1:26379' is not a valid sentinel URL" in run.stderr
    assert "it names no master" in run.stderr


# --- a stack whose Redis is a primary, two replicas and three sentinels ------------------


@pytest.fixture(scope="module")
def ha_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("ha"), redis_replicas=2) as stack:
        yield stack


@pytest.fixture
def ha(ha_stack: LocalStack) -> Iterator[LocalStack]:
    """The HA stack; nodes a test killed are started again after it."""
    yield ha_stack
    for name in REDIS_NODES:
        if name not in ha_stack.pids:
            ha_stack.start_redis_node(name)


@pytest.fixture
def cluster(ha: LocalStack) -> Iterator[LocalCluster]:
    """Two workers of a fresh queue on the HA stack."""
    unique = uuid.uuid4().hex[:10]
    with LocalCluster(workers=2, stack=ha, queue=f"s-{unique}", key_prefix=f"s-{unique}",
                      heartbeat_interval=0.5, lease_seconds=3.0, trust_code=False) as running:
        yield running


def test_the_ha_stack_url_names_three_sentinels_and_every_replica_is_online(ha) -> None:
    assert ha.redis_url.startswith("redis+sentinel://127.0.0.1:")
    assert ha.redis_url.endswith("/yadtq/0") and ha.redis_url.count(",") == 2
    primary = redis.Redis(port=ha.redis_port(ha.redis_primary()), decode_responses=True)
    try:
        info = primary.info("replication")
    finally:
        primary.close()
    assert info["role"] == "master" and info["connected_slaves"] == 2
    assert all(info[f"slave{i}"]["state"] == "online" for i in range(2))


def test_a_client_and_two_workers_connected_through_sentinels_run_a_map(cluster) -> None:
    with yadtq.Client(cluster.config) as client:
        client.wait_for_workers(2, timeout=60)

        batch = client.map(add, [(i, i) for i in range(50)])

        assert batch.results(timeout=60) == [2 * i for i in range(50)]
        assert "sentinels 127.0.0.1:" in address(client.backend.redis)


def test_a_sigkilled_primary_mid_map_is_replaced_and_every_task_succeeds(ha, cluster) -> None:
    # Given two workers and a client through the sentinels, and a map of 400 short tasks
    with yadtq.Client(cluster.config) as client:
        client.wait_for_workers(2, timeout=60)
        batch = client.map(sleep, [0.01] * 400)
        wait_until(lambda: batch.local_counts()["success"] >= 120, 60, "30 % of the map done")

        # When the primary is SIGKILLed
        killed_at = time.monotonic()
        old = ha.kill_redis_primary(signal.SIGKILL)
        done_before = batch.local_counts()["success"]
        new = ha.wait_for_failover(old, timeout=30)
        replaced_in = time.monotonic() - killed_at

        # Then a replica took over and every task of the map ends in success
        assert new != old
        _, unfinished = batch.wait(timeout=90)
        assert not unfinished, (
            f"{len(unfinished)} of 400 tasks unfinished 90 s after {old} was killed "
            f"({done_before} done then); their records on {new}: "
            f"{_summaries(client, [f.id for f in unfinished])}")
        finished_in = time.monotonic() - killed_at
        assert batch.status_counts() == status_counts(total=400, success=400)
        records = client.backend.task_records([f.id for f in batch])
        assert all(r["status"] == "success" for r in records)
        assert client.submit(add, 2, 3).result(timeout=30) == 5
    report(f"primary {old} SIGKILLed with {done_before}/400 done; {new} accepted writes "
           f"{replaced_in:.2f} s later; the map finished {finished_in:.2f} s after the kill")


def _summaries(client: yadtq.Client, task_ids: list[str]) -> list[dict[str, object] | None]:
    """What a failure message needs of each task's record (None: no record at all)."""
    fields = ("id", "status", "attempt", "worker", "error")
    return [None if record is None else {name: record.get(name) for name in fields}
            for record in client.backend.task_records(task_ids)[:5]]


def test_a_restarted_old_primary_rejoins_as_a_replica_of_the_new_one(ha) -> None:
    # Given a value written through the sentinels, and the primary killed and replaced
    client = redis_client(ha.redis_url, socket_timeout=5)
    try:
        client.set("sentinel-test:before", "1")
        old = ha.kill_redis_primary()
        new = ha.wait_for_failover(old, timeout=30)
        wait_until(lambda: _writes(client, "sentinel-test:after"), 30,
                   "a write through the sentinels after the failover")

        # When the old primary starts again as it first ran (no --replicaof)
        ha.start_redis_node(old, as_replica=False)

        # Then the sentinels made it a replica of the primary they name, holding both writes
        # (usually the new one; on a loaded machine a sentinel may fail over once more)
        node = redis.Redis(port=ha.redis_port(old), decode_responses=True)
        try:
            info = node.info("replication")
            assert info["role"] == "slave"
            assert info["master_port"] == ha.redis_port(ha.redis_primary()) != ha.redis_port(old)
            assert node.get("sentinel-test:before") == "1"
            assert node.get("sentinel-test:after") == "1"
        finally:
            node.close()
        report(f"{old} killed, {new} promoted, {old} back as a replica of {ha.redis_primary()}")
    finally:
        client.close()


def _writes(client: redis.Redis, key: str) -> bool:
    try:
        return bool(client.set(key, "1"))
    except redis.RedisError:
        return False


def test_a_worker_given_a_sentinel_url_with_redis_serves_tasks(ha, tmp_path) -> None:
    # Given `python -m worker_node --redis redis+sentinel://...`
    unique = uuid.uuid4().hex[:10]
    config = Config(bootstrap=ha.bootstrap, redis_url=ha.redis_url, queue=f"w-{unique}",
                    key_prefix=f"w-{unique}", source="test")
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker_node", "--bootstrap", config.bootstrap,
         "--redis", config.redis_url, "--queue", config.queue,
         "--key-prefix", config.key_prefix, "--tasks", "worker_node.tasks"],
        env=clean_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    try:
        # When a task is submitted through the sentinels
        with yadtq.Client(config) as client:
            client.wait_for_workers(1, timeout=60)
            future = client.submit(add, 20, 22)

            # Then the worker ran it
            assert future.result(timeout=60) == 42
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()


def test_the_cli_given_a_sentinel_url_submits_and_reads_status(ha, cluster, tmp_path) -> None:
    config = cluster.config
    env = {**clean_env(tmp_path), "YADTQ_KEY_PREFIX": config.key_prefix}
    servers = ["--bootstrap", config.bootstrap, "--redis", config.redis_url,
               "--queue", config.queue]

    submitted = subprocess.run(
        [sys.executable, "-m", "yadtq", "submit", "add", "1", "2", *servers],
        env=env, capture_output=True, text=True, timeout=90)
    task_id = submitted.stdout.strip()
    with yadtq.Client(config) as client:
        assert client.get(task_id).result(timeout=60) == 3
    status = subprocess.run([sys.executable, "-m", "yadtq", "status", task_id, *servers],
                            env=env, capture_output=True, text=True, timeout=90)

    assert submitted.returncode == 0, submitted.stderr
    assert status.stdout.strip() == "success", status.stderr


def test_local_up_with_redis_replicas_serves_through_sentinels_and_stops_everything(
        tmp_path) -> None:
    # Given `yadtq local up --redis-replicas 2`, up
    env = clean_env(tmp_path)
    up = subprocess.Popen(
        [sys.executable, "-m", "yadtq", "local", "up", "--workers", "1", "--redis-replicas", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stack: list[psutil.Process] = []
    try:
        assert up.stdout is not None
        lines = Lines(up.stdout)
        lines.wait_for("is up", 120)
        banner = lines.wait_for("Redis", 10)
        stack = descendants(up.pid)
        record = json.loads((tmp_path / "local-stack.json").read_text())

        # When `yadtq status` runs through it
        status = subprocess.run([sys.executable, "-m", "yadtq", "status"], env=env,
                                capture_output=True, text=True, timeout=90)

        # Then it answered, through three sentinels watching three Redis nodes
        assert "redis+sentinel://127.0.0.1:" in banner
        assert status.returncode == 0, status.stderr
        assert {*REDIS_NODES, "sentinel-1", "sentinel-2", "sentinel-3"} <= set(record["pids"])
        assert set(record["pids"].values()) <= {p.pid for p in stack}

        # And SIGTERM stops it cleanly, leaving no process behind
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=90) == 0
        wait_until(lambda: not running(stack), 20, "every process of the stack to be gone")
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        kill_leftovers(stack)
    assert not os.path.exists(tmp_path / "local-stack.json")
