"""Reliability and security under faults (issue 4), with real worker processes.

Each test injects one fault into a real broker, Redis and ``python -m worker_node``
processes: SIGKILL, SIGSTOP past the lease, a Redis restart, poison and forged
messages, runaway and flaky tasks, cancellation, a Redis password. Key figures
are printed, so ``pytest -s tests/test_reliability.py`` shows them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import dead_letters, status_counts, wait_until
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import yadtq
from worker_node.tasks import add, fail, flaky, sleep, spin
from yadtq import protocol
from yadtq.config import Config
from yadtq.local import LocalCluster, LocalStack

FINAL_EVENTS = {"success", "failed", "retry", "refused", "cancelled"}


# --- helpers -------------------------------------------------------------------------


def report(text: str) -> None:
    """A measured figure, shown by ``pytest -s``."""
    print(f"\n[reliability] {text}", flush=True)


def histories(client: yadtq.Client, task_ids: list[str]) -> list[list[dict[str, Any]]]:
    """The attempts history of each task, in one round trip."""
    with client.backend.redis.pipeline(transaction=False) as pipe:
        for task_id in task_ids:
            pipe.lrange(client.backend.keys.task_history(task_id), 0, -1)
        return [[json.loads(e) for e in raw] for raw in pipe.execute()]


def events_of(history: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in history]


def unfinished_attempts(history: list[dict[str, Any]], worker: str) -> set[int]:
    """Attempts ``worker`` claimed and never reported an outcome for."""
    claimed = {e["attempt"] for e in history if e["worker"] == worker and e["event"] == "claimed"}
    ended = {e["attempt"] for e in history
             if e["worker"] == worker and e["event"] in FINAL_EVENTS - {"cancelled"}}
    return claimed - ended


def assert_one_accepted_outcome(history: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """Exactly one success, and it is the attempt and worker the record shows."""
    successes = [e for e in history if e["event"] == "success"]
    assert len(successes) == 1, history
    assert events_of(history)[-1] in ("success", "refused"), history
    assert (successes[0]["attempt"], successes[0]["worker"]) == (
        record["attempt"], record["worker"]), (history, record)


def produce_raw(config: Config, values: list[tuple[bytes | None, bytes | None]]) -> list[Any]:
    """Send (key, value) pairs with a plain producer; returns each record's metadata."""
    producer = KafkaProducer(bootstrap_servers=config.bootstrap)
    try:
        sent = [producer.send(config.tasks_topic, value=value, key=key) for key, value in values]
        producer.flush()
        return [future.get(timeout=30) for future in sent]
    finally:
        producer.close()


def signed_message(secret: str, task_id: str, **fields: Any) -> dict[str, Any]:
    payload = protocol.build(fields.pop("task", "add"), fields.pop("args", [1, 2]),
                             task_id=task_id).to_dict()
    payload.update(fields)
    payload["sig"] = protocol.signature(payload, secret)
    return payload


def last_mark(marker: Path) -> float | None:
    """When ``spin`` last wrote to its marker file (unix seconds), or None if never."""
    try:
        lines = marker.read_text().split()
    except FileNotFoundError:
        return None
    return float(lines[-1]) if lines else None


def wait_until_marker_is_quiet(marker: Path, quiet: float = 1.0, timeout: float = 15) -> float:
    """Wait until ``spin`` wrote nothing for ``quiet`` seconds; returns its last write time."""
    last = wait_until(
        lambda: (mark := last_mark(marker)) is not None and time.time() - mark > quiet and mark,
        timeout, f"the marker {marker.name} to stop growing",
    )
    return float(last)


def all_consumed(config: Config) -> bool:
    """True when the worker group has committed every message on the tasks topic."""
    consumer = KafkaConsumer(bootstrap_servers=config.bootstrap, group_id=config.consumer_group,
                             enable_auto_commit=False)
    try:
        partitions = [TopicPartition(config.tasks_topic, p)
                      for p in consumer.partitions_for_topic(config.tasks_topic) or ()]
        ends = consumer.end_offsets(partitions)
        return all((consumer.committed(tp) or 0) >= ends[tp] for tp in partitions)
    finally:
        consumer.close()


