"""Notebook display (top layer): live widgets for futures, batches and workers.

The core publishes state (``TaskBatch.snapshot()``, change callbacks); this
module renders it, like tqdm's notebook bar renders ``format_dict``. In a
Jupyter kernel, :func:`register` teaches IPython to show a ``TaskFuture`` or
``TaskBatch`` as a live ipywidgets widget, with a static HTML snapshot and the
text repr beside it for front ends without widgets (nbconvert, GitHub). Every
widget refreshes at most ~10 times a second from change events, and freezes
in its final state when its task or batch ends. ipywidgets is imported only
when a widget is built, never at ``import yadtq``.
"""

from __future__ import annotations

import html
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from yadtq.batch import TaskBatch
from yadtq.client import Client
from yadtq.futures import TaskFuture
from yadtq.status import COUNTERS, TaskStatus

logger = logging.getLogger(__name__)

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
MIN_REFRESH_SECONDS = 0.1
IDLE_REFRESH_SECONDS = 0.5
DASHBOARD_REFRESH_SECONDS = 1.0
NO_WIDGETS = (
    "live progress needs ipywidgets in the kernel and a front end that shows widgets "
    "(JupyterLab 4, Notebook 7, VS Code): pip install ipywidgets"
)

# The bar fills from the left with finished tasks, then those nearest to finishing.
BAR_ORDER = [*(s for s in TaskStatus if s.is_finished),
             *(s for s in reversed(TaskStatus) if not s.is_finished)]
WORKER_COLOURS = {"alive": TaskStatus.SUCCESS.colour, "dead": TaskStatus.FAILED.colour,
                  "stopped": "#888"}


# --- formatting ------------------------------------------------------------

def format_seconds(seconds: float | None) -> str:
    """Seconds as a short human duration: '850 ms', '4.2 s', '3 min 05 s'."""
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def format_due(due_in: float) -> str:
    """When scheduled tasks start: 'due in 4.2 s', or 'due 1.5 s ago' while they wait
    for a worker to send them."""
    return f"due in {format_seconds(due_in)}" if due_in >= 0 else \
        f"due {format_seconds(-due_in)} ago"


def batch_summary(snapshot: dict[str, Any]) -> str:
    """One line of text for a batch: the count of every status it has (and when the first
    scheduled task is due), rate, elapsed, ETA."""
    total, done = snapshot["total"], snapshot["done"]
    percent = 100.0 * done / total if total else 100.0
    parts = [f"{done}/{total} done ({percent:.0f}%)"]
    parts += [f"{snapshot[s.value]} {s.label}" for s in TaskStatus if snapshot[s.value]]
    if snapshot.get("due_in") is not None:
        parts.append(format_due(snapshot["due_in"]))
    parts += [f"{count} waiting for {limit}"
              for limit, count in (snapshot.get("waits_for") or {}).items()]
    parts += [f"{snapshot['rate']:.1f} tasks/s", f"elapsed {format_seconds(snapshot['elapsed'])}"]
    if not snapshot["finished"]:
        parts.append(f"ETA {format_seconds(snapshot['eta'])}")
    return " · ".join(parts)


def _unbroken(summary: str) -> str:
    """HTML for a summary line that wraps only between its parts, never inside "2.9 s"."""
    return " · ".join(f"<span style='white-space:nowrap'>{html.escape(part)}</span>"
                      for part in summary.split(" · "))


def batch_text(batch: TaskBatch, width: int = 40) -> str:
    """A text meter for a batch, for terminals and logs."""
    snapshot = batch.snapshot()
    total = snapshot["total"] or 1
    filled = round(width * snapshot["done"] / total)
    bar = "█" * filled + "░" * (width - filled)
    return f"{batch.task} × {snapshot['total']} |{bar}| {batch_summary(snapshot)}"


