"""What a new user broke (issue 15): Redis stalls and restarts, raw errors, public names,
records left ``queued`` by a failed produce.

A test that stalls, restarts or kills a server starts a stack of its own, so the
session's stack is never hurt; a stalled Redis is always continued in a ``finally``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import status_counts, wait_until

import yadtq
from worker_node.tasks import add, sleep
from yadtq.backend import PIPELINE_CHUNK
from yadtq.backend.redis_errors import is_transient
from yadtq.broker import producer
from yadtq.config import Config
from yadtq.local import LocalCluster, LocalStack
from yadtq.waking import FIRST_MAP_CHUNK

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def redis_stalled(stack: LocalStack) -> Iterator[None]:
    """Redis frozen (SIGSTOP) for the block, continued afterwards whatever happens."""
    pid = stack.pids["redis"]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _histories_have_one_accepted_outcome(client: yadtq.Client, ids: list[str]) -> None:
    for task_id in ids:
        accepted = [e for e in client.history(task_id) if e["event"] in ("success", "failed")]
        assert len(accepted) == 1, (task_id, client.history(task_id))


# --- item 1: workers outlive Redis stalls and restarts ----------------------------------

@pytest.mark.parametrize("stall_seconds", [7.0, 20.0])
def test_a_redis_stall_past_the_socket_timeout_mid_batch_kills_no_worker_and_loses_nothing(
    tmp_path: Path, stall_seconds: float
) -> None:
    # Given two workers of a stack of its own, busy with a batch
    with LocalStack(tmp_path / "stack") as stack, LocalCluster(
        workers=2, stack=stack, queue="stall", key_prefix="stall",
        heartbeat_interval=0.5, lease_seconds=3.0,
    ) as cluster, yadtq.Client(cluster.config) as client:
        client.wait_for_workers(2, timeout=60)
        pids = [w.pid for w in cluster.worker_processes]
        batch = client.map(sleep, [0.05] * 200)
        wait_until(lambda: batch.local_counts()["success"] >= 20, 60, "20 tasks done")

        # When Redis stalls for longer than a command's socket timeout
        with redis_stalled(stack):
            time.sleep(stall_seconds)  # the fault's length, not a wait for anything
            stalled_alive = [w.alive for w in cluster.worker_processes]

        # Then every task succeeds once, and the same workers are alive throughout
        assert len(batch.results(timeout=120)) == 200
        assert batch.status_counts() == status_counts(total=200, success=200)
        _histories_have_one_accepted_outcome(client, batch.ids)
        assert stalled_alive == [True, True]
        assert [w.pid for w in cluster.worker_processes if w.alive] == pids, [
            w.log_tail() for w in cluster.worker_processes]
        assert client.submit(add, 2, 3).result(timeout=30) == 5
        logs = [w.log_path.read_text(errors="replace") for w in cluster.worker_processes]
        assert any("Redis unreachable" in log for log in logs), "the stall was not felt"


def test_idle_workers_outlive_a_redis_stall_and_a_restart_and_then_run_a_lone_task(
    tmp_path: Path,
) -> None:
    # Given two idle workers, each looking for tasks to steal in the other's partitions
    with LocalStack(tmp_path / "stack") as stack, LocalCluster(
        workers=2, stack=stack, queue="idle", key_prefix="idle",
        heartbeat_interval=0.5, lease_seconds=3.0,
    ) as cluster, yadtq.Client(cluster.config) as client:
        client.wait_for_workers(2, timeout=60)
        pids = [w.pid for w in cluster.worker_processes]
        # A finished batch leaves the stealers looking at their shortest interval.
        assert client.map(add, [(i, i) for i in range(50)]).results(timeout=60)

        # When Redis stalls (a stealer's look then times out), and is then restarted
        with redis_stalled(stack):
            time.sleep(7.0)  # the fault's length, not a wait for anything
        stack.restart_redis()

        # Then both workers carry on and run a lone task submitted afterwards
        wait_until(lambda: sorted(client.workers().query("status == 'alive'")["pid"])
                   == sorted(pids), 30, "both workers alive after the restarts")
        assert client.submit(add, 20, 22).result(timeout=30) == 42
        assert all(w.alive for w in cluster.worker_processes), [
            w.log_tail() for w in cluster.worker_processes]


@pytest.mark.parametrize("error", [
    redis.ConnectionError("Connection reset by peer"),
    redis.TimeoutError("Timeout reading from socket"),
    redis.BusyLoadingError("Redis is loading the dataset in memory"),
    redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    redis.ResponseError("BUSY Redis is busy running a script."),
    redis.ResponseError("LOADING Redis is loading the dataset in memory"),
    redis.ResponseError("MASTERDOWN Link with MASTER is down"),
    redis.exceptions.TryAgainError("Multiple keys request during rehashing of slot"),
], ids=lambda e: type(e).__name__ + ":" + str(e).split()[0])
def test_errors_a_restarting_or_failing_over_redis_gives_are_transient(error: Exception) -> None:
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    redis.AuthenticationError("invalid username-password pair"),
    redis.ResponseError("ERR Error running script"),
], ids=lambda e: str(e).split()[0])
def test_errors_trying_again_will_not_cure_are_not_transient(error: Exception) -> None:
    assert not is_transient(error)


# --- item 2: only yadtq errors reach users, within a bounded time -----------------------

@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack for the tests that stall its Redis."""
    with LocalStack(tmp_path_factory.mktemp("own-stack")) as running:
        yield running


