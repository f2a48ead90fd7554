"""What a failover does to Redis's replies and roles, met by the backend (issue 26):
transient replies are transient, a new server gets a restart's grace, and with the
replicated durability no event goes out before a replica has its write.

Each test runs private Redis servers (a primary and, where needed, a replica) from the
same binary as the local stack, so changing their roles touches no other test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from helpers import wait_until

import yadtq
from yadtq import protocol
from yadtq.backend import Outcome, RedisBackend
from yadtq.config import Config
from yadtq.errors import BackendUnavailable
from yadtq.local import LocalCluster, LocalStack, free_port
from yadtq.local.servers import redis_answers, redis_command, resolve_redis_binary
from yadtq.status import TaskStatus

WORKER = "worker-a"


class Server:
    """A private Redis server: its port, its client, and its process."""

    def __init__(self, workdir: Path, replica_of: int | None = None) -> None:
        self.port = free_port()
        data = workdir / f"redis-{self.port}"
        data.mkdir()
        command = redis_command(resolve_redis_binary(), self.port, data, None)
        if replica_of is not None:
            command += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_until(lambda: redis_answers(self.port), 30, f"Redis on {self.port}")
        self.client = redis.Redis(port=self.port)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self) -> None:
        self.client.close()
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(replica_of: int | None = None) -> Server:
        started.append(Server(tmp_path, replica_of))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def on(config: Config, server: Server, **changes: object) -> Config:
    return config.with_overrides(redis_url=f"redis://127.0.0.1:{server.port}/0", **changes)


def queued(backend: RedisBackend, count: int = 1) -> list[protocol.TaskMessage]:
    messages = [protocol.build("add", [i, 1], {}) for i in range(count)]
    backend.enqueue(messages)
    return messages


def test_noreplicas_is_transient_not_a_refusal(config, servers):
    # Given a primary that needs a replica to take writes, and has none
    primary = servers()
    primary.client.config_set("min-replicas-to-write", 1)
    backend = RedisBackend(on(config, primary))
    try:
        # When a task is written, Redis answers NOREPLICAS; it is a "try again later"
        with pytest.raises(BackendUnavailable, match="NOREPLICAS"):
            queued(backend)
    finally:
        backend.close()


def test_a_blocked_wait_unblocked_by_a_role_change_is_transient(config, servers):
    # Given a worker asleep on its doorbells
    primary, other = servers(), servers()
    backend = RedisBackend(on(config, primary))
    caught: list[BaseException] = []

    def sleep_on_doorbells() -> None:
        try:
            backend.wait_for_ring([0, 1], timeout=20)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            caught.append(exc)

    sleeper = threading.Thread(target=sleep_on_doorbells)
    sleeper.start()
    try:
        wait_until(lambda: primary.client.info("clients")["blocked_clients"] == 1, 10,
                   "the worker to block on its doorbells")
        # When its server becomes a replica (a failover demoting it), Redis unblocks it
        primary.client.replicaof("127.0.0.1", other.port)
        sleeper.join(10)
        # Then it is told to try again, not that Redis refused a command
        assert len(caught) == 1 and isinstance(caught[0], BackendUnavailable), caught
        assert "UNBLOCKED" in str(caught[0])
    finally:
        backend.close()


def test_a_server_with_a_new_run_id_gets_the_grace_of_a_restart(backend, config):
    # Given a worker whose task is leased and whose connections are all gone
    [message] = queued(backend)
    holder = RedisBackend(config, worker_id=WORKER)
    [claim] = holder.claim_many([message], WORKER)
    assert claim.claimed
    holder.close()
    wait_until(lambda: backend.redis.info("server")["uptime_in_seconds"] >= 2, 10,
               "the server to be older than the grace")
    reaper = RedisBackend(config, worker_id="reaper")
    clock = [1000.0]
    reaper.holders._monotonic = lambda: clock[0]
    try:
        # When the reaper meets a server it has not seen before (a promoted replica,
        # up for hours), it gives live workers the time to reconnect
        reaper.holders._run_id = "the primary before the failover"
        assert reaper.holders.dead("reaper", restarted_within=1.0) == []
        clock[0] += 0.9
        assert reaper.holders.dead("reaper", restarted_within=1.0) == []
        # Then, once that time has passed, a worker still without a connection is dead
        clock[0] += 0.2
        assert reaper.holders.dead("reaper", restarted_within=1.0) == [
            (message.id, None, WORKER)]
    finally:
        reaper.close()


def test_replicated_durability_sends_no_event_before_a_replica_has_the_write(config, servers):
    # Given a primary with one replica, and a worker that confirms its writes with it
    primary = servers()
    replica = servers(replica_of=primary.port)
    wait_until(lambda: primary.client.info("replication")["connected_slaves"] == 1, 30,
               "the replica to connect")
    worker = RedisBackend(on(config, primary, durability="replicated"), worker_id=WORKER)
    listener = primary.client.pubsub()
    listener.subscribe(worker.keys.events)
    listener.get_message(timeout=5)  # the subscription's confirmation
    try:
        [first, second] = queued(worker, 2)
        [one, two] = worker.claim_many([first, second], WORKER)
        assert json.loads(listener.get_message(timeout=5)["data"])[0]["status"] == "processing"

        # When the replica stalls and the worker stores an outcome
        replica.signal(signal.SIGSTOP)
        with pytest.raises(BackendUnavailable, match="no replica confirmed"):
            worker.finish(Outcome(first.id, None, one.attempt, TaskStatus.SUCCESS, result=3),
                          WORKER)
        # Then no client heard of it, though the primary holds it
        assert listener.get_message(timeout=1) is None
        assert worker.task_record(first.id)["status"] == "success"

        # And once the replica is back, the next confirmed call sends the held events too
        replica.signal(signal.SIGCONT)
        worker.finish(Outcome(second.id, None, two.attempt, TaskStatus.SUCCESS, result=4),
                      WORKER)
        heard = []
        deadline = time.monotonic() + 5
        while len(heard) < 2 and time.monotonic() < deadline:
            message = listener.get_message(timeout=1)
            if message and message["type"] == "message":
                heard += [change["id"] for change in json.loads(message["data"])]
        assert sorted(heard) == sorted([first.id, second.id])
        assert replica.client.hget(worker.keys.task(first.id), "status") == b"success"
        assert not list(primary.client.scan_iter(f"{config.key_prefix}:outbox:*"))
    finally:
        listener.close()
        worker.close()


def test_after_redis_changes_one_worker_recounts_batches_and_runs_stranded_tasks(tmp_path):
    # Given a stack of its own and two workers, a task queued whose message Kafka no longer
    # has (as when a failover takes back a claim whose offset was committed), and a batch
    # whose counters no longer add up (as when it loses part of an enqueue)
    with LocalStack(tmp_path / "stack") as stack, LocalCluster(
        workers=2, stack=stack, queue="failover", key_prefix="failover",
        heartbeat_interval=0.5, lease_seconds=3.0,
    ) as cluster, yadtq.Client(cluster.config) as client:
        client.wait_for_workers(2, timeout=60)
        batch = client.map("add", [(i, i) for i in range(3)])
        batch.results(timeout=60)
        backend = client.backend
        [stranded] = queued(backend)  # a record, and no message
        backend.redis.hset(backend.keys.batch(batch.id), mapping={"success": 1, "queued": 2})
        assert backend.task_record(stranded.id)["status"] == "queued"

        # When Redis is a new server (restarted: its run id changes, as a failover's does)
        stack.restart_redis()

        # Then the stranded task runs and the batch's counters are recounted, once
        wait_until(lambda: backend.task_record(stranded.id)["status"] == "success", 60,
                   "the stranded task to run")
        assert backend.batch_counts(batch.id)["success"] == 3
        assert backend.batch_counts(batch.id)["queued"] == 0
        repairs = [line for worker in cluster.worker_processes for line in
                   worker.log_tail(10**6).splitlines() if "produced again" in line]
        assert len(repairs) == 1, repairs
