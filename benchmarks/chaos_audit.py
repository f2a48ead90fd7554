"""What a chaos run did to its tasks: the audit of their records and histories, and the
report (``chaos.py`` injects the faults; this reads what they left)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yadtq

FINAL = ("success", "failed")

@dataclass
class Fault:
    """One injected fault and what it took to recover from it."""

    kind: str
    name: str
    done_at_injection: int
    injected_at: float  # unix seconds
    victim: str | None = None
    held: list[str] = field(default_factory=list)  # tasks the victim held at injection
    duration: float = 0.0  # how long the fault itself lasted, seconds
    progress_resumed: float | None = None  # seconds from injection until done moved again
    held_settled: float | None = None  # seconds until every held task had an outcome
    overlaps: list[str] = field(default_factory=list)  # faults active at the same time
    note: str = ""
    held_history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def recovery(self) -> float | None:
        """Seconds until the batch moved again and (kill, stop) every held task had an outcome."""
        if self.progress_resumed is None or (self.held and self.held_settled is None):
            return None
        return max(self.progress_resumed, self.held_settled or 0.0)



def changed_outcomes(
    futures: Sequence[yadtq.TaskFuture], snapshots: Sequence[dict[str, Any]]
) -> set[str]:
    """Ids whose final outcome differs between the client's first view and later records.

    The client's future resolved from the first final event (or the record read
    then); each snapshot maps id -> record read later. Event times travel as JSON
    numbers of 14 significant digits, so finish times are compared to the millisecond.
    """
    changed = set()
    for future in futures:
        if not future.done():
            continue
        first = (future.status.value, future.attempt, future.worker)
        for records in snapshots:
            record = records.get(future.id)
            if (not record or (record["status"], record["attempt"], record["worker"]) != first
                    or abs((record["finished_at"] or 0) - (future.finished_at or 0)) > 1e-3):
                changed.add(future.id)
    return changed


def settle_time(records: dict[str, dict[str, Any] | None], fault: Fault) -> float | None:
    """Seconds from the injection until the last of its held tasks got its outcome."""
    finished = []
    for task_id in fault.held:
        record = records.get(task_id)
        if not record or record.get("status") not in FINAL or not record.get("finished_at"):
            return None
        finished.append(record["finished_at"])
    return max(finished, default=fault.injected_at) - fault.injected_at


def describe_held(fault: Fault, records: dict[str, dict[str, Any] | None]) -> str:
    """Where the victim's held tasks finally ran, and how many of its late results were refused."""
    ran_on = sorted({(records.get(i) or {}).get("worker") or "?" for i in fault.held})
    refused = sum(1 for events in fault.held_history.values() for e in events
                  if e.get("event") == "refused" and e.get("worker") == fault.victim)
    note = f"held tasks ended on {', '.join(ran_on)}"
    if refused:
        note += f"; {refused} late result{'s' if refused > 1 else ''} refused"
    return note


def mark_overlaps(faults: list[Fault], unrecovered: float) -> None:
    """Note, for each fault, the other faults active before it had recovered (one that
    never recovered counts as active for ``unrecovered`` seconds)."""
    def window(fault: Fault) -> tuple[float, float]:
        length = max(fault.recovery or unrecovered, fault.duration)
        return fault.injected_at, fault.injected_at + length

    for fault in faults:
        start, end = window(fault)
        fault.overlaps = [other.kind for other in faults if other is not fault
                          and window(other)[0] < end and start < window(other)[1]]