def cli_env(config: Config) -> dict[str, str]:
    return {**os.environ, "YADTQ_BOOTSTRAP": config.bootstrap,
            "YADTQ_REDIS_URL": config.redis_url, "YADTQ_QUEUE": config.queue,
            "YADTQ_KEY_PREFIX": config.key_prefix}


# --- crashes and hangs ---------------------------------------------------------------


def test_a_worker_joining_mid_batch_gets_partitions_promptly_and_every_task_runs_once(
    client, start_workers
):
    # Given one worker with messages read ahead from every partition, mid-batch
    cluster = start_workers(1, concurrency=2)
    client.wait_for_workers(1, timeout=60)
    batch = client.map(sleep, [0.03] * 300)
    wait_until(lambda: batch.local_counts()["success"] >= 30, 60, "30 tasks done")

    # When a second worker joins and the group rebalances
    joined = time.monotonic()
    cluster.start_worker()

    # Then the two share the partitions within the usual join time
    client.wait_for_workers(2, timeout=20)
    report(f"rebalance with a second worker settled in {time.monotonic() - joined:.1f} s")

    # And all 300 succeed, each claimed exactly once: no read-ahead message was
    # dropped or run twice across the rebalance
    assert len(batch.results(timeout=120)) == 300
    claims = [events_of(h).count("claimed") for h in histories(client, batch.ids)]
    assert claims == [1] * 300, Counter(claims)
    assert set(batch.snapshot()["per_worker"]) == {"local-worker-1", "local-worker-2"}



def test_sigkill_of_one_of_three_workers_mid_batch_loses_no_task_and_overwrites_no_result(
    client, start_workers
):
    # Given three workers busy with a batch of 500 tasks of 20-50 ms
    cluster = start_workers(3)
    client.wait_for_workers(3, timeout=60)
    rng = random.Random(500)
    batch = client.map(sleep, [round(rng.uniform(0.02, 0.05), 3) for _ in range(500)])
    wait_until(lambda: batch.local_counts()["success"] >= 100, 60, "100 tasks done")

    # When one of them is killed with SIGKILL
    victim = cluster.worker_processes[0]
    killed_at = time.time()
    cluster.kill_worker(0, signal.SIGKILL)

    # Then all 500 succeed and the batch counters agree
    assert len(batch.results(timeout=120)) == 500
    assert batch.status_counts() == status_counts(total=500, success=500)
    ids = [f.id for f in batch]
    records = client.backend.task_records(ids)
    assert all(r["status"] == "success" for r in records)

    # And every task has exactly one accepted result, the one its record shows
    task_histories = histories(client, ids)
    for history, record in zip(task_histories, records, strict=True):
        assert_one_accepted_outcome(history, record)

    # And the victim's in-flight tasks were reaped as soon as its Redis connections were
    # gone, well before its lease would have expired, and finished elsewhere
    in_flight = [(h, r) for h, r in zip(task_histories, records, strict=True)
                 if unfinished_attempts(h, victim.name)]
    assert in_flight, "the victim held no task when it was killed; the test proved nothing"
    recovery = []
    for history, record in in_flight:
        assert record["worker"] != victim.name
        [died] = [e for e in history if e["event"] == "worker died"]
        assert died["worker"] == victim.name, history
        assert died["at"] - killed_at < client.config.lease_seconds, history
        recovery.append(record["finished_at"] - killed_at)
    run_twice = sum(1 for h in task_histories if events_of(h).count("claimed") > 1)
    report(f"SIGKILL: {len(in_flight)} in-flight task(s) of {victim.name} finished elsewhere "
           f"{min(recovery):.2f}-{max(recovery):.2f} s after the kill; 500/500 succeeded, "
           f"0 lost, 0 overwritten, {run_twice} task(s) started more than once")
    assert max(recovery) < 15