def _public_calls(client: yadtq.Client, task_id: str, batch: yadtq.TaskBatch
                  ) -> dict[str, Callable[[], Any]]:
    return {
        "submit": lambda: client.submit(add, 1, 2),
        "map": lambda: client.map(add, [(1, 2), (3, 4)]),
        "status": lambda: client.status(task_id),
        "get": lambda: client.get(task_id),
        "get_batch": lambda: client.get_batch(batch.id),
        "cancel": lambda: client.cancel(task_id),
        "task_record": lambda: client.task_record(task_id),
        "history": lambda: client.history(task_id),
        "workers": client.workers,
        "status_counts": batch.status_counts,
        "to_dataframe": batch.to_dataframe,
        "batch.cancel": batch.cancel,
    }


def test_during_a_redis_stall_every_public_call_raises_backend_unavailable_promptly(
    own_stack: LocalStack,
) -> None:
    # Given a client (one-second timeouts) with a task and a batch, and no workers
    unique = uuid.uuid4().hex[:8]
    config = Config(bootstrap=own_stack.bootstrap, redis_url=own_stack.redis_url,
                    queue=f"stall-{unique}", key_prefix=f"stall-{unique}", connect_timeout=1.0)
    with yadtq.Client(config) as client:
        task_id = client.submit(add, 1, 2).id
        batch = client.map(add, [(1, 1), (2, 2)])
        calls = _public_calls(client, task_id, batch)

        # When Redis stalls, then each public call
        outcomes: dict[str, tuple[str, float, str]] = {}
        with redis_stalled(own_stack):
            for name, call in calls.items():
                started = time.monotonic()
                try:
                    call()
                    outcome, text = "returned", ""
                except Exception as exc:  # noqa: BLE001 - what leaks is the point
                    outcome, text = type(exc).__module__ + "." + type(exc).__name__, str(exc)
                outcomes[name] = (outcome, time.monotonic() - started, text)

    # Then raises BackendUnavailable naming the address, within twice the timeout
    address = config.redis_url.split("//", 1)[1].rstrip("/0").rstrip("/")
    for name, (outcome, seconds, text) in outcomes.items():
        assert outcome == "yadtq.BackendUnavailable", (name, outcome, text)
        assert address in text and "try again" in text, (name, text)
        assert seconds < 2 * config.connect_timeout + 1, (name, seconds)


def test_a_stopped_redis_gives_backend_unavailable_not_a_redis_error(tmp_path: Path) -> None:
    # Given a client of a stack whose Redis is then stopped for good
    with LocalStack(tmp_path / "stack") as stack:
        config = Config(bootstrap=stack.bootstrap, redis_url=stack.redis_url,
                        queue="stopped", key_prefix="stopped", connect_timeout=1.0)
        with yadtq.Client(config) as client:
            task_id = client.submit(add, 1, 2).id
            os.kill(stack.pids["redis"], signal.SIGKILL)
            # Then lookups raise the yadtq error, with the address and what to do
            for call in (lambda: client.status(task_id), client.workers,
                         lambda: client.submit(add, 1, 2)):
                with pytest.raises(yadtq.BackendUnavailable, match="check that it is running"):
                    call()