def audit(client: yadtq.Client, main: yadtq.TaskBatch, failing: yadtq.TaskBatch,
          faults: list[Fault], snapshots: list[dict[str, Any]], unrecovered: float
          ) -> dict[str, Any]:
    """Count outcomes from the Redis records and attempts histories of every task (a fault
    that never recovered overlaps others for ``unrecovered`` seconds)."""
    futures = [*main, *failing]
    ids = [f.id for f in futures]
    records = dict(zip(ids, client.backend.task_records(ids), strict=True))
    snapshots.append(records)
    histories = {i: client.history(i) for i in ids}
    events = {i: Counter(e.get("event") for e in h) for i, h in histories.items()}
    rerun = {i for i, c in events.items() if c["claimed"] > 1}
    overwritten = {i for i, c in events.items() if c["success"] + c["failed"] > 1}
    overwritten |= changed_outcomes(futures, snapshots)
    for fault in faults:
        if fault.held:
            fault.held_history = {i: histories[i] for i in fault.held}
            fault.held_settled = settle_time(records, fault)
            fault.note = describe_held(fault, records)
    mark_overlaps(faults, unrecovered)
    main_status = Counter((records[f.id] or {}).get("status", "missing") for f in main)
    fail_status = Counter((records[f.id] or {}).get("status", "missing") for f in failing)
    expected = sum(1 for f in failing if (records[f.id] or {}).get("status") == "failed"
                   and records[f.id].get("error_type") == "RuntimeError")
    held = {task_id for fault in faults for task_id in fault.held}
    return {
        "submitted": len(ids),
        "succeeded": main_status["success"],
        "failed_as_expected": expected,
        "failed_unexpectedly": main_status["failed"] + fail_status["success"]
        + fail_status["failed"] - expected,
        "lost": sum(1 for r in records.values() if not r or r.get("status") not in FINAL),
        "rerun_after_fault": len(rerun),
        "rerun_not_held_by_a_faulted_worker": len(rerun - held),
        "late_results_refused": sum(c["refused"] for c in events.values()),
        "overwritten": len(overwritten),
        "batch_counters": main.status_counts(),
    }



def table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    """Rows as aligned plain text; numbers (and dashes) right-aligned, except in column one."""
    lines = ([list(header)] if header else []) + [list(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]

    def cell(column: int, text: str) -> str:
        numeric = column > 0 and (text[:1].isdigit() or text == "-")
        return text.rjust(widths[column]) if numeric else text.ljust(widths[column])

    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell(i, text) for i, text in enumerate(line)).rstrip())
        if header and n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def seconds(value: float | None) -> str:
    """A duration for the table, or a dash."""
    return "-" if value is None else f"{value:.2f} s"


def render(report: dict[str, Any]) -> str:
    """The report as two plain-text tables and a verdict."""
    c, poison = report["counts"], report["poison"]
    rows = [
        ("tasks submitted", str(c["submitted"])),
        ("succeeded", str(c["succeeded"])),
        ("failed as expected", f"{c['failed_as_expected']} of {report['expected_failures']}"),
        ("failed unexpectedly", str(c["failed_unexpectedly"])),
        ("lost (no final outcome)", str(c["lost"])),
        ("re-run after a fault", str(c["rerun_after_fault"])),
        ("  not held by a faulted worker", str(c["rerun_not_held_by_a_faulted_worker"])),
        ("late results refused (fenced)", str(c["late_results_refused"])),
        ("accepted results overwritten", str(c["overwritten"])),
    ]
    if poison["sent"]:
        rows += [
            ("poison messages dead-lettered", f"{poison['dead_lettered']} of {poison['sent']}"),
            ("poison messages run as tasks", str(poison["run_as_tasks"])),
            ("  their ids' records ended refused", str(poison["records_ended_refused"])),
        ]
    rows += [
        ("workers alive at the end",
         f"{report['workers_alive']} of {report['settings']['workers']}"),
        ("wall time", seconds(report["elapsed"])),
    ]
    faults = table([
        (f["name"], str(f["done_at_injection"]), f["victim"] or "-", str(len(f["held"])),
         seconds(f["duration"]), seconds(f["progress_resumed"]), seconds(f["held_settled"]),
         seconds(f["recovery"]), ",".join(f["overlaps"]) or "-", f["note"])
        for f in report["faults"]
    ], header=("fault", "at done", "victim", "held", "lasted", "moving again",
               "held done", "recovered", "overlaps", "note"))
    verdict = "PASS" if report["ok"] else "FAIL: " + "; ".join(report["problems"])
    return f"{table(rows)}\n\n{faults}\n\n{verdict}"

