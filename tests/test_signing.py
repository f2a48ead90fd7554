"""One signing rule on every path a task reaches a worker, and no refused task waits for ever.

Workers started with a secret require signed tasks (``YADTQ_REQUIRE_SIGNED``, on by
default with ``YADTQ_SECRET``); a local stack's workers sign-check code and pickles
only. A client without the workers' secret is refused before it sends anything; an
older or hand-written client's tasks are refused by the workers, and end ``failed``
with the reason instead of staying ``queued``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from helpers import dead_letters, wait_until
from kafka import KafkaProducer

import yadtq
from worker_node.tasks import add, spin
from yadtq import protocol
from yadtq.config import Config

SECRET = "signing-secret"
WRONG = {"no secret": None, "a wrong secret": "not-the-workers-secret"}


def produce_raw(config: Config, values: list[bytes]) -> None:
    """Send message values as any Kafka client would: no record, no doorbell."""
    producer = KafkaProducer(bootstrap_servers=config.bootstrap)
    try:
        for value in values:
            producer.send(config.tasks_topic, value=value).get(timeout=30)
    finally:
        producer.close()


def without_precheck(client: yadtq.Client) -> yadtq.Client:
    """A client that sends without asking whether the workers would accept it, as
    clients before the check (and hand-written ones) do."""
    client._acceptance.check = lambda needs_trust=False: None
    return client


def task_keys(client: yadtq.Client) -> list[bytes]:
    return client.backend.redis.keys(client.backend.keys.task("*"))


@pytest.fixture
def signing_workers(config, start_workers):
    """Two workers that require tasks signed with ``SECRET``, settled on their partitions."""
    start_workers(2, worker_env={"YADTQ_SECRET": SECRET})
    with yadtq.Client(dataclasses.replace(config, secret=SECRET)) as signed:
        signed.wait_for_workers(2, timeout=60)
        yield signed


@pytest.mark.parametrize("secret", WRONG.values(), ids=WRONG.keys())
def test_submit_and_map_without_the_workers_secret_raise_naming_it_and_send_nothing(
    config, signing_workers, secret
):
    # Given live workers that require tasks signed with their secret
    # When a client without it submits, and maps
    with yadtq.Client(dataclasses.replace(config, secret=secret)) as client:
        with pytest.raises(yadtq.SecretMismatch, match="YADTQ_SECRET") as submitted:
            client.submit(add, 1, 2)
        with pytest.raises(yadtq.SecretMismatch, match=r"connect\('local'\)"):
            client.map(add, [(1, 2), (3, 4)])

        # Then nothing was written or sent, and the error names the workers
        assert task_keys(client) == []
        assert "local-worker-1" in str(submitted.value)
    # And a client with the secret is served as before
    assert signing_workers.submit(add, 2, 3).result(timeout=30) == 5


@pytest.mark.parametrize("secret", WRONG.values(), ids=WRONG.keys())
def test_a_lone_submit_without_the_secret_fails_naming_it_and_never_runs(
    config, signing_workers, secret, tmp_path
):
    # Given workers that require signatures, and a client that sends without asking
    marker = tmp_path / "ran"
    with without_precheck(yadtq.Client(dataclasses.replace(config, secret=secret))) as client:
        # When it submits a lone task (a doorbell names it: the worker claims its record)
        future = client.submit(spin, 0.1, str(marker))

        # Then the task fails within seconds, saying why
        with pytest.raises(yadtq.TaskFailed) as failed:
            future.result(timeout=30)
    assert "secret" in str(failed.value) or "sign" in str(failed.value)
    assert failed.value.error_type in ("UnsignedTask", "MessageRefused")
    # And its code never ran: no marker, no success in its history
    assert not marker.exists()
    history = signing_workers.history(future.id)
    assert "success" not in [event["event"] for event in history], history


def test_a_refused_map_ends_failed_within_seconds_instead_of_waiting_for_ever(
    config, signing_workers, tmp_path
):
    # Given workers that require signatures, and a client with none that sends anyway
    markers = [tmp_path / f"ran-{i}" for i in range(20)]
    with without_precheck(yadtq.Client(config)) as client:
        # When it maps 20 tasks (their records written, their messages refused)
        batch = client.map(spin, [(0.01, str(m)) for m in markers])

        # Then every task ends failed with the refusal as its error, none ran
        _, not_done = batch.wait(timeout=30)
        assert not not_done
        frame_rows = [client.task_record(task_id) for task_id in batch.ids]
    assert {row["status"] for row in frame_rows} == {"failed"}
    # (refused as messages, or, the first ones a batch's ring had claimed from their
    # records, as unsigned records)
    assert {row["error_type"] for row in frame_rows} <= {"MessageRefused", "UnsignedTask"}
    assert all("not signed" in row["error"] or "without a valid signature" in row["error"]
               for row in frame_rows)
    assert not any(m.exists() for m in markers)
    assert batch.status_counts()["failed"] == 20


def test_an_unsigned_copy_of_a_signed_task_is_dead_lettered_and_leaves_the_task_to_run(
    config, signing_workers
):
    # Given a signed task recorded as queued, whose own message is not yet sent
    message = protocol.build("add", [20, 22])
    signing_workers.backend.enqueue([message])
    future = signing_workers.get(message.id)

    # When a copy of it without a signature reaches the workers first
    produce_raw(config, [protocol.encode(message)])
    letters = dead_letters(config, expected=1)

    # Then the copy is dead-lettered, and the task is still queued for its good message
    assert json.loads(letters[0]["value"])["id"] == message.id
    assert signing_workers.status(message.id) == "queued"
    produce_raw(config, [protocol.encode(message, secret=SECRET)])
    assert future.result(timeout=30) == 42


def test_a_plain_unsigned_message_runs_on_a_local_cluster_whose_workers_trust_code(
    config, start_workers
):
    # Given a local cluster as `yadtq local up` starts it (a secret, trusting code)
    cluster = start_workers(1, trust_code=True)
    assert cluster.config.secret and not cluster.config.signatures_required
    with yadtq.connect(cluster) as q:
        q.wait_for_workers(1, timeout=60)
        # When any Kafka client sends the README's plain message
        task_id = f"hello-{uuid.uuid4().hex[:8]}"
        produce_raw(config, [json.dumps({"task-id": task_id, "task": "add",
                                         "args": [1, 2]}).encode()])

        # Then it runs, and its result is found by id
        wait_until(lambda: q.backend.task_record(task_id), 30, f"a record of {task_id}")
        assert q.get(task_id).result(timeout=30) == 3
        # While a client with another secret is refused before it sends anything
        with yadtq.Client(dataclasses.replace(cluster.config, secret="wrong")) as wrong:
            with pytest.raises(yadtq.SecretMismatch):
                wrong.submit(add, 1, 2)


def test_a_refused_plain_message_leaves_a_failed_record_the_cli_explains(
    config, signing_workers
):
    # Given workers that require signatures
    # When a plain unsigned message (the README's kcat example) reaches them
    task_id = f"hello-{uuid.uuid4().hex[:8]}"
    produce_raw(config, [json.dumps({"task-id": task_id, "task": "add",
                                     "args": [1, 2]}).encode()])

    # Then `yadtq result` says it was refused, and why, instead of "never existed"
    wait_until(lambda: (r := signing_workers.backend.task_record(task_id)) and
               r["status"] == "failed", 30, f"task {task_id} to fail as refused")
    env = {**os.environ, "YADTQ_BOOTSTRAP": config.bootstrap,
           "YADTQ_REDIS_URL": config.redis_url, "YADTQ_QUEUE": config.queue,
           "YADTQ_KEY_PREFIX": config.key_prefix, "YADTQ_SECRET": SECRET}
    shown = subprocess.run([sys.executable, "-m", "yadtq", "result", task_id], env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode != 0
    assert "MessageRefused" in shown.stdout + shown.stderr
    assert "not signed" in shown.stdout + shown.stderr


@pytest.mark.skipif(os.environ.get("YADTQ_TEST_BROKER") != "apache-kafka",
                    reason="kcat (librdkafka 2.0.2) cannot connect to the embedded Tansu "
                    "broker (ApiVersionRequest fails); docs/brokers.md says so")
def test_kcat_delivers_the_readme_plain_message_on_apache_kafka(config, start_workers):
    kcat = shutil.which("kcat")
    if kcat is None:
        if os.environ.get("YADTQ_REQUIRE_KCAT") == "1":
            pytest.fail("kcat is not installed (apt-get install kcat), and CI requires it")
        pytest.skip("kcat is not installed (apt-get install kcat)")
    # Given a local cluster as `yadtq local up` starts it
    cluster = start_workers(1, trust_code=True)
    task_id = f"hello-{uuid.uuid4().hex[:8]}"
    with yadtq.connect(cluster) as q:
        q.wait_for_workers(1, timeout=60)
        # When kcat sends the README's plain message
        subprocess.run([kcat, "-P", "-b", config.bootstrap, "-t", config.tasks_topic],
                       input=json.dumps({"task-id": task_id, "task": "add", "args": [1, 2]}),
                       text=True, check=True, timeout=60)
        # Then it runs
        wait_until(lambda: q.backend.task_record(task_id), 30, f"a record of {task_id}")
        assert q.get(task_id).result(timeout=30) == 3


def test_decoding_names_the_task_a_refused_message_claims_and_whether_it_was_signed() -> None:
    message = protocol.build("add", [1, 2])
    unsigned = protocol.encode(message)
    forged = protocol.encode(message, secret="another")
    signed_but_invalid = protocol.encode(dataclasses.replace(message, attempt=0),
                                         secret=SECRET)
    for data, authentic in ((unsigned, False), (forged, False), (signed_but_invalid, True)):
        with pytest.raises(yadtq.ProtocolError) as refused:
            protocol.decode(data, secret=SECRET)
        assert (refused.value.task_id, refused.value.task, refused.value.authentic) == (
            message.id, "add", authentic)
    # And without requiring signatures an unsigned plain call passes, code never does
    assert protocol.decode(unsigned, secret=SECRET, require_signed=False).id == message.id
    shipped = {**json.loads(unsigned), "pickled": {"sha256": "0" * 64, "bytes": 1}}
    with pytest.raises(yadtq.ProtocolError, match="code or pickled"):
        protocol.decode(json.dumps(shipped).encode(), secret=SECRET, require_signed=False)