# --- item 5: every yadtq.<Name> the docs and notebooks use exists -----------------------

# Span names and span attributes (docs/tracing.md): OpenTelemetry's names, not Python's.
_TELEMETRY_NAMES = re.compile(r"yadtq\.(?:submit|map|run) <task>"
                              r"|yadtq\.(?:task_id|batch_id|attempt)\b")


def _names_used_in_docs() -> dict[str, set[str]]:
    """Names of yadtq the docs (README.md, docs/) and the notebooks' cells use, with where.

    ``yadtq.<Name>`` and ``from yadtq import <Name>`` (not topic names such as
    ``yadtq.default.tasks``), and any yadtq error class named on its own, as in
    "fails with `TaskTimeout`", since users then catch it as ``yadtq.TaskTimeout``.
    """
    texts = {"README.md": (ROOT / "README.md").read_text()}
    for page in sorted((ROOT / "docs").glob("*.md")):
        texts[f"docs/{page.name}"] = page.read_text()
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        texts[notebook.name] = "\n".join("".join(cell["source"]) for cell in cells)
    errors = {name for name, value in vars(yadtq.errors).items()
              if isinstance(value, type) and issubclass(value, yadtq.YadtqError)}
    used: dict[str, set[str]] = {}
    for where, text in texts.items():
        text = _TELEMETRY_NAMES.sub("", text)
        names = re.findall(r"(?<![\w.-])yadtq\.([A-Za-z_]\w*)\b(?!\.(?:tasks|dlq|workers)\b)",
                           text)
        for imported in re.findall(r"from yadtq import \(?([\w ,\n]+)\)?", text):
            names += re.findall(r"\w+", imported)
        names += [n for n in re.findall(r"\b[A-Z]\w+\b", text) if n in errors]
        for name in names:
            used.setdefault(name, set()).add(where)
    return used


def test_every_yadtq_name_the_docs_and_notebooks_use_is_public() -> None:
    used = _names_used_in_docs()
    assert {"connect", "TaskFailed", "TaskTimeout"} <= used.keys(), used
    modules = {p.stem for p in (ROOT / "yadtq").glob("*.py")}  # yadtq.cli, ...
    modules |= {p.parent.name for p in (ROOT / "yadtq").glob("*/__init__.py")}  # yadtq.local
    dunders = {name for name in used if name.startswith("__") and hasattr(yadtq, name)}
    missing = {name: sorted(where) for name, where in used.items()
               if name not in yadtq.__all__ and name not in modules | dunders}
    assert not missing, f"used in the docs but not public in yadtq: {missing}"
    for name in yadtq.__all__:
        assert getattr(yadtq, name) is not None


def test_task_cancelled_and_task_timeout_are_reachable_from_the_package() -> None:
    assert issubclass(yadtq.TaskCancelled, yadtq.YadtqError)
    assert issubclass(yadtq.TaskTimeout, TimeoutError)
    assert {"TaskCancelled", "TaskTimeout"} <= set(yadtq.__all__)


# --- item 6: a failed produce leaves no record queued for ever --------------------------

@pytest.fixture(scope="module")
def brokerless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[yadtq.Client]:
    """A client whose broker has died (its producer still knows the topic's partitions)."""
    with LocalStack(tmp_path_factory.mktemp("brokerless")) as stack:
        config = Config(bootstrap=stack.bootstrap, redis_url=stack.redis_url,
                        queue="brokerless", key_prefix="brokerless", connect_timeout=1.0)
        with yadtq.Client(config) as client:
            for name in stack.broker_names:
                stack.kill_broker(name)
            yield client


@pytest.fixture
def quick_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give up on delivering after 2 s rather than 30 (the wait outlasts a failover)."""
    monkeypatch.setattr(producer, "DELIVERY_TIMEOUT", 2.0)


def _record_written_by(client: yadtq.Client, task: str) -> dict[str, Any]:
    """The newest record of ``task`` in this client's key space."""
    keys = client.backend.redis.keys(f"{client.config.key_prefix}:task:*")
    records = [client.backend.task_record(k.decode().rsplit(":", 1)[1])
               for k in keys if not k.endswith(b":attempts")]
    return max((r for r in records if r and r["task"] == task),
               key=lambda r: r["queued_at"])


