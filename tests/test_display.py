"""Notebook display: live widgets driven by change events, and their fallbacks."""

from __future__ import annotations

import json
import re
import time

import nbclient
import nbformat
import pandas
import pytest
from helpers import wait_until

import yadtq
from worker_node.tasks import divide, sleep
from yadtq import display, plots
from yadtq.backend import Outcome
from yadtq.batch import TaskBatch
from yadtq.futures import TaskFuture
from yadtq.protocol import TaskMessage
from yadtq.status import TaskStatus

SIM_WORKER = "sim-worker"


def _percent(html: str) -> int:
    return int(re.search(r'data-percent="(\d+)"', html).group(1))


def _headline(html: str) -> str:
    return re.search(r"<div class='yadtq-batch-view'[^>]*><div>(.*?)</div>", html).group(1)


def _move(client: yadtq.Client, future: TaskFuture, status: TaskStatus) -> None:
    """Put a scheduled task no worker took into ``status`` through the real Lua scripts,
    as a worker (release, claim, finish) or a client (cancel) would."""
    if status is TaskStatus.SCHEDULED:
        return
    if status in (TaskStatus.BLOCKED, TaskStatus.SKIPPED):
        _block(client, future, skip=status is TaskStatus.SKIPPED)
        return
    if status is TaskStatus.CANCELLED:
        assert client.cancel(future.id, future.batch)
        return
    assert client.backend.scheduled.release([future.id], SIM_WORKER)
    if status is TaskStatus.QUEUED:
        return
    message = TaskMessage(id=future.id, task=future.task, args=future.args,
                          kwargs=future.kwargs, batch=future.batch, index=future.index)
    [claim] = client.backend.claim_many([message], SIM_WORKER)
    assert claim.claimed, claim
    if status is TaskStatus.PROCESSING:
        return
    outcome = Outcome(future.id, future.batch, claim.attempt, status, result=2,
                      error_type="ZeroDivisionError", error="division by zero")
    assert client.backend.finish(outcome, SIM_WORKER) is None


def _block(client: yadtq.Client, future: TaskFuture, skip: bool) -> None:
    """Make a scheduled task wait on a parent, as enqueue.lua writes a child (no script
    moves a written task to blocked, so this writes what it would); with ``skip``, the
    parent then fails and the real edges.lua (run by settle.lua) skips the task."""
    backend, parent = client.backend, f"parent-of-{future.id}"
    backend.redis.zrem(backend.keys.scheduled, future.id)
    backend.redis.hset(backend.keys.task(future.id), mapping={
        "status": "blocked", "parents": json.dumps([parent]), "waiting": 1})
    backend.redis.hincrby(backend.keys.batch(future.batch), "scheduled", -1)
    backend.redis.hincrby(backend.keys.batch(future.batch), "blocked", 1)
    backend.redis.publish(backend.keys.events, json.dumps([{
        "id": future.id, "status": "blocked", "batch": future.batch, "worker": ""}]))
    if skip:
        backend.redis.hset(backend.keys.task(parent), mapping={"status": "failed",
                                                               "task": "add"})
        backend.redis.hset(backend.keys.children(parent), future.id, "0")
        backend.redis.zadd(backend.keys.settling, {parent: 0})
        backend.edges.settle()


def _batch_in(client: yadtq.Client, statuses: list[TaskStatus]) -> TaskBatch:
    """A batch whose i-th task is in ``statuses[i]``, once this client has heard so."""
    batch = client.map("add", [(i, i) for i in range(len(statuses))], countdown=3600)
    for future, status in zip(batch, statuses, strict=True):
        _move(client, future, status)
    expected = {s.value: statuses.count(s) for s in set(statuses)}
    wait_until(lambda: batch.local_counts() == expected, 10, f"the batch to reach {expected}")
    return batch


def _bar_rows(axes) -> int:
    """How many rows of bars a timeline's axes hold (each row has its own centre)."""
    return len({round(bar.get_y() + bar.get_height() / 2, 6) for bar in axes.patches})


def test_batch_widget_moves_while_tasks_run_and_freezes_finished(client, start_workers):
    # Given two workers and a batch that takes a couple of seconds
    start_workers(2, concurrency=2)
    client.wait_for_workers(2, timeout=60)
    batch = client.map(sleep, [0.05] * 80)

    # When a live view watches it
    view = display.batch_view(batch)
    values: list[tuple[float, str]] = []
    view.widget.observe(lambda change: values.append((time.monotonic(), change["new"])),
                        names="value")
    batch.results(timeout=60)

    # Then it ends finished at 100% with every task counted as success ...
    wait_until(lambda: "yadtq-finished" in view.widget._dom_classes, 10, "the final render")
    final = view.widget.value
    assert _percent(final) == 100
    assert 'data-success="80"' in final and 'data-total="80"' in final
    assert "local-worker-1" in final and "local-worker-2" in final
    # ... it showed progress in between ...
    assert any(0 < _percent(v) < 100 for _, v in values)
    # ... and it refreshed at most about ten times a second.
    seconds = values[-1][0] - values[0][0] if len(values) > 1 else 0
    assert len(values) <= seconds * 10 + 3