def batch_html(batch: TaskBatch) -> str:
    """HTML for a batch: a bar split by status, counts, rate, ETA and per-worker counts."""
    snapshot = batch.snapshot()
    total = snapshot["total"]
    percent = 100.0 * snapshot["done"] / total if total else 100.0
    segments = "".join(
        f'<div class="yadtq-{s.value}" title="{snapshot[s.value]} {s.label}" '
        f'style="width:{100.0 * snapshot[s.value] / total:.3f}%;background:{s.colour}"></div>'
        for s in BAR_ORDER if total and snapshot[s.value]
    )
    data = " ".join(f'data-{name}="{snapshot[name]}"' for name in ("total", *COUNTERS))
    workers = "".join(
        f"<tr><td>{html.escape(worker)}</td><td style='text-align:right'>{count}</td>"
        f"<td><div style='width:{120 * count / max(snapshot['per_worker'].values()):.0f}px;"
        f"height:8px;background:{TaskStatus.SUCCESS.colour}'></div></td></tr>"
        for worker, count in snapshot["per_worker"].items()
    )
    headline = f"<b>{html.escape(batch.task)}</b> × {total}"
    if snapshot["finished"]:
        headline += f" — {_outcome(snapshot)}"
    return (
        f"<div class='yadtq-batch-view' style='font-family:var(--jp-ui-font-family,sans-serif);"
        f"font-size:13px;max-width:720px'>"
        f"<div>{headline} <span style='color:#888'>batch {html.escape(batch.id)}</span></div>"
        f'<div class="yadtq-progress" {data} data-percent="{percent:.0f}" '
        f"style='display:flex;height:14px;margin:4px 0;background:#eee;border-radius:3px;"
        f"overflow:hidden'>{segments}</div>"
        f"<div>{_unbroken(batch_summary(snapshot))}</div>"
        + (f"<table style='margin-top:4px;font-size:12px'><tr><th style='text-align:left'>"
           f"worker</th><th>finished</th><th></th></tr>{workers}</table>" if workers else "")
        + "</div>"
    )


def _outcome(snapshot: dict[str, Any]) -> str:
    """HTML for how a finished batch ended: green only when every task succeeded."""
    unsuccessful = [s for s in TaskStatus
                    if s.is_finished and s is not TaskStatus.SUCCESS and snapshot[s.value]]
    text = f"finished in {format_seconds(snapshot['elapsed'])}"
    if unsuccessful:
        text += " with " + ", ".join(f"{snapshot[s.value]} {s.label}" for s in unsuccessful)
    colour = unsuccessful[0].colour if unsuccessful else TaskStatus.SUCCESS.colour
    return f"<span style='color:{colour}'>{html.escape(text)}</span>"


def future_html(future: TaskFuture) -> str:
    """HTML for one task: call, status badge, worker, elapsed, then result or error."""
    status = future.status
    call = f"{future.task}({_call_args(future)})"
    if len(call) > 120:
        call = call[:117] + "..."
    badge = (f"<span style='background:{status.colour};color:white;"
             f"padding:1px 6px;border-radius:8px'>{status.value}</span>")
    details = [f"<code>{html.escape(call)}</code>", badge]
    if future.worker:
        details.append(f"on {html.escape(future.worker)}")
    elapsed = _elapsed(future)
    if elapsed is not None:
        details.append(format_seconds(elapsed))
    if status is TaskStatus.SCHEDULED and future.waits_for:
        details.append(f"waits for {html.escape(future.waits_for)}")
    if status is TaskStatus.SCHEDULED and future.due_at is not None:
        details.append(format_due(future.due_at - time.time()))
    body = ""
    if future.done() and not future.cancelled():  # a cancelled one has no outcome to show
        error = future.exception()
        if error is None:
            body = f"<div>result: <code>{html.escape(repr(future.result()))[:2000]}</code></div>"
        else:
            kind = getattr(error, "error_type", type(error).__name__)
            message = getattr(error, "message", str(error))
            trace = getattr(error, "traceback", "")
            body = (f"<div style='color:{TaskStatus.FAILED.colour}'>{html.escape(kind)}: "
                    f"{html.escape(message)}</div>")
            if trace:
                body += (f"<details><summary>traceback</summary><pre style='font-size:11px'>"
                         f"{html.escape(trace)}</pre></details>")
    return (f"<div class='yadtq-future-view' style='font-size:13px'>{' '.join(details)}"
            f" <span style='color:#888'>id {future.id}</span>{body}</div>")


