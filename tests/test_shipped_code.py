"""Functions defined in a notebook or ``__main__``, shipped by value to workers that trust
signed code, with any picklable values and payloads of any size (issue 11).

The functions under test are defined by ``exec`` in a namespace named ``__main__``,
as a notebook cell's are, so cloudpickle ships them by value: the workers cannot
import this test module.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy
import pandas
import pytest
from helpers import dead_letters, wait_until

import yadtq
from worker_node.tasks import add
from yadtq import protocol, values
from yadtq.config import Config
from yadtq.local import LocalCluster, LocalStack
from yadtq.shipping import Shipment, StoredResult

CELL = '''
import numpy
import pandas

OFFSET = 10

def shift(x):
    return x + OFFSET

def scale_frame(frame, factor):
    out = frame * factor
    out["total"] = out.sum(axis=1)
    return out

def make_adder(n):
    def adder(x):
        return x + n
    return adder

def double_array(a):
    return a * 2

def refuse(x):
    raise ValueError(f"refused {x}")

def unpicklable(x):
    import threading
    return threading.Lock()

def touch(path):
    open(path, "w").close()
    return path
'''


def in_main(source: str) -> dict[str, Any]:
    """Run ``source`` as a notebook cell runs: in a namespace called ``__main__``."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, "<cell>", "exec"), namespace)  # noqa: S102 - the test's own source
    return namespace


@pytest.fixture(scope="module")
def cell() -> dict[str, Any]:
    return in_main(CELL)


@pytest.fixture(scope="module")
def trusting(stack: LocalStack) -> Iterator[LocalCluster]:
    """Two workers that trust code signed with the cluster's own random secret."""
    queue = f"ship-{uuid.uuid4().hex[:8]}"
    with LocalCluster(workers=2, stack=stack, queue=queue, key_prefix=queue,
                      heartbeat_interval=0.5, lease_seconds=3.0) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def q(trusting: LocalCluster) -> Iterator[yadtq.Client]:
    with yadtq.Client(trusting.config) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


def test_a_local_cluster_trusts_code_signed_with_a_secret_of_its_own(
        trusting: LocalCluster) -> None:
    assert trusting.config.trust_code and len(trusting.config.secret or "") == 64
    assert "trusting code" in repr(trusting)
    with LocalCluster(workers=0, stack=trusting.stack) as other:
        assert other.config.secret != trusting.config.secret


def test_a_function_defined_in_main_runs_by_value_and_keeps_its_name(
        q: yadtq.Client, cell: dict[str, Any]) -> None:
    # When a function defined in __main__ that reads a global is mapped
    batch = q.map(cell["shift"], range(20))

    # Then it runs on the workers, and the batch shows its name
    assert batch.results(timeout=60) == [i + 10 for i in range(20)]
    frame = batch.to_dataframe()
    assert set(frame["task"]) == {"shift"} and list(frame["args"]) == [(i,) for i in range(20)]
    assert set(frame["status"]) == {"success"}


def test_closures_lambdas_partials_and_installed_functions_all_run(
        q: yadtq.Client, cell: dict[str, Any]) -> None:
    adder = cell["make_adder"](5)
    futures = [q.submit(adder, 1), q.submit(lambda x: x * 3, 4),
               q.submit(functools.partial(cell["shift"]), 1), q.submit(numpy.sum, [1, 2, 3])]

    assert [f.result(timeout=60) for f in futures] == [6, 12, 11, 6]
    assert futures[1].task.endswith("lambda") and futures[3].task == "numpy.sum"


def test_numpy_and_pandas_values_go_both_ways(q: yadtq.Client, cell: dict[str, Any]) -> None:
    frame = pandas.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})

    scaled = q.submit(cell["scale_frame"], frame, factor=2).result(timeout=60)
    doubled = q.submit(cell["double_array"], numpy.arange(6).reshape(2, 3)).result(timeout=60)
    kept = q.submit(cell["shift"], numpy.float32(1.5)).result(timeout=60)

    pandas.testing.assert_frame_equal(scaled, pandas.DataFrame(
        {"a": [2.0, 4.0], "b": [6.0, 8.0], "total": [8.0, 12.0]}))
    numpy.testing.assert_array_equal(doubled, numpy.arange(6).reshape(2, 3) * 2)
    assert isinstance(kept, numpy.float32) and kept == numpy.float32(11.5)