def test_worker_stopped_past_its_lease_has_its_tasks_rerun_and_its_late_results_refused(
    client, start_workers
):
    # Given two workers with two slots each, running 1.5 s tasks
    cluster = start_workers(2, concurrency=2)
    client.wait_for_workers(2, timeout=60)
    victim = cluster.worker_processes[0]
    batch = client.map(sleep, [1.5] * 12)
    wait_until(lambda: victim.name in {f.worker for f in batch if f.running()}, 60,
               f"{victim.name} to run a task")

    # When the victim is frozen with SIGSTOP past its 3 s lease
    cluster.kill_worker(0, signal.SIGSTOP)
    stopped_at = time.time()
    wait_until(lambda: _heartbeat_age(client, victim.name) > 1.5, 30, "the heartbeat to stop")
    ids = [f.id for f in batch]
    held = [task_id for task_id, r in zip(ids, client.backend.task_records(ids), strict=True)
            if r["status"] == "processing" and r["worker"] == victim.name]
    assert held, "the victim held no task when it was stopped"

    # Then its tasks are reaped ("lease expired") and succeed on the other worker
    try:
        wait_until(lambda: all(r["status"] == "success"
                               for r in client.backend.task_records(held)), 60,
                   "the victim's tasks to succeed elsewhere")
        rerun_after = max(r["finished_at"] for r in client.backend.task_records(held)) \
            - stopped_at
    finally:
        # When it is resumed with SIGCONT
        cluster.kill_worker(0, signal.SIGCONT)
    for history in histories(client, held):
        assert any(e["event"] == "lease expired" and e["worker"] == victim.name
                   for e in history), history

    # Then its late results are refused, visible in each task's attempts history
    wait_until(lambda: all(any(e["event"] == "refused" and e["worker"] == victim.name
                               for e in history) for history in histories(client, held)),
               30, "the victim's late results to be refused")
    assert len(batch.results(timeout=60)) == 12
    records = client.backend.task_records(ids)
    for task_id, history, record in zip(ids, histories(client, ids), records, strict=True):
        assert_one_accepted_outcome(history, record)
        if task_id in held:
            assert record["worker"] != victim.name and record["attempt"] == 2
            refused = [e for e in history if e["event"] == "refused"]
            assert [(e["worker"], e["attempt"]) for e in refused] == [(victim.name, 1)]
    assert victim.alive
    report(f"SIGSTOP: {len(held)} task(s) of the frozen worker re-ran elsewhere within "
           f"{rerun_after:.2f} s; after SIGCONT its {len(held)} late result(s) were refused")


def _heartbeat_age(client: yadtq.Client, name: str) -> float:
    frame = client.workers()
    row = frame[frame["name"] == name]
    return float(row["heartbeat_age"].iloc[0]) if len(row) else 0.0


def _alive_pids(client: yadtq.Client) -> list[int]:
    frame = client.workers()
    return sorted(frame[frame["status"] == "alive"]["pid"])


def test_redis_restart_mid_batch_loses_nothing_and_workers_and_client_recover_by_themselves(
    tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="yadtq.events")
    # Given a stack of its own (append-only Redis), three workers and a client
    with LocalStack(tmp_path / "stack") as stack, LocalCluster(
        workers=3, stack=stack, queue="restart", key_prefix="restart",
        heartbeat_interval=0.5, lease_seconds=3.0,
    ) as cluster, yadtq.Client(cluster.config) as client:
        client.wait_for_workers(3, timeout=60)
        pids = [w.pid for w in cluster.worker_processes]
        batch = client.map(sleep, [0.02] * 300)
        wait_until(lambda: batch.local_counts()["success"] >= 50, 60, "50 tasks done")

        # When Redis is restarted in the middle of the batch
        outage_started = time.time()
        stack.restart_redis()
        back_at = time.time()
        done_before = batch.local_counts()["success"]

        # Then every task succeeds, with consistent counters, and nothing was lost
        assert len(batch.results(timeout=120)) == 300
        finished_at = time.time()
        assert batch.status_counts() == status_counts(total=300, success=300)
        records = client.backend.task_records([f.id for f in batch])
        assert all(r["status"] == "success" for r in records)
        for history, record in zip(histories(client, [f.id for f in batch]), records,
                                   strict=True):
            assert_one_accepted_outcome(history, record)

        # And the same worker processes and the same client carry on
        assert [w.pid for w in cluster.worker_processes] == pids
        assert all(w.alive for w in cluster.worker_processes)
        wait_until(lambda: _alive_pids(client) == sorted(pids), 30,
                   "the same three workers alive")
        assert client.submit(add, 2, 3).result(timeout=30) == 5

        # And both sides really lost Redis and came back by themselves
        assert any("re-subscribed" in m for m in caplog.messages), caplog.messages
        felt = [w.name for w in cluster.worker_processes
                if "Redis unreachable" in w.log_path.read_text(errors="replace")]
        assert felt, "no worker noticed the restart; the fault was not injected"
    report(f"Redis restart: down {back_at - outage_started:.2f} s with {done_before}/300 done; "
           f"batch finished {finished_at - back_at:.2f} s after Redis was back; 300/300 "
           f"succeeded; {len(felt)} of 3 workers logged the outage and recovered with the same "
           "pids; the client re-subscribed by itself")