def test_future_widget_shows_the_error_with_a_collapsed_traceback(client, start_workers):
    start_workers(1)
    future = client.submit(divide, 1, 0)

    view = display.future_view(future)
    future.exception(timeout=60)

    wait_until(lambda: "yadtq-finished" in view.widget._dom_classes, 10, "the final render")
    assert "ZeroDivisionError: division by zero" in view.widget.value
    assert "<details><summary>traceback</summary>" in view.widget.value
    assert "divide(1, 0)" in view.widget.value


def test_text_meter_reads_well_outside_a_notebook(client):
    batch = client.map(sleep, [0.01] * 4)  # no worker: all stay queued

    text = display.batch_text(batch)

    assert text.startswith("sleep × 4 |")
    assert "0/4 done (0%)" in text and "4 waiting" in text


def _connect_cell(config) -> str:
    """Notebook code that connects ``q`` to the test's queue."""
    return ("import yadtq\n"
            f"q = yadtq.connect(bootstrap={config.bootstrap!r}, redis_url={config.redis_url!r}, "
            f"queue={config.queue!r}, key_prefix={config.key_prefix!r})\n")


def test_batch_in_a_kernel_renders_a_widget_with_html_and_text_fallbacks(config, start_workers):
    # Given a real Jupyter kernel connected to the test's queue
    start_workers(1)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            _connect_cell(config) + "b = q.map('add', [(i, i) for i in range(10)])\nb.wait(60)\nb"
        ),
        nbformat.v4.new_code_cell("d = q.dashboard(); d"),
        nbformat.v4.new_code_cell("d.stop(); q.close()"),
    ]

    # When it runs
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()

    # Then the batch output carries the widget, a static HTML snapshot and a text repr
    batch_output = notebook.cells[0].outputs[-1]["data"]
    assert display.WIDGET_MIME in batch_output
    assert 'data-percent="100"' in batch_output["text/html"]
    assert re.match(r"<TaskBatch b-\w+ add × 10: 10 success>", batch_output["text/plain"])
    # And the dashboard lists the worker as alive
    dashboard_output = notebook.cells[1].outputs[-1]["data"]
    assert display.WIDGET_MIME in dashboard_output
    assert "1 alive" in dashboard_output["text/plain"]
    assert "local-worker-1" in dashboard_output["text/html"]


def test_a_batch_shown_while_running_leaves_its_final_state_in_the_saved_output(
        config, start_workers):
    # Given a real Jupyter kernel that shows a batch while its tasks still run
    start_workers(1, concurrency=2)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "import threading\n" + _connect_cell(config) + "b = q.map('sleep', [0.3] * 8)\nb"
        ),
        # The view's thread ends right after it has published the final state.
        nbformat.v4.new_code_cell(
            "b.wait(60)\n"
            "for t in threading.enumerate():\n"
            "    if t.name == 'yadtq-view':\n"
            "        t.join(10)\n"
            "q.close()"
        ),
    ]

    # When the notebook has run (as nbconvert or a saved JupyterLab notebook keeps it)
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()

    # Then the first cell's snapshot and text show how the batch ended, not how it began
    [output] = notebook.cells[0].outputs
    assert display.WIDGET_MIME in output["data"]
    assert 'data-percent="100"' in output["data"]["text/html"]
    assert re.match(r"<TaskBatch b-\w+ sleep × 8: 8 success>", output["data"]["text/plain"])


def test_dashboard_outside_a_kernel_says_what_to_install(config):
    client = yadtq.connect(config)
    try:
        with pytest.raises(ImportError, match="pip install ipywidgets"):
            client.dashboard()
    finally:
        client.close()


def test_batch_timeline_and_distribution_are_figures_with_a_lane_per_worker(
    client, start_workers
):
    start_workers(2)
    client.wait_for_workers(2, timeout=60)
    batch: TaskBatch = client.map(sleep, [0.05] * 20)
    batch.results(timeout=60)

    timeline = batch.timeline()
    distribution = batch.plot_distribution()

    lanes = [label.get_text() for label in timeline.axes[0].get_yticklabels()]
    assert lanes == ["local-worker-1", "local-worker-2"]
    assert len(timeline.axes[0].patches) == 20
    bars = distribution.axes[0].patches
    assert sum(bar.get_height() for bar in bars) == 20


def test_batch_widget_and_text_show_every_status_in_the_bar_and_the_summary(client):
    # Given a batch with one task in each status
    batch = _batch_in(client, list(TaskStatus))

    # When the widget renders it, and the text meter too
    view = display.batch_view(batch)
    html = view.widget.value
    view.close()
    text = display.batch_text(batch)

    # Then each status has its count, its own coloured bar segment and its summary part
    total, finished = len(TaskStatus), sum(s.is_finished for s in TaskStatus)
    for status in TaskStatus:
        assert f'data-{status.value}="1"' in html, status
        assert (f'title="1 {status.label}" style="width:{100 / total:.3f}%;'
                f'background:{status.colour}"') in html, status
        assert f">1 {status.label}<" in html, status
        assert f" · 1 {status.label} · " in text, status
    assert f"{finished}/{total} done ({100 * finished / total:.0f}%)" in text