def _call_args(future: TaskFuture) -> str:
    args = [repr(a) for a in future.args]
    args += [f"{k}={v!r}" for k, v in future.kwargs.items()]
    return ", ".join(args)


def _elapsed(future: TaskFuture) -> float | None:
    if future.started_at is None:
        return None
    return (future.finished_at or time.time()) - future.started_at


def workers_html(client: Client) -> str:
    """An HTML table of the queue's workers, judged alive, dead or stopped from heartbeats."""
    frame = client.workers()
    if frame.empty:
        return "<div class='yadtq-workers-view'>no worker has sent a heartbeat yet</div>"
    rows = "".join(
        f"<tr><td>{html.escape(str(r.name))}</td><td>{html.escape(str(r.host))}</td>"
        f"<td style='color:{WORKER_COLOURS.get(r.status, '#000')}'><b>{r.status}</b></td>"
        f"<td>{r.heartbeat_age:.1f} s</td><td>{r.in_flight}</td><td>{r.processed}</td>"
        f"<td>{r.failed}</td></tr>"
        for r in frame.itertuples()
    )
    header = "".join(f"<th>{h}</th>" for h in
                     ("worker", "host", "status", "heartbeat age", "in flight", "processed",
                      "failed"))
    return (f"<table class='yadtq-workers-view' style='font-size:12px'><tr>{header}</tr>"
            f"{rows}</table>")


# --- live widgets ----------------------------------------------------------

def widgets_available() -> bool:
    """True when ipywidgets imports and an IPython kernel is running."""
    shell = _shell()
    if shell is None or not hasattr(shell, "kernel"):
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class LiveView:
    """An ipywidgets HTML widget re-rendered from a source while it changes.

    A background thread wakes on change notifications (or every
    ``idle_refresh`` seconds, so clocks tick), renders at most once per
    ``MIN_REFRESH_SECONDS``, and stops after rendering the final state. The
    view holds its source through a weakref, so it never keeps a batch alive.
    """

    def __init__(
        self,
        source: Any,
        render: Callable[[Any], str],
        finished: Callable[[Any], bool],
        css_class: str,
        idle_refresh: float = IDLE_REFRESH_SECONDS,
    ) -> None:
        import ipywidgets

        self._source = weakref.ref(source)
        self._render = render
        self._finished = finished
        self._idle_refresh = idle_refresh
        # Called with the source once its final state is rendered (not if it began final).
        self.on_final: Callable[[Any], None] | None = None
        self._changed = threading.Event()
        self._closed = threading.Event()
        self.widget = ipywidgets.HTML(value=render(source))
        self.widget.add_class(css_class)
        if finished(source):
            self.widget.add_class("yadtq-finished")
            return
        self._thread = threading.Thread(target=self._refresh_loop, name="yadtq-view",
                                        daemon=True)
        self._thread.start()

    def notify(self, *_: object) -> None:
        """Ask for a refresh (called from the event listener's thread)."""
        self._changed.set()

    def close(self) -> None:
        """Stop refreshing; the widget keeps its last content."""
        self._closed.set()
        self._changed.set()

    def _refresh_loop(self) -> None:
        while not self._closed.is_set():
            self._changed.wait(self._idle_refresh)
            self._changed.clear()
            source = self._source()
            if source is None:
                return
            try:
                finished = self._finished(source)
                self.widget.value = self._render(source)
            except Exception:  # noqa: BLE001 - a display problem must not spam the kernel
                logger.exception("yadtq widget refresh failed; the view stops updating")
                return
            if finished:
                self.widget.add_class("yadtq-finished")
                self._final(source)
                return
            del source
            time.sleep(MIN_REFRESH_SECONDS)

    def _final(self, source: Any) -> None:
        if self.on_final is None:
            return
        try:
            self.on_final(source)
        except Exception:  # noqa: BLE001 - a display problem must not spam the kernel
            logger.exception("yadtq could not update the saved view to the final state")