# --- poison, hostile and forged input -------------------------------------------------

LIMIT = 4096


def _poison(tag: str) -> list[tuple[str, bytes | None, bytes | None, str]]:
    """1,000 poison messages: (kind, key, value, expected dead-letter reason or final error)."""
    def obj(value: dict[str, Any]) -> bytes:
        return json.dumps(value).encode()

    wrong_types = [
        (lambda i: {"v": 1, "id": f"{tag}-w{i}", "task": "add", "args": "1,2"},
         "field 'args' must be list"),
        (lambda i: {"v": 1, "id": f"{tag}-w{i}", "task": "add", "kwargs": [1]},
         "field 'kwargs' must be dict"),
        (lambda i: {"v": 1, "id": f"{tag}-w{i}", "task": "add", "attempt": "2"},
         "field 'attempt' must be int"),
        (lambda i: {"v": 1, "id": f"{tag}-w{i}", "task": "add", "index": -1},
         "field 'index' must not be negative"),
        (lambda i: {"v": 1, "id": f"{tag}-w{i}", "task": "add", "timeout": 0},
         "field 'timeout' must be a positive number"),
        (lambda i: {"v": 1, "id": f"{tag} w{i}", "task": "add"}, "is not valid"),
        (lambda i: {"v": 1, "id": f"{tag}-w{i}", "task": 7}, "field 'task' must be a task name"),
        (lambda i: {"task_id": f"{tag}-w{i}", "task": "add", "args": {"a": 1}},
         "field 'args' must be list"),
    ]
    missing = [
        (lambda i: {"v": 1, "id": f"{tag}-m{i}"}, "missing field 'task'"),
        (lambda i: {"v": 1, "task": "add", "n": i}, "missing field 'id'"),
        (lambda i: {"task": "add", "args": [i]}, "no task id"),
    ]
    poison: list[tuple[str, bytes | None, bytes | None, str]] = []
    for i in range(100):
        poison.append(("not JSON", None, f"not json {tag} {i} {{".encode(), "not JSON"))
    for i in range(50):
        poison.append(("not UTF-8", None, b"\xff\xfe" + f"{tag}-{i}".encode(), "not UTF-8"))
    for i in range(50):
        poison.append(("not an object", None, obj([tag, i]), "must be a JSON object"))
    for i in range(200):
        make, reason = wrong_types[i % len(wrong_types)]
        poison.append(("wrong type", None, obj(make(i)), reason))
    for i in range(150):
        make, reason = missing[i % len(missing)]
        poison.append(("missing field", None, obj(make(i)), reason))
    for i in range(100):
        poison.append(("unknown version", None,
                       obj({"v": 2, "id": f"{tag}-v{i}", "task": "add"}),
                       "unsupported message version 2"))
    for i in range(100):
        poison.append(("oversized", None,
                       obj({"v": 1, "id": f"{tag}-o{i}", "task": "add", "args": ["x" * LIMIT]}),
                       f"over the {LIMIT}-byte limit"))
    for i in range(50):
        poison.append(("tombstone", f"{tag}-t{i}".encode(), None, "tombstone"))
    # Valid messages that cannot succeed: they end failed, not in the dead-letter topic
    for i in range(150):
        poison.append(("unknown task", None,
                       obj({"v": 1, "id": f"{tag}-u{i}", "task": f"no_such_task_{i}"}),
                       "UnknownTask"))
    for i in range(50):
        poison.append(("raising arguments", None,
                       obj({"v": 1, "id": f"{tag}-r{i}", "task": "add", "args": ["a", i]}),
                       "TypeError"))
    assert len(poison) == 1000
    return poison


