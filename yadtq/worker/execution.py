"""Where task code runs (core layer): a child process per slot, or the slot's own thread.

``process`` mode (the default) runs each slot's tasks in a long-lived child
process started from a fork server that has already imported the task
modules. A task over its time limit, or cancelled while running, is really
stopped: the child is killed and a fresh one takes its place. ``thread`` mode
runs tasks in the worker's own threads: no start-up or IPC cost, but a time
limit can only be reported after the code returns, and a cancelled task runs
to its end (its result is then discarded).

Short tasks waiting together go to a child in one round trip (``run_group``):
one pipe message there and one back for the lot, where each task alone would
cost a round trip and two process wake-ups, most of a trivial task's cost.

A trusted task (``Shipped``) brings its function and arguments as pickles
already checked against the digests its signed message names; they are loaded
where the task runs (the child, in process mode), and its result is pickled
there too, so a value that cannot be pickled fails the task, not the worker.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from yadtq import inputs, registry, values

MODES = ("process", "thread")
PR_SET_PDEATHSIG = 1
LOADED_CODE_LIMIT = 128  # shipped functions kept per process, by digest (then cleared)
_loaded: dict[str, Callable[..., Any]] = {}


@dataclass(frozen=True)
class Attempt:
    """What running a task once produced."""

    ok: bool
    value: Any = None
    error_type: str = ""
    error: str = ""
    traceback: str = ""
    retryable: bool = False
    stopped: bool = False
    pickled: bool = False  # ``value`` is the result as :func:`yadtq.values.dumps` bytes
    value_type: str = ""  # with ``pickled``: the result's type, for display
    seconds: float | None = None  # how long the call ran where it ran; None: stopped


@dataclass(frozen=True)
class Shipped:
    """A trusted task's pickles, checked against its signed message's digests."""

    code_sha256: str | None  # the function by value; None: the registered task
    code: bytes | None
    arguments: bytes | None  # (args, kwargs); None: the message's JSON ones


def _function(task: str, shipped: Shipped | None) -> Callable[..., Any]:
    """The function to call: the registered one, or the shipped one (loaded once a process)."""
    if shipped is None or shipped.code_sha256 is None:
        return registry.lookup(task)
    function = _loaded.get(shipped.code_sha256)
    if function is None:
        assert shipped.code is not None
        if len(_loaded) >= LOADED_CODE_LIMIT:
            _loaded.clear()
        function = _loaded[shipped.code_sha256] = pickle.loads(shipped.code)  # cloudpickle
    return function


def _is_retryable(exc: BaseException, names: Sequence[str], classes: Sequence[type]) -> bool:
    if not names and not classes:
        return True
    if classes and isinstance(exc, tuple(classes)):
        return True
    return any(cls.__name__ in names or cls.__qualname__ in names for cls in type(exc).__mro__)


@dataclass(frozen=True)
class Call:
    """One task to run, as a runner needs it."""

    task: str
    args: Sequence[Any]
    kwargs: dict[str, Any]
    retry_on: Sequence[str]
    shipped: Shipped | None = None
    parents: Mapping[tuple[str, str], Any] | None = None  # the values of its markers


def run_call(call: Call) -> Attempt:
    """Call the task's function and capture its outcome (never raises); its parents'
    values take the place of their markers in the arguments (``yadtq.inputs``)."""
    started = time.perf_counter()  # each task's own time, also when it runs in a group
    task, args, kwargs, shipped, parents = (call.task, call.args, call.kwargs, call.shipped,
                                            call.parents)
    try:
        function = _function(task, shipped)
        if shipped is not None and shipped.arguments is not None:
            args, kwargs = values.loads(shipped.arguments)
        if parents:
            loaded = {key: inputs.load(value) for key, value in parents.items()}
            args = [inputs.substitute(value, loaded) for value in args]
            kwargs = {name: inputs.substitute(value, loaded) for name, value in kwargs.items()}
        value = function(*args, **kwargs)
        if shipped is not None:
            return Attempt(ok=True, value=values.dumps(value), pickled=True,
                           value_type=values.type_name(value),
                           seconds=time.perf_counter() - started)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an outcome
        seconds = time.perf_counter() - started  # not counting the traceback's formatting
        return Attempt(
            ok=False,
            error_type=type(exc).__name__,
            error=str(exc),
            traceback="".join(traceback.format_exception(exc)),
            retryable=_is_retryable(exc, call.retry_on, registry.options(task).retry_on),
            seconds=seconds,
        )
    return Attempt(ok=True, value=value, seconds=time.perf_counter() - started)


class ThreadRunner:
    """Runs tasks in the calling thread; cannot stop them."""

    def run(self, call: Call, timeout: float | None) -> Attempt:
        started = time.monotonic()
        attempt = run_call(call)
        if timeout is not None and time.monotonic() - started > timeout:
            return _timed_out(call.task, timeout, stopped=False)
        return attempt

    def run_group(self, calls: Sequence[Call]) -> list[Attempt] | None:
        """Run untimed tasks one after another; never None (nothing stops them)."""
        return [run_call(c) for c in calls]

    def stop(self) -> bool:
        """Threads cannot be stopped; returns False."""
        return False

    def close(self) -> None:
        """Nothing to release."""


def cancelled() -> Attempt:
    """The attempt of a task stopped because it was cancelled."""
    return Attempt(ok=False, error_type="TaskCancelled", error="stopped on request",
                   stopped=True)


def _timed_out(task: str, timeout: float, stopped: bool) -> Attempt:
    how = "and was stopped" if stopped else "(thread mode: it ran to its end)"
    return Attempt(ok=False, error_type="TaskTimeout",
                   error=f"task {task!r} ran past its {timeout:g} s time limit {how}",
                   retryable=False, stopped=stopped)


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (no orphaned task code)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the closed pipe still ends the child after its current task


def _child_main(conn: Connection, task_modules: Sequence[str]) -> None:
    """Serve groups of calls sent over ``conn``, each answered by their attempts in one
    message, until it closes (runs in the child).

    Its parent is the fork server, which exits when the worker dies; the
    death signal then stops any task still running here.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent()
    for module in task_modules:
        __import__(module)
    while True:
        try:
            calls = conn.recv()
            conn.send([run_call(c) for c in calls])
        except (EOFError, OSError):
            return