def test_a_16_mb_array_goes_and_comes_back_by_reference_not_through_kafka(
        q: yadtq.Client, cell: dict[str, Any]) -> None:
    # Given a 16 MB array
    array = numpy.arange(2 * 1024 * 1024, dtype=numpy.float64)

    # When it is the argument and the result
    future = q.submit(cell["double_array"], array)
    result = future.result(timeout=60)

    # Then it comes back whole, and the message and record hold only references
    numpy.testing.assert_array_equal(result, array * 2)
    record = q.task_record(future.id)
    assert "data" not in json.loads(record["pickled"])
    stored = record["result"][values.RESULT_MARKER]
    assert "data" not in stored and stored["type"] == "numpy.ndarray"
    assert stored["bytes"] > 16_000_000


def test_to_dataframe_leaves_large_results_in_redis_until_asked(
        q: yadtq.Client, cell: dict[str, Any]) -> None:
    batch = q.map(cell["double_array"], [numpy.zeros(100_000), numpy.ones(3)])
    batch.wait(timeout=60)

    big, small = batch.to_dataframe()["result"]

    assert isinstance(big, StoredResult) and "numpy.ndarray" in repr(big)
    numpy.testing.assert_array_equal(big.load(), numpy.zeros(100_000))
    numpy.testing.assert_array_equal(small, numpy.ones(3) * 2)


def test_the_function_is_stored_once_per_map_not_once_per_task(
        q: yadtq.Client, cell: dict[str, Any]) -> None:
    # Given a fresh function, so no earlier test stored it
    fresh = in_main("def triple(x):\n    return 3 * x\n")["triple"]

    batch = q.map(fresh, range(200))

    assert batch.results(timeout=60) == [3 * i for i in range(200)]
    blobs = list(q.backend.redis.scan_iter(match=f"{q.config.key_prefix}:blob:*"))
    records = q.backend.task_records(batch.ids)
    assert len({json.loads(r["code"])["ref"]["sha256"] for r in records}) == 1
    assert sum(1 for key in blobs if key.decode().endswith(
        json.loads(records[0]["code"])["ref"]["sha256"])) == 1


def test_an_exception_in_shipped_code_keeps_its_type_message_and_traceback(
        q: yadtq.Client, cell: dict[str, Any]) -> None:
    with pytest.raises(yadtq.TaskFailed) as caught:
        q.submit(cell["refuse"], 7).result(timeout=60)

    assert caught.value.error_type == "ValueError"
    assert caught.value.message == "refused 7"
    assert "in refuse" in caught.value.traceback
    assert caught.value.traceback.rstrip().endswith("ValueError: refused 7")


def test_a_result_that_cannot_be_pickled_fails_the_task_not_the_worker(
        q: yadtq.Client, cell: dict[str, Any]) -> None:
    with pytest.raises(yadtq.TaskFailed) as caught:
        q.submit(cell["unpicklable"], 1).result(timeout=60)

    assert caught.value.error_type == "TypeError"
    assert "cannot be pickled" in caught.value.message
    assert q.submit(add, 1, 2).result(timeout=60) == 3


def test_a_registered_task_takes_non_json_arguments_from_a_trusting_client(
        q: yadtq.Client) -> None:
    assert q.submit(add, numpy.int64(2), numpy.int64(3)).result(timeout=60) == 5


def test_a_client_without_a_secret_refuses_to_ship_a_function_and_says_what_to_do(
        config: Config, cell: dict[str, Any]) -> None:
    with yadtq.Client(config) as client, pytest.raises(yadtq.UntrustedCode) as caught:
        client.submit(cell["shift"], 1)

    text = str(caught.value)
    assert "'shift'" in text and "YADTQ_SECRET" in text and "--trust-code" in text
    assert "@yadtq.task" in text


def test_a_client_without_a_secret_names_the_way_to_send_non_json_arguments(
        config: Config) -> None:
    with yadtq.Client(config) as client, pytest.raises(TypeError) as caught:
        client.submit(add, {1, 2}, 3)

    assert "JSON" in str(caught.value) and "YADTQ_SECRET" in str(caught.value)