def test_1000_poison_messages_mixed_into_1000_tasks_are_dead_lettered_and_no_worker_restarts(
    config, start_workers
):
    # Given three workers and a client with a 4 KiB message limit
    cluster = start_workers(3, worker_env={"YADTQ_MAX_MESSAGE_BYTES": str(LIMIT)})
    pids = [w.pid for w in cluster.worker_processes]
    with yadtq.Client(dataclasses.replace(config, max_message_bytes=LIMIT)) as client:
        client.wait_for_workers(3, timeout=60)
        poison = _poison(uuid.uuid4().hex[:8])
        random.Random(1000).shuffle(poison)

        # When 1,000 poison messages are produced around a batch of 1,000 good tasks
        started = time.monotonic()
        sent = produce_raw(config, [(key, value) for _, key, value, _ in poison[:500]])
        batch = client.map(add, [(i, i) for i in range(1000)])
        sent += produce_raw(config, [(key, value) for _, key, value, _ in poison[500:]])

        # Then all 1,000 good tasks succeed
        assert batch.results(timeout=120) == [2 * i for i in range(1000)]
        batch_seconds = time.monotonic() - started
        assert batch.status_counts()["success"] == 1000

        # And every undecodable message is in the dead-letter topic with its reason
        undecodable = {(m.partition, m.offset): (kind, reason)
                       for (kind, _, _, reason), m in zip(poison, sent, strict=True)
                       if kind not in ("unknown task", "raising arguments")}
        letters = dead_letters(config, until=lambda letters: {
            (x["partition"], x["offset"]) for x in letters} >= set(undecodable))
        found: dict[tuple[int, int], dict[str, Any]] = {}
        for letter in letters:
            assert letter["topic"] == config.tasks_topic, letter
            found[(letter["partition"], letter["offset"])] = letter
        assert set(found) == set(undecodable)
        for where, (kind, reason) in undecodable.items():
            assert reason in found[where]["reason"], (kind, found[where])

        # And the valid but impossible tasks ended failed with the reason, not dead-lettered
        impossible = [(json.loads(value)["id"], reason) for kind, _, value, reason in poison
                      if kind in ("unknown task", "raising arguments")]
        impossible_ids = [task_id for task_id, _ in impossible]
        wait_until(lambda: set(client.backend.statuses(impossible_ids)) == {"failed"},
                   60, "the impossible tasks to fail")
        records = client.backend.task_records(impossible_ids)
        for (task_id, error_type), record in zip(impossible, records, strict=True):
            assert record["error_type"] == error_type, (task_id, record)

        # And no worker exited or restarted
        assert [w.pid for w in cluster.worker_processes] == pids
        assert all(w.alive for w in cluster.worker_processes)
        assert _alive_pids(client) == sorted(pids)
    kinds = Counter(kind for kind, _ in undecodable.values())
    report(f"poison: {len(undecodable)} undecodable messages dead-lettered "
           f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}; "
           f"{len(letters) - len(found)} duplicate letters), {len(impossible)} impossible tasks "
           f"failed, 1000/1000 good tasks in {batch_seconds:.1f} s, same 3 worker pids")


# --- time limits -------------------------------------------------------------------


def test_task_over_its_time_limit_fails_with_task_timeout_and_its_code_is_stopped(
    client, start_workers, tmp_path
):
    # Given a worker in the default process mode
    start_workers(1, concurrency=2)
    marker = tmp_path / "spin.marker"

    # When a 30 s busy loop is submitted with a 1 s time limit
    future = client.submit_with(spin, (30, str(marker)), timeout=1)

    # Then it fails with TaskTimeout after about a second
    with pytest.raises(yadtq.TaskFailed) as caught:
        future.result(timeout=60)
    assert caught.value.error_type == "TaskTimeout"
    assert "was stopped" in caught.value.message
    record = client.task_record(future.id)
    ran_for = record["finished_at"] - record["started_at"]
    assert 1 <= ran_for < 5

    # And its code is no longer running: the marker it wrote every 50 ms stopped growing
    size_at_failure = marker.stat().st_size
    assert len(marker.read_text().split()) >= 5
    last = wait_until_marker_is_quiet(marker)
    assert marker.stat().st_size == size_at_failure
    assert last <= record["finished_at"]

    # And the worker keeps serving
    assert client.submit(add, 1, 2).result(timeout=30) == 3
    report(f"time limit (process mode): TaskTimeout {ran_for:.2f} s after the start; "
           f"the code's last write came {record['finished_at'] - last:.3f} s before the "
           "failure was stored, none after")