@pytest.mark.parametrize(
    ("statuses", "colour", "ending"),
    [
        ([TaskStatus.CANCELLED] * 3, TaskStatus.CANCELLED.colour, "with 3 cancelled"),
        ([TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.CANCELLED],
         TaskStatus.FAILED.colour, "with 1 failed, 2 cancelled"),
        ([TaskStatus.SUCCESS] * 2, TaskStatus.SUCCESS.colour, ""),
    ],
    ids=["all cancelled", "failed and cancelled", "all success"],
)
def test_finished_batch_headline_is_green_only_when_every_task_succeeded(
    client, statuses, colour, ending
):
    # Given a batch that has ended with these statuses
    batch = _batch_in(client, statuses)
    assert batch.done()

    # When the widget renders it
    html = display.batch_html(batch)

    # Then its headline says how it ended, in the colour of the worst outcome
    headline = _headline(html)
    finish = re.search(r"<span style='color:([^']+)'>finished in [\d.]+ m?s ?([^<]*)</span>",
                       headline)
    assert finish is not None, headline
    assert finish.group(1) == colour
    assert finish.group(2) == ending


def test_cancelled_tasks_that_never_ran_are_not_listed_under_a_worker(client):
    # Given a batch cancelled before any worker took it
    batch = _batch_in(client, [TaskStatus.CANCELLED] * 2)

    # When the widget renders it, then its per-worker table is absent
    assert batch.snapshot()["per_worker"] == {}
    assert "<table" not in display.batch_html(batch)


def test_future_widget_shows_a_cancelled_task(client):
    # Given a task cancelled before any worker took it
    future = client.submit("add", 1, 2)
    assert future.cancel()

    # When its widget renders it
    html = display.future_view(future).widget.value

    # Then it shows the cancelled badge in the cancelled colour, and no result or error
    assert (f"<span style='background:{TaskStatus.CANCELLED.colour};color:white;"
            "padding:1px 6px;border-radius:8px'>cancelled</span>") in html
    assert "result:" not in html


def test_timeline_gives_a_four_slot_worker_four_rows(client, start_workers):
    # Given one worker with 4 slots that ran many short tasks back to back
    start_workers(1, concurrency=4)
    client.wait_for_workers(1, timeout=60)
    batch = client.map(sleep, [0.02] * 200)
    batch.results(timeout=60)

    # When its timeline is drawn
    timeline = batch.timeline()

    # Then the worker's lane has one row per slot: a recorded finish is when the slot
    # was freed, not when the outcome reached Redis after the next task had started
    assert [label.get_text() for label in timeline.axes[0].get_yticklabels()] == [
        "local-worker-1"]
    assert _bar_rows(timeline.axes[0]) == 4


def test_timeline_reuses_the_row_of_a_task_that_ended_as_the_next_began():
    # Given one worker's tasks: A then B back to back, then R and S still running
    def at(seconds: float) -> pandas.Timestamp:
        return pandas.Timestamp(1_700_000_000 + seconds, unit="s", tz="UTC")

    frame = pandas.DataFrame({
        "worker": ["w"] * 4,
        "status": ["success", "success", "processing", "processing"],
        "started_at": [at(0), at(1), at(3), at(3)],
        "finished_at": [at(1), at(2), pandas.NaT, pandas.NaT],
    })

    # When the timeline is drawn
    axes = plots.timeline(frame).axes[0]

    # Then B takes A's row, and the two running tasks hold a row each: two rows in all
    assert _bar_rows(axes) == 2
    a, b, r, s = axes.patches
    assert a.get_y() == b.get_y()
    assert r.get_y() != s.get_y()


def test_batch_and_future_widgets_say_when_their_scheduled_tasks_are_due(client):
    # Given a batch and a task due in 30 s, and a batch already due, with no worker
    batch = client.map("add", [(i, i) for i in range(3)], countdown=30)
    future = client.submit_with("add", (1, 2), countdown=30)
    late = client.map("add", [(1, 1)], countdown=0)

    # When the widgets and the text meter render them
    text, html = display.batch_text(batch), display.batch_html(batch)

    # Then they say when the first scheduled task is due, or how long ago it was
    due_in_30 = r"due in (29\.\d|30\.0) s"
    assert re.search(rf" · 3 scheduled · {due_in_30} · ", text), text
    assert re.search(rf">{due_in_30}<", html), html
    assert re.search(due_in_30, display.future_html(future))
    assert re.search(r"1 scheduled · due \d+ ms ago", display.batch_text(late))
    # And a batch re-attached by id (as by a restarted kernel) says so from the records
    with yadtq.Client(client.config) as restarted:
        assert re.search(due_in_30, display.batch_text(restarted.get_batch(batch.id)))
    # And once none is scheduled, nothing is said to be due
    for task in batch:
        _move(client, task, TaskStatus.QUEUED)
    wait_until(lambda: batch.local_counts() == {"queued": 3}, 10, "the batch to be queued")
    assert "due" not in display.batch_text(batch)
    assert batch.snapshot()["due_at"] is None
