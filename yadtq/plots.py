"""Pictures of a batch (core layer): who ran what, and when.

Both functions take the DataFrame of :meth:`TaskBatch.to_dataframe` and
return a matplotlib ``Figure``; matplotlib is imported only when one is drawn.
The timeline is the picture that proves parallelism: one lane per worker,
each lane split into as many rows as the worker ran tasks at once.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from yadtq.extras import require
from yadtq.status import TaskStatus

if TYPE_CHECKING:
    from collections.abc import Iterable

    import pandas
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

STATUS_COLOURS = {status.value: status.colour for status in TaskStatus}
UNKNOWN_COLOUR = "#666666"  # a row whose record expired


def _figure(width: float, height: float) -> Figure:
    figure = require("matplotlib.figure", "plotting a batch")
    return figure.Figure(figsize=(width, height), layout="constrained")


def _rows_within_lane(starts: list[float], ends: list[float]) -> list[int]:
    """Give each interval the lowest row free at its start, so overlapping bars stack.

    A row is free once its last interval ended at or before the start, so a task that
    starts as another ends takes that one's row: rows = the most tasks at once.
    """
    row_free_at: list[float] = []
    rows = []
    for start, end in zip(starts, ends, strict=True):
        for row, free_at in enumerate(row_free_at):
            if free_at <= start:
                row_free_at[row] = end
                rows.append(row)
                break
        else:
            row_free_at.append(end)
            rows.append(len(row_free_at) - 1)
    return rows


def timeline(frame: pandas.DataFrame, title: str = "") -> Figure:
    """A Gantt chart of the started tasks in ``frame``: lanes per worker, bars per task."""
    started = frame.dropna(subset=["started_at"]).sort_values("started_at")
    figure = _figure(10, 1.2 + 0.9 * max(1, started["worker"].nunique()))
    axes = figure.add_subplot()
    if started.empty:
        axes.text(0.5, 0.5, "no task has started yet", ha="center", va="center")
        axes.set_axis_off()
        return figure
    origin = started["started_at"].min()
    # A task still running holds its row for good, drawn up to the latest time seen so far.
    drawn_until = (started[["started_at", "finished_at"]].max().max() - origin).total_seconds()
    workers = sorted(started["worker"].fillna("?").unique())
    for lane, worker in enumerate(workers):
        tasks = started[started["worker"].fillna("?") == worker]
        starts = [(t - origin).total_seconds() for t in tasks["started_at"]]
        ends = [math.inf if f != f else (f - origin).total_seconds()  # NaT: still running
                for f in tasks["finished_at"]]
        rows = _rows_within_lane(starts, ends)
        height = 0.8 / (max(rows) + 1)
        for start, end, row, status in zip(starts, ends, rows, tasks["status"], strict=True):
            axes.barh(lane - 0.4 + row * height + height / 2,
                      max(min(end, drawn_until) - start, 1e-3), left=start, height=height * 0.9,
                      color=STATUS_COLOURS.get(status, UNKNOWN_COLOUR), linewidth=0)
    axes.set_yticks(range(len(workers)), workers)
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the first task started")
    axes.set_title(title or "task timeline per worker")
    _legend(axes, started["status"].unique())
    return figure


def distribution(frame: pandas.DataFrame, title: str = "") -> Figure:
    """A bar chart of tasks per worker, stacked by status."""
    ran = frame.dropna(subset=["worker"])
    counts = ran.groupby(["worker", "status"]).size().unstack(fill_value=0)
    figure = _figure(7, 3.5)
    axes = figure.add_subplot()
    if counts.empty:
        axes.text(0.5, 0.5, "no task has run yet", ha="center", va="center")
        axes.set_axis_off()
        return figure
    bottom = [0] * len(counts)
    for status in [s for s in STATUS_COLOURS if s in counts.columns]:
        values = counts[status].tolist()
        axes.bar(counts.index, values, bottom=bottom, color=STATUS_COLOURS[status],
                 label=status)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for x, total in enumerate(bottom):
        axes.annotate(str(total), (x, total), ha="center", va="bottom")
    axes.set_ylabel("tasks")
    axes.set_title(title or "tasks per worker")
    axes.legend(loc="lower right")
    return figure


def _legend(axes: Axes, statuses: Iterable[str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=STATUS_COLOURS[s], label=s) for s in STATUS_COLOURS if s in statuses]
    axes.legend(handles=handles, loc="lower right", fontsize="small")