def test_in_thread_mode_a_time_limit_is_reported_only_after_the_task_returns(
    client, start_workers, tmp_path
):
    # Given a worker running tasks in its own threads
    start_workers(1, worker_args=["--mode", "thread"])
    marker = tmp_path / "spin.marker"

    # When a 2.5 s busy loop is submitted with a 1 s time limit
    future = client.submit_with(spin, (2.5, str(marker)), timeout=1)

    # Then it fails with TaskTimeout, but only once the code has returned by itself
    with pytest.raises(yadtq.TaskFailed) as caught:
        future.result(timeout=60)
    assert caught.value.error_type == "TaskTimeout"
    assert "thread mode: it ran to its end" in caught.value.message
    record = client.task_record(future.id)
    ran_for = record["finished_at"] - record["started_at"]
    assert ran_for >= 2.5
    assert last_mark(marker) - record["started_at"] >= 2.3
    wait_until_marker_is_quiet(marker, quiet=0.5)
    assert client.submit(add, 1, 2).result(timeout=30) == 3
    report(f"time limit (thread mode): 1 s limit reported as TaskTimeout after {ran_for:.2f} s, "
           "when the code returned")


# --- signed tasks ------------------------------------------------------------------

SECRET = "reliability-secret"


def test_with_a_secret_signed_tasks_run_and_forged_messages_are_dead_lettered_never_run(
    config, start_workers
):
    # Given a worker that requires signed messages, and a client that signs them
    cluster = start_workers(1, worker_env={"YADTQ_SECRET": SECRET})
    with yadtq.Client(dataclasses.replace(config, secret=SECRET)) as signed:
        assert signed.submit(add, 2, 3).result(timeout=60) == 5

        # When forged messages are put on the topic by a plain producer
        tag = uuid.uuid4().hex[:8]
        wrong_sig = {**signed_message(SECRET, f"{tag}-wrong"), "sig": "0" * 64}
        altered = {**signed_message(SECRET, f"{tag}-altered", task="spin"), "args": [30]}
        other_secret = signed_message("another secret", f"{tag}-other")
        unsigned = protocol.build("add", [1, 2], task_id=f"{tag}-unsigned").to_dict()
        plain = {"task-id": f"{tag}-plain", "task": "add", "args": [1, 2]}
        non_ascii = {**signed_message(SECRET, f"{tag}-non-ascii"), "sig": "é" * 64}
        forged = [wrong_sig, altered, other_secret, unsigned, plain, non_ascii]
        produce_raw(config, [(None, json.dumps(m).encode()) for m in forged])

        # Then each is dead-lettered with a reason about its signature
        letters = dead_letters(config, expected=len(forged))
        reasons = {json.loads(letter["value"]).get("id")
                   or json.loads(letter["value"]).get("task-id"): letter["reason"]
                   for letter in letters}
        forged_ids = [m.get("id") or m.get("task-id") for m in forged]
        assert sorted(reasons) == sorted(forged_ids)
        for task_id, reason in reasons.items():
            assert "signature" in reason or "not signed" in reason, (task_id, reason)

        # And none of them ever ran: each has a failed record saying why (none had one),
        # and its history holds the refusal alone, no claim
        for task_id in forged_ids:
            record = wait_until(lambda i=task_id: (r := signed.backend.task_record(i))
                                and r["status"] == "failed" and r, 30,
                                f"task {task_id} to be failed as refused")
            assert record["error_type"] == "MessageRefused", record
            assert reasons[task_id] in record["error"], record
            assert events_of(signed.history(task_id)) == ["failed"]

        # And the worker keeps serving signed tasks
        assert signed.submit(add, 20, 22).result(timeout=30) == 42
        assert cluster.worker_processes[0].alive
    report(f"signed tasks: {len(forged)} forged/unsigned messages dead-lettered: "
           + "; ".join(sorted({r.split(':')[0][:60] for r in reasons.values()})))


