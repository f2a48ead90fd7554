"""The queue's counters (issue 25): moved by the scripts with the states, so they equal a
recount of the task records, whatever path the tasks took, and `yadtq status` prints them."""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
import uuid

from helpers import wait_until
from kafka import KafkaProducer

import yadtq
from yadtq.backend.records import text
from yadtq.status import FINISHED, TaskStatus


def recount(client: yadtq.Client) -> tuple[collections.Counter, collections.Counter]:
    """Every task record of the test's queue: how many in each status, and the final ones
    per (task name, status)."""
    redis, prefix = client.backend.redis, client.config.key_prefix
    statuses: collections.Counter = collections.Counter()
    outcomes: collections.Counter = collections.Counter()
    for key in redis.scan_iter(f"{prefix}:task:*", count=1000):
        name = text(key)
        if name.count(":") != 2:  # :attempts, :children
            continue
        status, task = (text(value) for value in redis.hmget(name, "status", "task"))
        statuses[status] += 1
        if TaskStatus(status) in FINISHED:
            outcomes[(task, status)] += 1
    return statuses, outcomes


def test_counters_equal_a_recount_of_the_records_whatever_path_the_tasks_took(
    client, config, start_workers, tmp_path
):
    # Given two workers
    start_workers(2, concurrency=2)

    # When tasks succeed, fail, retry, wait out a countdown, are cancelled while scheduled,
    # are skipped because a parent failed, and a worker refuses a message (dead letter)
    batch = client.map("add", [(i, i) for i in range(20)])
    failures = client.map("fail", [("boom",)] * 3)
    flaky = client.submit_with("flaky", (str(tmp_path / "flaky-counter"), 1), max_retries=2,
                               retry_backoff=0.1)
    later = client.submit_with("add", (1, 1), countdown=0.3)
    never = client.submit_with("add", (2, 2), countdown=600)
    assert client.cancel(never.id)
    parent = client.submit("fail", "parent fails")
    child = client.submit("add", parent, 1)
    refused = uuid.uuid4().hex
    producer = KafkaProducer(bootstrap_servers=config.bootstrap)
    producer.send(config.tasks_topic, json.dumps(
        {"task_id": refused, "task": "add", "args": "not a list"}).encode())
    producer.flush()
    producer.close()
    batch.wait(timeout=60)
    failures.wait(timeout=60)
    for future in (flaky, later, parent, child):
        future.exception(timeout=60)
    wait_until(lambda: client.backend.task_record(refused), 60, "the refused task's record")

    # Then the counters equal a recount of the records: in each status, per outcome, in all
    stats = client.stats()
    statuses, outcomes = recount(client)
    assert stats.submitted == sum(statuses.values()) == 29
    assert {s: n for s, n in stats.statuses.items() if n} == dict(statuses)
    assert stats.outcomes == dict(outcomes)
    assert stats.outcomes[("add", "success")] == 21
    assert stats.outcomes[("flaky", "success")] == 1
    assert stats.outcomes[("fail", "failed")] == 4
    assert stats.outcomes[("add", "skipped")] == 1
    assert stats.outcomes[("add", "cancelled")] == 1
    assert stats.outcomes[("add", "failed")] == 1  # the refused message
    assert (stats.retries, stats.dead_lettered, stats.requeued) == (1, 1, 0)
    assert all(stats.statuses[s.value] == 0 for s in TaskStatus if s not in FINISHED)

    # And `yadtq status` without an id prints the same
    printed = subprocess.run(
        [sys.executable, "-m", "yadtq", "status"], capture_output=True, text=True, timeout=60,
        env={**config.to_environment(), "PATH": "/usr/bin:/bin"}, check=True).stdout
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in printed.splitlines())
    assert rows["submitted"] == "29"
    assert rows["success"] == "22" and rows["failed"] == "5" and rows["skipped"] == "1"
    assert rows["retries"] == "1" and rows["dead-lettered"] == "1"
    assert rows["workers alive"].startswith("2 (4 slots")


def test_a_task_requeued_after_its_worker_died_moves_the_counters_once(
    client, config, start_workers
):
    # Given a worker running a long task
    cluster = start_workers(1, concurrency=1)
    future = client.submit("sleep", 30)
    wait_until(lambda: client.status(future.id) == TaskStatus.PROCESSING, 60, "it to start")
    assert client.stats().statuses["processing"] == 1

    # When the worker is killed and another takes the task up
    cluster.kill_worker(0)
    start_workers(1, concurrency=1)
    wait_until(lambda: int(client.backend.task_record(future.id)["attempt"]) == 2, 60,
               "the task to be queued again")
    assert client.cancel(future.id)

    # Then it was requeued once and ended once
    stats = client.stats()
    assert stats.requeued == 1
    assert stats.outcomes == {("sleep", "cancelled"): 1}
    assert stats.statuses["processing"] == stats.statuses["queued"] == 0