def batch_view(batch: TaskBatch) -> LiveView:
    """A live progress widget for a batch."""
    view = LiveView(batch, batch_html, lambda b: b.snapshot()["finished"], "yadtq-batch")
    batch.add_change_callback(view.notify)
    return view


def future_view(future: TaskFuture) -> LiveView:
    """A live widget for one task."""
    view = LiveView(future, future_html, lambda f: f.done(), "yadtq-future")
    future.add_change_callback(view.notify)
    return view


class WorkersDashboard:
    """A live table of a queue's workers, refreshed from heartbeats once a second."""

    def __init__(self, client: Client, refresh: float = DASHBOARD_REFRESH_SECONDS) -> None:
        if not widgets_available():
            raise ImportError(NO_WIDGETS)
        self._client = client
        self.view = LiveView(client, workers_html, lambda c: c.closed, "yadtq-workers",
                             idle_refresh=refresh)

    def stop(self) -> None:
        """Stop refreshing the table."""
        self.view.close()

    def __repr__(self) -> str:
        frame = self._client.workers()
        counts = frame["status"].value_counts().to_dict() if not frame.empty else {}
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet"
        return f"<WorkersDashboard queue={self._client.config.queue!r}: {states}>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = self.view.widget._repr_mimebundle_(**kwargs)
        return {WIDGET_MIME: data[WIDGET_MIME], "text/plain": repr(self),
                "text/html": self.view.widget.value}


# --- wiring into IPython ---------------------------------------------------

def _shell() -> Any:
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def _live_display(make_view: Callable[[Any], LiveView],
                  render: Callable[[Any], str]) -> Callable[[Any], None]:
    """Display an object as a live widget beside its HTML snapshot and text repr.

    The output gets a display id, and when the object reaches its final state the
    snapshot and repr are replaced by final ones (``update_display``): a notebook
    saved and opened without a kernel shows how the batch ended, not a stale
    "120/200 done".
    """
    from IPython.display import display

    def show(obj: Any) -> None:
        view = make_view(obj)
        widget = view.widget._repr_mimebundle_()[WIDGET_MIME]
        handle = display({WIDGET_MIME: widget, "text/html": render(obj),
                          "text/plain": repr(obj)}, raw=True, display_id=True)
        if handle is not None:
            view.on_final = lambda final: handle.update(
                {WIDGET_MIME: widget, "text/html": render(final), "text/plain": repr(final)},
                raw=True)

    return show


def register() -> bool:
    """Show futures and batches as live widgets in this IPython, with HTML fallbacks.

    Safe to call many times; returns False outside IPython.
    """
    shell = _shell()
    if shell is None:
        return False
    formatters = shell.display_formatter
    formatters.formatters["text/html"].for_type(TaskBatch, batch_html)
    formatters.formatters["text/html"].for_type(TaskFuture, future_html)
    if widgets_available():
        formatters.ipython_display_formatter.for_type(TaskBatch,
                                                      _live_display(batch_view, batch_html))
        formatters.ipython_display_formatter.for_type(TaskFuture,
                                                      _live_display(future_view, future_html))
    from yadtq import workflow_display  # it builds on this module's views

    workflow_display.register(shell)
    return True


class NotebookClient(Client):
    """The client ``connect()`` returns: the core client plus notebook views."""

    def dashboard(self) -> WorkersDashboard:
        """A live table of this queue's workers: status, heartbeat age, in flight, counts.

        Raises:
            ImportError: ipywidgets is missing or no kernel runs; says what to install.
        """
        return WorkersDashboard(self)

    workers_widget = dashboard
