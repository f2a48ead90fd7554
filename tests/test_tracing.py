"""Trace context across processes (issue 25): a submit inside a span links the workers' spans.

The test process traces with an SDK ``TracerProvider`` and an in-memory exporter;
real worker processes trace with ``--trace-file`` (JSON lines, one file per worker).
Untraced, nothing of OpenTelemetry is imported, checked in fresh interpreters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import yadtq
from tests.helpers import wait_until
from worker_node.tasks import fail, sleep
from yadtq.config import Config
from yadtq.local import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The test process's finished spans (its global provider is set once a session)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def traced_workers(start_workers: Callable[..., LocalCluster], count: int, folder: Path,
                   worker_args: Sequence[str] = (), worker_env: dict[str, str] | None = None,
                   **options: Any) -> LocalCluster:
    """``count`` workers writing their spans to ``folder/spans-<worker>.jsonl`` at once."""
    return start_workers(
        count, worker_args=["--trace-file", str(folder / "spans-{worker}.jsonl"), *worker_args],
        worker_env={"OTEL_TRACES_EXPORTER": "none", "OTEL_BSP_SCHEDULE_DELAY": "50",
                    **(worker_env or {})},
        **options)


def run_spans(folder: Path) -> list[dict[str, Any]]:
    """Every ``yadtq.run`` span the workers wrote so far (``ReadableSpan.to_json``)."""
    found = []
    for path in folder.glob("spans-*.jsonl"):
        for line in path.read_text().splitlines():
            span = json.loads(line)
            if span["name"].startswith("yadtq.run "):
                found.append(span)
    return found


def hex_id(number: int, digits: int) -> str:
    return f"0x{number:0{digits}x}"


def only(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = [s for s in spans.get_finished_spans() if s.name == name]
    return span


def test_a_map_in_a_span_links_every_workers_run_span_to_the_map_span(
    client: yadtq.Client, start_workers: Callable[..., LocalCluster],
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    # Given three tracing workers and a test that traces
    traced_workers(start_workers, 3, tmp_path)
    client.wait_for_workers(3, timeout=60)
    tracer = trace.get_tracer("test")

    # When it maps ten 50 ms tasks inside a span
    with tracer.start_as_current_span("notebook cell"):
        batch = client.map(sleep, [0.05] * 10)
    assert len(batch.results(timeout=60)) == 10

    # Then the map made one PRODUCER span, a child of the caller's
    cell, mapped = only(spans, "notebook cell"), only(spans, "yadtq.map sleep")
    assert mapped.kind is SpanKind.PRODUCER
    assert mapped.parent.span_id == cell.context.span_id
    assert mapped.attributes["yadtq.batch_id"] == batch.id

    # And every task ran in one CONSUMER span in the same trace, a child of the map span,
    # on at least two worker processes
    runs = wait_until(lambda: len(run_spans(tmp_path)) >= 10 and run_spans(tmp_path), 30,
                      "ten run spans in the workers' files")
    assert len(runs) == 10
    assert sorted(s["attributes"]["yadtq.task_id"] for s in runs) == sorted(batch.ids)
    trace_id = hex_id(cell.context.trace_id, 32)
    assert {s["context"]["trace_id"] for s in runs} == {trace_id}
    assert {s["parent_id"] for s in runs} == {hex_id(mapped.context.span_id, 16)}
    assert {s["kind"] for s in runs} == {"SpanKind.CONSUMER"}
    workers = {s["attributes"]["yadtq.worker"] for s in runs}
    assert len(workers) >= 2, workers
    assert {s["resource"]["attributes"]["service.instance.id"] for s in runs} == workers
    for span in runs:
        attributes = span["attributes"]
        assert attributes["yadtq.status"] == "success"
        assert attributes["yadtq.attempt"] == 1
        assert attributes["messaging.system"] == "kafka"
        assert attributes["messaging.destination.name"] == client.config.tasks_topic
        assert span["status"]["status_code"] == "UNSET"


def test_a_failing_task_submitted_in_a_span_records_its_error_on_its_run_span(
    client: yadtq.Client, start_workers: Callable[..., LocalCluster],
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    # Given a tracing worker
    traced_workers(start_workers, 1, tmp_path)
    client.wait_for_workers(1, timeout=60)

    # When a task that raises is submitted inside a span
    with trace.get_tracer("test").start_as_current_span("notebook cell"):
        future = client.submit(fail, "boom")
    assert isinstance(future.exception(timeout=60), yadtq.TaskFailed)

    # Then its record keeps the submit span's context, for any later re-run
    submitted = only(spans, "yadtq.submit fail")
    assert submitted.kind is SpanKind.PRODUCER
    traceparent = client.task_record(future.id)["traceparent"]
    context = submitted.context
    assert traceparent == (f"00-{context.trace_id:032x}-{context.span_id:016x}-"
                           f"{int(context.trace_flags):02x}")

    # And its run span, a child of the submit span, ended as an error with the exception
    [run] = wait_until(lambda: run_spans(tmp_path), 30, "the run span")
    assert run["parent_id"] == hex_id(submitted.context.span_id, 16)
    assert run["status"]["status_code"] == "ERROR"
    assert "RuntimeError: boom" in run["status"]["description"]
    assert run["attributes"]["yadtq.status"] == "failed"
    [event] = run["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "RuntimeError"
    assert "boom" in event["attributes"]["exception.stacktrace"]


def test_a_task_rerun_after_its_worker_is_killed_stays_in_the_submitters_trace(
    client: yadtq.Client, start_workers: Callable[..., LocalCluster],
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    # Given two tracing workers, one running a task submitted inside a span
    cluster = traced_workers(start_workers, 2, tmp_path)
    client.wait_for_workers(2, timeout=60)
    with trace.get_tracer("test").start_as_current_span("notebook cell"):
        future = client.submit(sleep, 2.0)
    wait_until(future.running, 30, "the task to start")
    victim = future.worker

    # When that worker is killed mid-task
    cluster.kill_worker(victim, signal.SIGKILL)

    # Then the task runs again elsewhere, and that run is still a child of the submit span
    assert future.result(timeout=60) >= 2.0
    submitted = only(spans, "yadtq.submit sleep")
    [run] = wait_until(lambda: run_spans(tmp_path), 30, "the re-run's span")
    assert run["attributes"]["yadtq.attempt"] == 2
    assert run["attributes"]["yadtq.worker"] != victim
    assert run["context"]["trace_id"] == hex_id(submitted.context.trace_id, 32)
    assert run["parent_id"] == hex_id(submitted.context.span_id, 16)


PROBE_TASKS = '''
import sys

import yadtq


@yadtq.task
def loaded(package):
    """The modules of ``package`` this process has imported (a thread-mode worker's own)."""
    return sorted(name for name in sys.modules if name.split(".")[0] == package)
'''

# What a program that traces, or a traced worker, imports; an untraced one must not.
TRACING_MODULES = {"opentelemetry.propagate", "opentelemetry.sdk.trace", "yadtq.worker.otel"}

# Pretends the otel extra is not installed: OpenTelemetry cannot be imported at all.
NO_OTEL = """
import sys


class NoOpenTelemetry:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, NoOpenTelemetry())
"""


def python_path(*folders: Path) -> str:
    return os.pathsep.join(filter(None, [*map(str, folders), str(ROOT),
                                         os.environ.get("PYTHONPATH")]))


def run_client(config: Config, code: str, path: str, cwd: Path) -> Any:
    """Run ``code`` in a fresh interpreter with ``q`` connected to the test's queue; returns
    the JSON its last line prints."""
    script = textwrap.dedent(f"""
        import json
        import sys
        otel = lambda: sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
        import redis  # which (with the SDK installed) imports OpenTelemetry's metrics itself
        before = otel()
        import yadtq
        q = yadtq.connect(bootstrap={config.bootstrap!r}, redis_url={config.redis_url!r},
                          queue={config.queue!r}, key_prefix={config.key_prefix!r})
        q.wait_for_workers(1, timeout=60)
    """) + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_untraced_clients_and_workers_import_nothing_of_opentelemetry_themselves(
    config: Config, start_workers: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    # Given a worker that runs tasks in its own process (thread mode), not tracing
    (tmp_path / "probetasks.py").write_text(PROBE_TASKS)
    path = python_path(tmp_path)
    untraced = start_workers(1, task_modules=["probetasks"], worker_args=["--mode", "thread"],
                             worker_env={"PYTHONPATH": path})

    # When a fresh interpreter imports yadtq, connects and submits a task that looks
    before, after, in_worker = run_client(config, """
        in_worker = q.submit("loaded", "opentelemetry").result(timeout=60)
        print(json.dumps([before, otel(), in_worker]))
    """, path, tmp_path)

    # Then neither the client nor the worker imported more of OpenTelemetry than redis-py
    # does by itself (with the SDK installed, redis-py 8 imports its metrics API), and
    # none of what tracing imports
    assert after == before
    assert set(in_worker) == set(before)
    assert not TRACING_MODULES & set(in_worker)

    # And the same probe in a tracing worker sees the SDK's tracing (so the probe can tell)
    untraced.stop()
    traced_workers(start_workers, 1, tmp_path, task_modules=["probetasks"],
                   worker_args=["--mode", "thread"], worker_env={"PYTHONPATH": path})
    [traced] = run_client(config, """
        print(json.dumps([q.submit("loaded", "opentelemetry").result(timeout=60)]))
    """, path, tmp_path)
    assert {"opentelemetry.propagate", "opentelemetry.sdk.trace"} <= set(traced)


def test_without_opentelemetry_clients_work_and_a_tracing_worker_says_what_to_install(
    config: Config, start_workers: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    # Given an environment where OpenTelemetry cannot be imported (the extra is absent)
    (tmp_path / "sitecustomize.py").write_text(NO_OTEL)
    path = python_path(tmp_path)
    start_workers(1, worker_env={"PYTHONPATH": path})

    # When a client submits a task there
    before, after, result = run_client(config, """
        result = q.submit("add", 1, 2).result(timeout=60)
        print(json.dumps([before, otel(), result]))
    """, path, tmp_path)

    # Then it runs, with nothing of OpenTelemetry loaded
    assert (before, after, result) == ([], [], 3)

    # And a worker asked to trace there refuses to start, naming the extra to install
    worker = subprocess.run(
        [sys.executable, "-m", "worker_node", "--tracing", "--bootstrap", config.bootstrap,
         "--redis", config.redis_url, "--queue", config.queue],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path})
    assert worker.returncode == 1
    assert "pip install 'yadtq[otel]'" in worker.stderr, worker.stderr