@pytest.mark.usefixtures("quick_delivery")
def test_a_submit_whose_produce_fails_leaves_its_record_failed_not_queued(
    brokerless: yadtq.Client,
) -> None:
    with pytest.raises(yadtq.BrokerUnavailable, match="marked failed"):
        brokerless.submit(add, 1, 2)
    record = _record_written_by(brokerless, "add")
    assert record["status"] == "failed", record
    assert record["error_type"] == "BrokerUnavailable"
    assert "could not deliver" in record["error"]


@pytest.mark.usefixtures("quick_delivery")
def test_a_map_whose_produce_fails_leaves_its_batch_failed_with_consistent_counters(
    brokerless: yadtq.Client,
) -> None:
    with pytest.raises(yadtq.BrokerUnavailable, match="marked failed") as raised:
        brokerless.map(sleep, [0.01] * 1500)
    batch_id = re.search(r"batch (b-\S+?)[;:) ]", str(raised.value))
    assert batch_id, str(raised.value)
    batch = brokerless.get_batch(batch_id.group(1))
    # Every task that got a record is failed; chunks never written (when the producer gives
    # up mid-map, as on Apache Kafka, rather than at the flush, as on Tansu) leave the
    # counters, so the batch adds up either way.
    written = len(batch)
    # whole chunks: the first of FIRST_MAP_CHUNK, then of backend.PIPELINE_CHUNK
    assert written in (FIRST_MAP_CHUNK, FIRST_MAP_CHUNK + PIPELINE_CHUNK, 1500), written
    assert batch.status_counts() == status_counts(total=written, failed=written)
    assert set(batch.to_dataframe()["status"]) == {"failed"}


# --- item 3: workers with different task modules on one queue --------------------------

MIXED_TASKS = '''
import yadtq

@yadtq.task
def shout(text):
    return text.upper() + "!"
'''


def _start_demo_and_shouting_workers(client: yadtq.Client,
                                     start_workers: Callable[..., LocalCluster],
                                     module_dir: Path, demo_workers: int) -> None:
    """``demo_workers`` workers of worker_node.tasks and one, "shouter", of MIXED_TASKS."""
    (module_dir / "mixedtasks.py").write_text(MIXED_TASKS)
    start_workers(demo_workers)
    path = os.pathsep.join(filter(None, [str(module_dir), os.environ.get("PYTHONPATH")]))
    own = start_workers(0, task_modules=["mixedtasks"], worker_env={"PYTHONPATH": path})
    own.start_worker(name="shouter")
    client.wait_for_workers(demo_workers + 1)


def test_workers_with_different_task_modules_on_one_queue_run_every_task_where_it_is_served(
    client: yadtq.Client, start_workers: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    # Given two workers of the demo tasks and, on the same queue, one of a module of its own
    _start_demo_and_shouting_workers(client, start_workers, tmp_path, demo_workers=2)

    # When both kinds of task are mapped over every partition
    adds = client.map(add, [(i, i) for i in range(24)])
    shouts = client.map("shout", [f"w{i}" for i in range(24)])

    # Then every task runs, each on a worker that serves it
    assert adds.results(timeout=60) == [2 * i for i in range(24)]
    assert shouts.results(timeout=60) == [f"W{i}!" for i in range(24)]
    assert set(shouts.to_dataframe()["worker"]) == {"shouter"}
    assert "shouter" not in set(adds.to_dataframe()["worker"])
    _histories_have_one_accepted_outcome(client, adds.ids + shouts.ids)


def test_a_task_no_live_worker_of_the_queue_serves_fails_at_once_naming_what_it_serves(
    client: yadtq.Client, start_workers: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    # Given workers of two different task modules on one queue
    _start_demo_and_shouting_workers(client, start_workers, tmp_path, demo_workers=1)

    # When a task neither serves is mapped over every partition
    started = time.monotonic()
    batch = client.map("shuot", [f"w{i}" for i in range(12)])
    batch.wait(timeout=30)

    # Then each fails promptly with UnknownTask naming the queue and both workers' tasks
    assert time.monotonic() - started < 10
    frame = batch.to_dataframe()
    assert set(frame["status"]) == {"failed"}
    errors = set(frame["error"])
    assert len(errors) == 1, errors
    [error] = errors
    assert f"queue {client.config.queue!r}" in error and "'shuot'" in error
    assert "shout" in error and "add" in error
