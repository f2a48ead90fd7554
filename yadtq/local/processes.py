"""Child processes of the local stack (top layer, in ``local``): start, watch and stop them.

Every child runs in its stack's process group (led by the stack's watchdog, see
:mod:`yadtq.local.watchdog`), not the owner's, with its output in a log file (a pipe
could fill and block it). So a Ctrl-C in the terminal reaches only the owner, which
then stops its children in order, and the watchdog can stop the whole group,
grandchildren included, if the owner dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


@dataclass
class ChildProcess:
    """One child process this module owns, with the log file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    # The longest a clean stop may take before SIGKILL (None: the caller's timeout). A
    # KRaft node that has lost its quorum would wait for it for ever.
    stop_grace: float | None = None
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        """The operating-system process id."""
        return self.popen.pid

    @property
    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the child's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class ExitedDuringStartup(Exception):
    """A child died before answering; the caller may retry on another port."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def distinct_free_ports(count: int) -> list[int]:
    """``count`` different free loopback ports (a KRaft node needs two, a cluster more)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def in_process_group(group: int) -> dict[str, Any]:
    """``Popen`` options that put the child in process group ``group`` (0: a new one) before
    it runs its program, so it cannot fork anything outside the group first."""
    if sys.version_info >= (3, 11):
        return {"process_group": group}
    return {"preexec_fn": lambda: os.setpgid(0, group)}  # Python 3.10 has no process_group


def spawn(
    name: str, command: Sequence[str], log_path: Path, *, group: int,
    env: dict[str, str] | None = None, stop_grace: float | None = None,
) -> ChildProcess:
    """Start a child in process group ``group``, writing to a log file (a pipe could fill
    and block it)."""
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            **in_process_group(group),
        )
    return ChildProcess(name, popen, log_path, stop_grace)


def stop_all(children: Sequence[ChildProcess], timeout: float) -> None:
    """SIGTERM every child, give them ``timeout`` seconds together, then SIGKILL the rest.

    A child with a shorter ``stop_grace`` is killed once that has passed.
    """
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.popen.send_signal(signal.SIGTERM)
            child.popen.send_signal(signal.SIGCONT)  # a stopped child (SIGSTOP) acts on it now
    start = time.monotonic()
    for child in children:
        grace = timeout if child.stop_grace is None else min(timeout, child.stop_grace)
        try:
            child.popen.wait(max(0.0, start + grace - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.popen.kill()
            child.popen.wait()


def wait_until_answers(
    child: ChildProcess, answers: Callable[[], bool], timeout: float, what: str
) -> None:
    """Poll ``answers`` until it is true, the child exits, or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not answers():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{what} did not answer within {timeout:g} s; its log ({child.log_path.name}) "
                f"ends with:\n{child.log_tail()}"
            )
        try:
            code = child.popen.wait(timeout=0.05)  # waits on the process itself between probes
        except subprocess.TimeoutExpired:
            continue
        raise ExitedDuringStartup(
            f"{what} exited with code {code} during startup; its log ({child.log_path.name}) "
            f"ends with:\n{child.log_tail()}"
        )
