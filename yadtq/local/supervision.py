"""The owner's half of a local stack's supervision (top layer, in ``local``): :class:`Supervisor`.

Every :class:`~yadtq.local.LocalStack`, and every :class:`~yadtq.local.LocalCluster`
that runs workers on servers it does not own, has one. It starts the stack's
watchdog (:mod:`yadtq.local.watchdog`), whose process group the children join, and
keeps the stack's record: one owner-only JSON file per running stack in
:func:`yadtq.config.local_stacks_dir`, with the owner's pid, the watchdog's, the pid
of every child, the folders to remove and the settings clients need. That is how
``yadtq local status`` and ``yadtq local down`` find and stop every stack, including
those a notebook owns, and how the watchdog knows what to stop and remove when the
owner dies. A stack recorded as the machine's default (``yadtq local up``) is also
written to :func:`yadtq.config.local_stack_record_path`, where ``connect()`` finds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from yadtq.config import local_stacks_dir
from yadtq.local import watchdog
from yadtq.local.processes import ChildProcess, in_process_group

WATCHDOG_EXIT_TIMEOUT = 30.0  # longer than the watchdog's own graces added up
_owner_ends: set[int] = set()  # this process's write ends of its watchdogs' pipes


def _forget_owner_ends() -> None:
    """In a child forked without exec (multiprocessing's "fork"), point the inherited write
    ends at /dev/null, so that child cannot keep a watchdog from seeing its owner die.
    (Not closed: the copied file objects would later close whatever reused the number.)"""
    null = os.open(os.devnull, os.O_WRONLY)
    for descriptor in _owner_ends:
        with contextlib.suppress(OSError):
            os.dup2(null, descriptor)
    os.close(null)
    _owner_ends.clear()


os.register_at_fork(after_in_child=_forget_owner_ends)


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON, owner-only (it may hold a password and the secret) and
    atomically, so a reader never sees half a file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


class Supervisor:
    """A stack's watchdog and record, as its owner sees them.

    :attr:`group` is the process group every child must join (``spawn(group=...)``);
    :meth:`add_child` records it. :meth:`close` (a clean stop, after the children are
    stopped) removes the record and lets the watchdog go.
    """

    def __init__(self, **fields: Any) -> None:
        self.id = secrets.token_hex(4)
        self.path = local_stacks_dir() / f"{self.id}.json"  # fixed now: $YADTQ_HOME may change
        # The write end of the watchdog's stdin is this process's alone (Popen makes
        # its pipes close-on-exec), so it reads end-of-file only once this process is gone.
        self._watchdog = subprocess.Popen(
            [sys.executable, "-I", watchdog.__file__, str(self.path)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            **in_process_group(0),
        )
        assert self._watchdog.stdin is not None
        _owner_ends.add(self._watchdog.stdin.fileno())
        self.record: dict[str, Any] = {
            "id": self.id, "pid": os.getpid(), "owner": shlex.join(sys.argv)[:200],
            "watchdog": self._watchdog.pid, "started_at": time.time(), "stop": "watchdog",
            "pids": {}, "workers": [], "cleanup": [], "pointer": None, **fields,
        }
        self._write()

    @property
    def group(self) -> int:
        """The process group of the stack's children (the watchdog leads it)."""
        return self._watchdog.pid

    def update(self, **fields: Any) -> None:
        """Change fields of the record (and of the default-stack pointer, if it is one)."""
        self.record.update(fields)
        self._write()

    def add_child(self, child: ChildProcess) -> None:
        """Record a child just started (a restarted one replaces its namesake)."""
        self.update(pids={**self.record["pids"], child.name: child.pid})

    def remove_child(self, child: ChildProcess) -> None:
        """Forget a child that was stopped on purpose."""
        if self.record["pids"].get(child.name) == child.pid:
            self.update(pids={k: v for k, v in self.record["pids"].items() if k != child.name})

    def remove_on_exit(self, folder: Path) -> None:
        """Have the watchdog remove ``folder`` if the owner dies."""
        self.update(cleanup=[*self.record["cleanup"], str(folder)])

    def keep(self, folder: Path) -> None:
        """Have the watchdog keep ``folder`` after all (its logs are worth reading)."""
        self.update(cleanup=[f for f in self.record["cleanup"] if f != str(folder)])

    def point_at(self, pointer: Path) -> None:
        """Record this stack also at ``pointer``, as the machine's default stack, which
        ``yadtq local down`` stops by signalling its owner (``yadtq local up`` stops cleanly)."""
        self.update(pointer=str(pointer), stop="owner")

    def drop_pointer(self) -> None:
        """Remove the default-stack pointer first on a clean stop, so no new client finds a
        stack that is stopping."""
        pointer = self.record["pointer"]
        if pointer and watchdog.read_record(Path(pointer)).get("id") == self.id:
            with contextlib.suppress(FileNotFoundError):
                Path(pointer).unlink()
        self.record["pointer"] = None

    def close(self) -> None:
        """After a clean stop: remove the records, and wait for the watchdog to check that
        nothing of the group is left and exit. Safe to repeat."""
        if self._watchdog.stdin is None or self._watchdog.stdin.closed:
            return
        self.drop_pointer()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        _owner_ends.discard(self._watchdog.stdin.fileno())
        self._watchdog.stdin.close()
        try:
            self._watchdog.wait(WATCHDOG_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._watchdog.kill()
            self._watchdog.wait()

    def _write(self) -> None:
        if self._watchdog.stdin is None or self._watchdog.stdin.closed:
            return  # closed: the record is gone and stays gone
        write_private(self.path, self.record)
        if self.record["pointer"]:
            write_private(Path(self.record["pointer"]), self.record)