# --- retries -----------------------------------------------------------------------


def test_flaky_task_succeeds_on_its_third_attempt_with_two_retries_in_its_history(
    client, start_workers, tmp_path
):
    start_workers(1)
    counter = tmp_path / "flaky.count"

    # When a task that fails twice is mapped with up to three retries
    batch = client.map(flaky, [(str(counter), 2)], max_retries=3, retry_backoff=0.2)

    # Then it succeeds on attempt 3, and the history and the DataFrame show it
    assert batch.results(timeout=60) == [3]
    history = client.history(batch[0].id)
    assert events_of(history) == ["claimed", "retry", "claimed", "retry", "claimed", "success"]
    assert [e["attempt"] for e in history if e["event"] == "retry"] == [1, 2]
    assert all("ConnectionError" in e["detail"] for e in history if e["event"] == "retry")
    assert batch.to_dataframe()["attempt"].tolist() == [3]
    waits = [e["retry_at"] - e["at"] for e in history if e["event"] == "retry"]
    report("retries: succeeded on attempt 3 after backoffs of "
           + ", ".join(f"{w:.2f} s" for w in waits))


def test_task_that_exhausts_its_retries_ends_failed_and_is_dead_lettered(
    client, config, start_workers, tmp_path
):
    start_workers(1)
    counter = tmp_path / "flaky.count"

    future = client.submit_with(flaky, (str(counter), 5), max_retries=2, retry_backoff=0.2)

    with pytest.raises(yadtq.TaskFailed) as caught:
        future.result(timeout=60)
    assert caught.value.error_type == "ConnectionError"
    assert client.task_record(future.id)["attempt"] == 3
    assert events_of(client.history(future.id)) == [
        "claimed", "retry", "claimed", "retry", "claimed", "failed"]
    assert len(counter.read_text().split()) == 3
    [letter] = dead_letters(config, expected=1)
    assert letter["task_id"] == future.id
    assert letter["reason"].startswith("retries exhausted after attempt 3: ConnectionError")


def test_exception_outside_retry_on_is_not_retried(client, start_workers):
    start_workers(1)

    future = client.submit_with(fail, ("not worth retrying",), max_retries=3,
                                retry_on=["ConnectionError"], retry_backoff=0.2)

    with pytest.raises(yadtq.TaskFailed) as caught:
        future.result(timeout=60)
    assert caught.value.error_type == "RuntimeError"
    assert client.task_record(future.id)["attempt"] == 1
    assert events_of(client.history(future.id)) == ["claimed", "failed"]


def test_a_retry_waiting_out_its_backoff_does_not_hold_the_only_slot(
    client, start_workers, tmp_path
):
    # Given a worker with one slot, and a task whose first attempt failed with a 5 s backoff
    start_workers(1, concurrency=1)
    flaky_future = client.submit_with(flaky, (str(tmp_path / "flaky.count"), 1),
                                      max_retries=1, retry_backoff=5)
    retry = wait_until(
        lambda: next((e for e in client.history(flaky_future.id) if e["event"] == "retry"),
                     None), 60, "the first attempt to fail and wait to retry")

    # When another task is submitted while the retry waits
    quick = client.submit(add, 2, 2)

    # Then it completes before the retry is even due
    assert quick.result(timeout=30) == 4
    quick_done = client.task_record(quick.id)["finished_at"]
    assert quick_done < retry["retry_at"]
    assert client.task_record(flaky_future.id)["status"] == "queued"
    # And the retry still runs later, as attempt 2
    assert flaky_future.result(timeout=60) == 2
    assert client.task_record(flaky_future.id)["started_at"] >= retry["retry_at"]
    report(f"retry backoff: another task finished {retry['retry_at'] - quick_done:.2f} s "
           "before the waiting retry was due, on the same single slot")


# --- cancellation ------------------------------------------------------------------


