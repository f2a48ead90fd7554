"""Notebook display: live widgets driven by change events, and their fallbacks."""

from __future__ import annotations

import re
import time

import nbclient
import nbformat
import pytest
from helpers import wait_until

import yadtq
from worker_node.tasks import divide, sleep
from yadtq import display
from yadtq.futures import TaskBatch


def _percent(html: str) -> int:
    return int(re.search(r'data-percent="(\d+)"', html).group(1))


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


def test_batch_in_a_kernel_renders_a_widget_with_html_and_text_fallbacks(config, start_workers):
    # Given a real Jupyter kernel connected to the test's queue
    start_workers(1)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "import yadtq\n"
            f"q = yadtq.connect(bootstrap={config.bootstrap!r}, redis_url={config.redis_url!r}, "
            f"queue={config.queue!r}, key_prefix={config.key_prefix!r})\n"
            "b = q.map('add', [(i, i) for i in range(10)])\nb.wait(60)\nb"
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
