"""Rough edges a new user meets in the first hour (issue 20, item 8), each against real servers.

Where no worker is needed, the worker side is simulated as in ``test_futures``:
``client.backend.claim_many`` and ``finish`` run the real Lua scripts and publish
the real events the client listens to.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

import yadtq
from yadtq import registry
from yadtq.backend import Outcome
from yadtq.config import Config
from yadtq.local import LocalCluster
from yadtq.protocol import TaskMessage
from yadtq.shipping import Shipment
from yadtq.status import TaskStatus

WORKER = "sim-worker"
TIMEOUT = 30.0


def _finish(client: yadtq.Client, task: yadtq.TaskFuture, status: TaskStatus,
            **outcome: object) -> None:
    """Claim ``task`` as WORKER and store its outcome, as a worker would."""
    message = TaskMessage(id=task.id, task=task.task, args=task.args, kwargs=task.kwargs,
                          batch=task.batch, index=task.index)
    [claim] = client.backend.claim_many([message], WORKER)
    assert claim.claimed and claim.attempt is not None
    assert client.backend.finish(Outcome(task.id, task.batch, claim.attempt, status, **outcome),
                                 WORKER) is None


def _batch_of_a_success_a_failure_and_a_cancel(client: yadtq.Client) -> yadtq.TaskBatch:
    batch = client.map("add", [(1, 2), (3, 4), (5, 6)])
    _finish(client, batch[0], TaskStatus.SUCCESS, result=3)
    _finish(client, batch[1], TaskStatus.FAILED, error_type="ZeroDivisionError",
            error="division by zero")
    assert batch[2].cancel()
    batch.wait(timeout=TIMEOUT)
    return batch


def _cli_env(config: Config, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YADTQ_")}
    return {**env, "YADTQ_HOME": str(home), "YADTQ_BOOTSTRAP": config.bootstrap,
            "YADTQ_REDIS_URL": config.redis_url, "YADTQ_QUEUE": config.queue,
            "YADTQ_KEY_PREFIX": config.key_prefix}


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=60)


# --- TaskBatch.results(errors=...) ---------------------------------------------------------

def test_batch_results_with_errors_return_puts_each_failure_in_its_tasks_place(
    client: yadtq.Client,
) -> None:
    # Given a batch whose tasks succeeded, failed and were cancelled
    batch = _batch_of_a_success_a_failure_and_a_cancel(client)

    # When its results are asked for with errors="return"
    results = batch.results(timeout=TIMEOUT, errors="return")

    # Then each task's value or exception stands in its place, in submission order
    assert results[0] == 3
    assert isinstance(results[1], yadtq.TaskFailed)
    assert results[1].error_type == "ZeroDivisionError"
    assert isinstance(results[2], yadtq.TaskCancelled)
    # and the default still raises the first failure
    with pytest.raises(yadtq.TaskFailed, match="ZeroDivisionError"):
        batch.results(timeout=TIMEOUT)


def test_batch_results_with_errors_skip_leaves_failed_and_cancelled_tasks_out(
    client: yadtq.Client,
) -> None:
    batch = _batch_of_a_success_a_failure_and_a_cancel(client)

    assert batch.results(timeout=TIMEOUT, errors="skip") == [3]


def test_batch_results_refuses_an_unknown_errors_choice_naming_the_choices(
    client: yadtq.Client,
) -> None:
    batch = client.map("add", [(1, 2)])

    with pytest.raises(ValueError, match="errors must be one of 'raise', 'return', 'skip', "
                                         "got 'ignore'"):
        batch.results(timeout=TIMEOUT, errors="ignore")


# --- the command line and the worker node ------------------------------------------------

def test_cli_result_of_a_cancelled_task_says_so_and_exits_1(
    client: yadtq.Client, config: Config, tmp_path: Path,
) -> None:
    # Given a task cancelled before any worker took it
    future = client.submit("add", 1, 2)
    assert future.cancel()

    # When `yadtq result` is asked for it
    run = _run(["-m", "yadtq", "result", future.id, "--timeout", "30"],
               _cli_env(config, tmp_path))

    # Then it says the task was cancelled, with no traceback, and fails
    assert run.returncode == 1
    assert f"yadtq: error: task {future.id} was cancelled" in run.stderr
    assert "Traceback" not in run.stderr


def test_yadtq_version_and_dunder_version_name_the_installed_package() -> None:
    run = _run(["-m", "yadtq", "--version"])

    assert run.returncode == 0
    assert run.stdout.strip() == f"yadtq {metadata.version('yadtq')}"
    assert yadtq.__version__ == metadata.version("yadtq")


def test_a_checkout_that_is_not_installed_reads_its_version_from_pyproject(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    pyproject = (Path(yadtq.__file__).parents[1] / "pyproject.toml").read_text()

    assert f'version = "{yadtq._version()}"' in pyproject


def test_worker_node_refuses_concurrency_0_naming_the_option_and_the_range() -> None:
    run = _run(["-m", "worker_node", "--concurrency", "0"])

    assert run.returncode == 2
    assert "argument --concurrency: must be 1 or more, got 0" in run.stderr
    assert "Traceback" not in run.stderr


EMPTY_MODULE = "def add_one(x):\n    return x + 1\n"


def test_a_worker_whose_only_task_module_registers_nothing_refuses_to_start(
    tmp_path: Path,
) -> None:
    # Given a --tasks module whose functions lack @yadtq.task, and no trust in shipped code
    (tmp_path / "undecorated.py").write_text(EMPTY_MODULE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("YADTQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))

    # When a worker is started with it (no server is reached before the modules load)
    run = _run(["-m", "worker_node", "--tasks", "undecorated", "--bootstrap", "127.0.0.1:9",
                "--redis", "redis://127.0.0.1:9/0"], env)

    # Then it refuses, naming the module and what @yadtq.task does
    assert run.returncode == 1
    assert "worker_node: error: no task registered by 'undecorated'" in run.stderr
    assert "@yadtq.task registers a function" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_task_module_that_registers_nothing_beside_others_is_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "undecorated_too.py").write_text(EMPTY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))

    with caplog.at_level(logging.WARNING, logger="yadtq.registry"):
        names = registry.load_modules(["worker_node.tasks", "undecorated_too"],
                                      require_tasks=True)

    assert "add" in names
    assert "task module 'undecorated_too' registers no task" in caplog.text
    assert "worker_node.tasks" not in caplog.text


# --- the client --------------------------------------------------------------------------

def test_submit_and_map_after_close_raise_client_closed_and_write_nothing(
    config: Config,
) -> None:
    # Given a client that was closed
    closed = yadtq.Client(config)
    closed.close()

    # When it is asked to submit or map
    # Then it refuses at once, saying so, and Redis holds no task of it
    with pytest.raises(yadtq.ClientClosed, match="is closed, so nothing was sent; connect "
                                                 "again"):
        closed.submit("add", 1, 2)
    with pytest.raises(yadtq.ClientClosed):
        closed.map("add", [(1, 2)])
    with yadtq.Client(config) as looking:
        assert looking.backend.redis.keys(f"{config.key_prefix}:task:*") == []


def test_untrusted_code_tells_a_client_without_a_secret_how_to_get_the_workers_one() -> None:
    with pytest.raises(yadtq.UntrustedCode) as caught:
        Shipment(lambda x: x, Config(bootstrap="a:1", redis_url="redis://b"))

    text = str(caught.value)
    assert "does both for you" not in text
    assert "YADTQ_SECRET on this client to the secret of the workers" in text
    assert "yadtq.connect(cluster) or yadtq.connect('local')" in text
    assert "@yadtq.task" in text


def test_history_of_an_id_redis_never_knew_raises_task_not_found(client: yadtq.Client) -> None:
    with pytest.raises(yadtq.TaskNotFound, match="no task 'nope'"):
        client.history("nope")
    # while a task that exists but never ran has an empty history
    assert client.history(client.submit("add", 1, 2).id) == []


# --- the workers table -------------------------------------------------------------------

def test_heartbeat_age_is_never_negative_when_a_workers_clock_runs_ahead(
    client: yadtq.Client,
) -> None:
    client.backend.heartbeat(WORKER, {"name": WORKER, "host": "h", "pid": 1}, [],
                             now=time.time() + 30)

    [row] = client.worker_rows()

    assert row["heartbeat_age"] == 0.0


def test_workers_frame_has_utc_timestamps_where_worker_rows_keep_unix_seconds(
    client: yadtq.Client,
) -> None:
    now = time.time()
    client.backend.heartbeat(WORKER, {"name": WORKER, "host": "h", "pid": 1,
                                      "started_at": now - 60}, [], now=now)

    frame = client.workers()
    [row] = client.worker_rows()

    for column in ("started_at", "last_heartbeat"):
        assert str(frame[column].dtype) == "datetime64[ns, UTC]"
        assert abs(frame[column][0].timestamp() - row[column]) < 1e-3
        assert isinstance(row[column], float)


def test_processed_and_failed_are_counted_by_the_time_each_result_arrives(
    client: yadtq.Client, start_workers: Callable[..., LocalCluster],
) -> None:
    # Given one worker
    start_workers(1)
    client.wait_for_workers(1)

    # When tasks finish one after another
    # Then the workers table counts each as soon as its outcome reaches the client
    for done in range(1, 4):
        assert client.submit("add", done, 1).result(timeout=TIMEOUT) == done + 1
        [row] = client.worker_rows()
        assert (row["processed"], row["failed"]) == (done, 0)
    with pytest.raises(yadtq.TaskFailed):
        client.submit("divide", 1, 0).result(timeout=TIMEOUT)
    [row] = client.worker_rows()
    assert (row["processed"], row["failed"]) == (3, 1)
