"""Every local stack on this machine, as ``yadtq local status|env|down`` see them (top layer,
in ``local``).

A stack is found through its record (see :mod:`yadtq.local.supervision`), whoever owns
it: ``yadtq local up``, a script or a notebook. A record whose owner and processes are
all gone does not mislead: listing removes it, with the temporary folders it names.
A stack whose owner is gone but whose processes are not (its watchdog is still
stopping them, or was killed too) is listed as orphaned, and can be stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from yadtq.config import (
    local_stack_record_path,
    local_stacks_dir,
    owner_alive,
    read_stack_record,
)
from yadtq.errors import YadtqError
from yadtq.local import watchdog


def running_stacks() -> list[dict[str, Any]]:
    """The records of the stacks that run (the default one first), oldest first.

    Each gets ``"orphaned": True`` when its owner is gone but some of its processes
    are not. Records of stacks that are wholly gone are removed.
    """
    found: list[dict[str, Any]] = []
    for path in local_stacks_dir().glob("*.json"):
        record = read_stack_record(path)
        if record is None or not isinstance(record.get("watchdog"), int):
            continue
        record["orphaned"] = not owner_alive(record)
        if record["orphaned"] and not _group_runs(record):
            watchdog.remove_traces(record, path)
            continue
        found.append(record)
    found.sort(key=lambda r: (not is_default(r), float(r.get("started_at") or 0)))
    return found


def is_default(record: dict[str, Any]) -> bool:
    """True for the stack ``connect()`` finds with no arguments (``yadtq local up``'s)."""
    return record.get("pointer") == str(local_stack_record_path())


def choose(records: list[dict[str, Any]], stack_id: str | None) -> dict[str, Any]:
    """The stack whose id starts with ``stack_id``; with none, the default or the only one.

    Raises:
        YadtqError: no stack, or no one stack, matches; the message lists them.
    """
    if not records:
        raise YadtqError("no local stack is running; start one with `yadtq local up`")
    if stack_id:
        matches = [r for r in records if str(r.get("id", "")).startswith(stack_id)]
    else:
        matches = [r for r in records if is_default(r)] or records
    if len(matches) == 1:
        return matches[0]
    listed = "; ".join(f"{r.get('id')} (owner pid {r.get('pid')}: {r.get('owner', '?')})"
                       for r in records)
    which = f"match {stack_id!r}" if stack_id else "run"
    raise YadtqError(f"{len(matches) or 'no'} local stacks {which}: {listed}; name one by id")


def stop(record: dict[str, Any], timeout: float) -> None:
    """Stop a running stack and wait until none of its processes is left.

    ``yadtq local up``'s is stopped by SIGTERM to its owner, which stops its workers,
    then its servers; any other by SIGTERM to its watchdog (a notebook that owns a
    stack keeps running); an orphaned one whose watchdog is gone, from here.

    Raises:
        YadtqError: something of it still ran after ``timeout`` seconds.
    """
    owner, group = int(record["pid"]), int(record["watchdog"])
    by_owner = record.get("stop") == "owner" and alive(owner)
    if by_owner:
        _signal(owner)
    elif group in watchdog.group_members(group):
        _signal(group)
    else:
        watchdog.shut_down(local_stacks_dir() / f"{record['id']}.json", group)
    deadline = time.monotonic() + timeout
    while (by_owner and alive(owner)) or _group_runs(record):
        if time.monotonic() > deadline:
            raise YadtqError(f"the local stack {record.get('id')} (owner pid {owner}) did not "
                             f"stop within {timeout:g} s; stop it with `kill -9 {owner}`")
        time.sleep(0.1)  # these processes are not ours, so they cannot be waited on


def _signal(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _group_runs(record: dict[str, Any]) -> bool:
    """True while a process of the stack's group runs (its watchdog leads it)."""
    return bool(watchdog.group_members(int(record["watchdog"])))


def alive(pid: int) -> bool:
    """True while ``pid`` runs (an exited process its parent has not reaped does not)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except ProcessLookupError:
        return False
    except OSError:  # no /proc: the signal probe is all there is
        return True