class ProcessRunner:
    """Runs tasks in one child process, killed and replaced to stop a task."""

    def __init__(self, task_modules: Sequence[str], context: Any) -> None:
        self._task_modules = tuple(task_modules)
        self._context = context
        self._lock = threading.Lock()
        self._stop_requested = False
        self._busy = False
        self._process: Any = None
        self._conn: Connection | None = None
        self._spawn()

    @property
    def pid(self) -> int | None:
        """The child's pid."""
        return self._process.pid if self._process is not None else None

    def _spawn(self) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_child_main, args=(child, self._task_modules),
                                        daemon=True, name="yadtq-task")
        process.start()
        child.close()
        self._process, self._conn = process, parent

    def run(self, call: Call, timeout: float | None) -> Attempt:
        attempts, stopped, code = self._round_trip([call], timeout)
        if attempts is not None:
            return attempts[0]
        if stopped:
            return cancelled()
        if code is None:
            return _timed_out(call.task, timeout or 0, stopped=True)
        return Attempt(ok=False, error_type="WorkerProcessDied",
                       error=f"the process running task {call.task!r} exited with code {code}",
                       retryable=True)

    def run_group(self, calls: Sequence[Call]) -> list[Attempt] | None:
        """Run untimed tasks in one round trip to the child; their attempts in order.

        None: they did not all finish (one was stopped on request, or one ended
        the child); which ones ran is unknown, so the caller runs each again alone.
        """
        return self._round_trip(calls, None)[0]

    def _round_trip(self, calls: Sequence[Call], timeout: float | None
                    ) -> tuple[list[Attempt] | None, bool, int | None]:
        """Send ``calls`` to the child and wait for their attempts, up to ``timeout``.

        Returns (attempts, stopped on request, the child's exit code); without
        attempts the child is replaced, and an exit code of None means it timed out.
        """
        with self._lock:
            self._stop_requested = False
            self._busy = True
        conn = self._conn
        assert conn is not None
        timed_out = False
        try:
            conn.send(list(calls))
            if timeout is None or conn.poll(timeout):  # (a poll builds a selector each time)
                return conn.recv(), False, None
            timed_out = True
        except (EOFError, OSError):
            pass
        finally:
            with self._lock:
                self._busy = False
                stopped = self._stop_requested
        # Timed out, stopped on request, or the child died: replace it.
        code = self._kill()
        self._spawn()
        return None, stopped, None if timed_out else (code if code is not None else -1)

    def stop(self) -> bool:
        """Kill the child if it is running a task; that task ends as stopped."""
        with self._lock:
            if not self._busy:
                return False
            self._stop_requested = True
            process = self._process
        if process is not None and process.is_alive():
            process.kill()
        return True

    def _kill(self) -> int | None:
        process = self._process
        if process is None:
            return None
        if process.is_alive():
            process.kill()
        process.join(5)
        if self._conn is not None:
            self._conn.close()
        return process.exitcode

    def close(self) -> None:
        """Stop the child."""
        self._kill()
        self._process = None


def make_runners(mode: str, count: int, task_modules: Sequence[str]) -> list[Any]:
    """``count`` runners for the given execution mode."""
    if mode == "thread":
        return [ThreadRunner() for _ in range(count)]
    if mode != "process":
        raise ValueError(f"execution mode must be one of {', '.join(MODES)}, got {mode!r}")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, *task_modules])
    return [ProcessRunner(task_modules, context) for _ in range(count)]