def test_queued_tasks_cancelled_before_any_worker_runs_are_skipped_later(
    client, config, start_workers
):
    # Given two tasks queued while no worker runs
    by_future = client.submit(add, 1, 2)
    by_cli = client.submit(add, 3, 4)
    kept = client.submit(add, 5, 6)

    # When one is cancelled from its future and the other with `yadtq cancel ID`
    assert by_future.cancel() is True
    done = subprocess.run([sys.executable, "-m", "yadtq", "cancel", by_cli.id],
                          env=cli_env(config), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cancelled {by_cli.id}"
    again = subprocess.run([sys.executable, "-m", "yadtq", "cancel", by_cli.id],
                           env=cli_env(config), capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already cancelled" in again.stderr
    wait_until(by_cli.cancelled, 10, "the future to hear of the cancellation")

    # And a worker starts and consumes every message on the topic
    start_workers(1)
    assert kept.result(timeout=60) == 11
    wait_until(lambda: all_consumed(config), 60, "the worker to consume every message")

    # Then the cancelled tasks stayed cancelled and were never claimed
    for future in (by_future, by_cli):
        assert client.status(future.id) == "cancelled"
        assert events_of(client.history(future.id)) == ["cancelled"]
        assert future.cancelled()


def test_cancelling_a_running_task_in_process_mode_stops_its_code(
    client, start_workers, tmp_path
):
    # Given a busy loop running on a worker in process mode
    start_workers(1)
    marker = tmp_path / "spin.marker"
    future = client.submit_with(spin, (30, str(marker)))
    wait_until(lambda: future.running() and marker.exists()
               and len(marker.read_text().split()) >= 5, 60, "the loop to run")

    # When it is cancelled
    cancelled_at = time.time()
    assert future.cancel() is True

    # Then its code stops, its status is cancelled, and its late outcome is refused
    last = wait_until_marker_is_quiet(marker)
    assert client.status(future.id) == "cancelled"
    assert future.cancelled()
    wait_until(lambda: "refused" in events_of(client.history(future.id)), 30,
               "the stopped attempt's outcome to be refused")
    assert events_of(client.history(future.id)) == ["claimed", "cancelled", "refused"]
    # And the slot serves the next task
    assert client.submit(add, 1, 2).result(timeout=30) == 3
    report(f"cancel (process mode): the running code's last write came "
           f"{last - cancelled_at:.2f} s after cancel()")
    assert last - cancelled_at < 5


def test_cancelling_a_batch_with_no_workers_cancels_every_task(client):
    batch = client.map(add, [(i, i) for i in range(50)])

    assert batch.cancel() == 50

    assert all(f.cancelled() for f in batch)
    assert set(client.backend.statuses([f.id for f in batch])) == {"cancelled"}
    assert batch.status_counts() == status_counts(total=50, cancelled=50)
    assert batch.cancel() == 0


# --- Redis credentials -------------------------------------------------------------

PASSWORD = "s3cret"


@pytest.fixture(scope="module")
def password_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """An embedded stack whose Redis requires a password."""
    with LocalStack(tmp_path_factory.mktemp("auth"), redis_password=PASSWORD) as running:
        yield running


def test_redis_with_a_password_works_with_the_right_url_and_fails_clearly_with_a_wrong_one(
    password_stack,
):
    # Given an embedded stack whose Redis requires a password, and a worker on it
    stack = password_stack
    with LocalCluster(
        workers=1, stack=stack, queue="auth", heartbeat_interval=0.5, lease_seconds=3.0,
    ) as cluster:
        # Then a client with the right URL works end to end
        with yadtq.Client(cluster.config) as client:
            assert client.submit(add, 1, 2).result(timeout=60) == 3

        # And a wrong or missing password fails at once, saying so
        port = stack.redis_url.rsplit(":", 1)[1].split("/")[0]
        for url in (f"redis://:wrong@127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/0"):
            with pytest.raises(yadtq.BackendUnavailable) as caught:
                yadtq.Client(dataclasses.replace(cluster.config, redis_url=url))
            text = str(caught.value)
            assert "password" in text or "credentials" in text, text
            assert PASSWORD not in text


def test_errors_and_reprs_do_not_reveal_the_redis_password(password_stack):
    config = Config(bootstrap=password_stack.bootstrap, redis_url=password_stack.redis_url,
                    queue="auth-leak")
    with yadtq.Client(config) as client:
        with pytest.raises(yadtq.TaskNotFound) as caught:
            client.task_record("nope")
        shown = [str(caught.value), repr(client), repr(config)]
    assert [PASSWORD in text for text in shown] == [False, False, False], shown
