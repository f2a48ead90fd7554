"""Notebook display of a workflow (top layer): its progress per status and per function.

A :class:`~yadtq.workflow.Workflow` shows as a bar split by status (``blocked`` and
``skipped`` included) and a table of counts per function, live while it runs (the same
``display.LiveView`` the batch widget uses, fed by the workflow's change events), with a
static HTML snapshot beside it for front ends without widgets.
"""

from __future__ import annotations

import html
import time
from typing import Any

from yadtq.display import BAR_ORDER, LiveView, _live_display, widgets_available
from yadtq.status import TaskStatus
from yadtq.workflow import Workflow

RESYNC_SECONDS = 1.0  # while shown, how often new tasks and missed events are read again


def workflow_html(workflow: Workflow) -> str:
    """HTML for a workflow: a bar split by status, then counts per function and status."""
    counts = workflow.local_counts()
    total = counts["total"]
    segments = "".join(
        f'<div class="yadtq-{s.value}" title="{counts[s.value]} {s.label}" '
        f'style="width:{100.0 * counts[s.value] / total:.3f}%;background:{s.colour}"></div>'
        for s in BAR_ORDER if total and counts[s.value])
    data = " ".join(f'data-{name}="{value}"' for name, value in counts.items())
    shown = [s for s in TaskStatus if counts[s.value]]
    header = "".join(f"<th style='color:{s.colour}'>{s.label}</th>" for s in shown)
    rows = "".join(
        f"<tr><td><code>{html.escape(name)}</code></td>"
        + "".join(f"<td style='text-align:right'>{by_status.get(s.value, 0) or ''}</td>"
                  for s in shown) + "</tr>"
        for name, by_status in workflow.counts_by_task().items())
    summary = " · ".join(f"{counts[s.value]} {s.label}" for s in shown) or "no tasks yet"
    state = "finished" if workflow.finished else "running"
    return (
        "<div class='yadtq-workflow-view' style='font-family:var(--jp-ui-font-family,"
        "sans-serif);font-size:13px;max-width:720px'>"
        f"<div><b>{html.escape(workflow.name)}</b> — {total} tasks, {state} "
        f"<span style='color:#888'>workflow {html.escape(workflow.id)}</span></div>"
        f"<div class='yadtq-progress' {data} style='display:flex;height:14px;margin:4px 0;"
        f"background:#eee;border-radius:3px;overflow:hidden'>{segments}</div>"
        f"<div>{html.escape(summary)}</div>"
        f"<table style='margin-top:4px;font-size:12px'><tr><th style='text-align:left'>"
        f"function</th>{header}</tr>{rows}</table></div>")


def workflow_view(workflow: Workflow) -> LiveView:
    """A live widget for a workflow, re-reading Redis at most once a second."""
    last = [time.monotonic()]

    def render(source: Workflow) -> str:
        if time.monotonic() - last[0] >= RESYNC_SECONDS and not source.finished:
            last[0] = time.monotonic()
            source.refresh()
        return workflow_html(source)

    view = LiveView(workflow, render, lambda w: w.finished, "yadtq-workflow")
    workflow.add_change_callback(view.notify)
    return view


def register(shell: Any) -> None:
    """Show workflows as live widgets in this IPython, with an HTML fallback."""
    formatters = shell.display_formatter
    formatters.formatters["text/html"].for_type(Workflow, workflow_html)
    if widgets_available():
        formatters.ipython_display_formatter.for_type(
            Workflow, _live_display(workflow_view, workflow_html))
