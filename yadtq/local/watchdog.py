"""The watchdog of one local stack (top layer, in ``local``): a process that outlives its owner.

A stack's owner (a script, a notebook kernel, ``yadtq local up``) can die without
running any Python code: SIGKILL, or SIGTERM/SIGHUP with the default handler. Its
broker, Redis, workers and their fork servers and task processes would then run on
under PID 1, unrecorded. So the owner (:class:`yadtq.local.supervision.Supervisor`)
starts this small process beside every stack:

- its stdin is the read end of a pipe whose write end only the owner holds, so
  end-of-file means the owner is gone, however it died. (``PR_SET_PDEATHSIG`` alone
  would not do: it reaches only direct children, not a worker's fork server or task
  processes, and fires when the parent *thread* that started the child exits.)
- it leads the process group every child of the stack joins before it runs its
  program, so a worker's grandchildren are in the group too, and so is a child the
  owner started a moment before it died, before it could record it.
- on end-of-file, or on SIGTERM (``yadtq local down``), it stops the group: SIGTERM to
  the workers first (so their running tasks end while Redis still answers), then to
  the rest, SIGKILL to whatever is left after a grace; then it removes the stack's
  temporary folders and its records.

An owner that stops its stack itself removes the record first; the watchdog then only
makes sure nothing of its group is left. It imports only the standard library and is
run by path (``python -I watchdog.py RECORD``), so it starts in milliseconds and
nothing in the owner's environment can keep it from cleaning up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

WORKER_GRACE = 5.0  # seconds the workers get to finish running tasks
SERVER_GRACE = 3.0  # seconds the rest of the group gets after SIGTERM, before SIGKILL
_POLL = 0.05


class _StopRequested(Exception):
    """SIGTERM arrived: stop the stack now, although its owner runs."""


def group_members(group: int) -> set[int]:
    """Pids of the live (not zombie) processes in process group ``group``, but this one."""
    members = set()
    if Path("/proc/self/stat").exists():
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(fields) > 2 and fields[2] == str(group) and fields[0] != "Z":
                members.add(int(stat.parent.name))
    else:  # no /proc (macOS): ask ps
        listing = subprocess.run(["ps", "-A", "-o", "pid=,pgid=,stat="], capture_output=True,
                                 text=True, check=False).stdout
        for line in listing.splitlines():
            pid, pgid, state = (line.split() + ["", "", ""])[:3]
            if pgid == str(group) and not state.startswith("Z"):
                members.add(int(pid))
    members.discard(os.getpid())
    return members


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_until_gone(group: int, pids: set[int], grace: float) -> set[int]:
    """Wait up to ``grace`` seconds for ``pids`` to leave the group; returns those left."""
    deadline = time.monotonic() + grace
    left = pids & group_members(group)
    while left and time.monotonic() < deadline:
        time.sleep(_POLL)
        left &= group_members(group)
    return left


def stop_group(group: int, first: Iterable[int] = ()) -> None:
    """Stop every process of ``group``: ``first`` (the workers), then the rest, then SIGKILL."""
    members = group_members(group)
    workers = set(first) & members  # a recorded pid not in the group is someone else's now
    _signal_all(workers, signal.SIGTERM)
    _wait_until_gone(group, workers, WORKER_GRACE)
    members = group_members(group)
    _signal_all(members, signal.SIGTERM)
    _wait_until_gone(group, members, SERVER_GRACE)
    left = group_members(group)
    _signal_all(left, signal.SIGKILL)
    _wait_until_gone(group, left, SERVER_GRACE)


def read_record(path: Path) -> dict[str, Any]:
    """The record at ``path``, or ``{}`` if its owner already removed it."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def remove_traces(record: dict[str, Any], path: Path) -> None:
    """Remove a stopped stack's temporary folders, its record and the pointer to it."""
    for folder in record.get("cleanup", []):
        shutil.rmtree(folder, ignore_errors=True)
    pointer = record.get("pointer")
    if pointer and read_record(Path(pointer)).get("id") == record.get("id"):
        with contextlib.suppress(FileNotFoundError):
            Path(pointer).unlink()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def shut_down(path: Path, group: int) -> None:
    """Stop the stack recorded at ``path`` whose children are in ``group``, and clean up."""
    record = read_record(path)
    pids = record.get("pids", {})
    stop_group(group, [pids[name] for name in record.get("workers", []) if name in pids])
    remove_traces(record, path)


def _request_stop(signum: int, frame: object) -> None:
    raise _StopRequested


def main(argv: list[str]) -> int:
    """Wait for the owner to go (end-of-file on stdin) or for SIGTERM, then shut down."""
    path = Path(argv[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the owner's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _request_stop)
    try:
        while os.read(sys.stdin.fileno(), 4096):
            pass  # the owner never writes; only end-of-file matters
    except _StopRequested:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM reaches us too
    shut_down(path, os.getpgrp())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