def test_a_worker_with_the_secret_that_does_not_trust_code_fails_shipped_code_unloaded(
        stack: LocalStack, config: Config, cell: dict[str, Any], tmp_path: Path) -> None:
    # Given a worker that has the secret but was not started to trust code
    secret = uuid.uuid4().hex
    signed = dataclasses.replace(config, secret=secret)
    with LocalCluster(workers=1, stack=stack, queue=config.queue, key_prefix=config.key_prefix,
                      heartbeat_interval=0.5, lease_seconds=3.0, trust_code=False,
                      settings={"secret": secret}), yadtq.Client(signed) as client:
        client.wait_for_workers(1, timeout=60)
        canary = tmp_path / "ran"

        # When a shipped function is submitted
        future = client.submit(cell["touch"], str(canary))

        # Then it fails, saying the worker does not trust code, and never ran
        with pytest.raises(yadtq.TaskFailed) as caught:
            future.result(timeout=60)
        assert caught.value.error_type == "UntrustedCode"
        assert "does not trust shipped code" in caught.value.message
        assert "--trust-code" in caught.value.message
        assert not canary.exists()


def test_code_signed_with_a_wrong_secret_is_dead_lettered_and_never_runs(
        trusting: LocalCluster, cell: dict[str, Any], tmp_path: Path) -> None:
    # Given a client whose secret is not the workers'
    forger = dataclasses.replace(trusting.config, secret="not the cluster's secret")
    canary = tmp_path / "ran"
    with yadtq.Client(forger) as client:
        # When it ships a function, it is refused before anything is sent
        with pytest.raises(yadtq.SecretMismatch, match="YADTQ_SECRET"):
            client.submit(cell["touch"], str(canary))
        # And when it sends anyway (skipping that check, as a hand-made client would)
        client._acceptance.check = lambda needs_trust=False: None
        future = client.submit(cell["touch"], str(canary))

        # Then the message is dead-lettered for its signature, the task fails, and the
        # code never runs
        letters = dead_letters(trusting.config, until=lambda found: any(
            future.id in letter.get("value", "") for letter in found))
        with pytest.raises(yadtq.TaskFailed):
            future.result(timeout=30)
    [letter] = [x for x in letters if future.id in x.get("value", "")]
    assert "signature" in letter["reason"]
    assert not canary.exists()


def test_shipped_code_from_another_python_version_fails_naming_both_versions(
        q: yadtq.Client, cell: dict[str, Any]) -> None:
    # Given a message whose function was pickled by another Python
    shipment = Shipment(cell["shift"], q.config)
    message = dataclasses.replace(shipment.message([1], {}), python="2.7")
    q.backend.put_blobs(shipment.blobs)
    q.backend.enqueue([message])
    q._producer.send(q.config.tasks_topic,
                     protocol.encode(message, q.config.max_message_bytes, q.config.secret))
    q._producer.flush()

    # Then it fails, naming the client's and the worker's versions
    with pytest.raises(yadtq.TaskFailed) as caught:
        q.get(message.id).result(timeout=60)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert caught.value.error_type == "PythonVersionMismatch"
    assert "2.7" in caught.value.message and here in caught.value.message


def test_a_payload_over_the_maximum_is_refused_before_anything_is_sent(
        trusting: LocalCluster, cell: dict[str, Any]) -> None:
    small = dataclasses.replace(trusting.config, max_payload_bytes=1_000_000)
    with yadtq.Client(small) as client, pytest.raises(yadtq.MessageTooLarge) as caught:
        client.map(cell["double_array"], [numpy.zeros(10), numpy.zeros(1_000_000)])

    assert "item 1 of map" in str(caught.value) and "YADTQ_MAX_PAYLOAD_BYTES" in str(caught.value)


def test_a_pickled_result_is_not_loaded_without_the_secret(
        q: yadtq.Client, cell: dict[str, Any]) -> None:
    future = q.submit(cell["shift"], 1)
    assert future.result(timeout=60) == 11

    stranger = dataclasses.replace(q.config, secret="someone else")
    with yadtq.Client(stranger) as client:
        wait_until(lambda: client.status(future.id) == "success", 10, "the stored result")
        with pytest.raises(yadtq.UntrustedCode, match="not signed with this client's secret"):
            client.get(future.id).result(timeout=10)
