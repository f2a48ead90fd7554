"""Worker processes on a local stack (top layer, in ``local``): :class:`LocalCluster`.

The cluster starts ``python -m worker_node`` processes against a :class:`LocalStack`
it owns (or one it is given, or servers already running), restarts exited ones
with backoff, and records them with the stack's :class:`Supervisor` (its own, on
servers it does not own), whose watchdog stops them if the owner dies. With
``record=True`` the record is also the machine's default stack, through which
``yadtq.connect()`` in other processes finds it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from yadtq.client import Client
from yadtq.config import (
    Config,
    local_stack_record_path,
    read_local_stack_record,
    resolve_config,
)
from yadtq.errors import ConfigurationError
from yadtq.local.processes import ChildProcess, spawn, stop_all
from yadtq.local.stack import LocalStack
from yadtq.local.supervision import Supervisor

# replace_exited_workers: seconds before a restart, doubling per restart of one name,
# and how long a worker must have run for its next restart to come quickly again.
RESTART_BACKOFF_MIN, RESTART_BACKOFF_MAX, RESTART_STABLE = 1.0, 30.0, 60.0


class LocalCluster:
    """A :class:`LocalStack` plus ``workers`` worker processes serving one queue.

    ``broker``, ``kafka_nodes`` and ``redis_replicas`` choose the stack it starts (see
    :class:`LocalStack`).
    ``settings`` are further :class:`~yadtq.config.Config` fields (``result_ttl``,
    ``secret``, ...): :attr:`config` and every worker get all of them.
    With ``trust_code`` (the default) the workers also run functions shipped by
    value from this cluster's clients: unless ``settings`` names a ``secret``, a
    random one is made for the cluster, so only clients given :attr:`config`
    (or, with ``record=True``, the owner-only record) can sign code for them.
    Pass ``stack=`` to run workers against a stack someone else owns (it is then
    left running on exit). Every cluster is listed by ``yadtq local status`` and
    stopped by ``yadtq local down`` (see :mod:`yadtq.local.supervision`); with
    ``record=True`` it is also the machine's default stack, recorded at
    :func:`yadtq.config.local_stack_record_path`, where ``yadtq.connect()`` in
    other processes finds it. Worker output goes to ``worker-<name>.log`` in the
    stack's data dir. :meth:`wait_ready` waits until the workers can take tasks.

    Example::

        with LocalCluster(workers=3) as cluster:
            q = yadtq.connect(bootstrap=cluster.config.bootstrap,
                              redis_url=cluster.config.redis_url)
    """

    def __init__(
        self,
        workers: int = 3,
        *,
        queue: str = "default",
        concurrency: int = 4,
        task_modules: Sequence[str] = ("worker_node.tasks",),
        key_prefix: str = "yadtq",
        heartbeat_interval: float = 2.0,
        lease_seconds: float | None = None,
        partitions: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        broker: str | None = None,
        kafka_nodes: int = 1,
        redis_replicas: int = 0,
        record: bool = False,
        log_level: str = "INFO",
        stack: LocalStack | None = None,
        stop_timeout: float = 15.0,
        worker_args: Sequence[str] = (),
        worker_env: dict[str, str] | None = None,
        servers: Config | str | None = None,
        settings: dict[str, Any] | None = None,
        trust_code: bool = True,
    ) -> None:
        if workers < 0:
            raise ConfigurationError(f"workers must be 0 or more, got {workers}")
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
        if not task_modules:
            raise ConfigurationError("task_modules is empty; name at least one module of tasks")
        # Validated now, so a bad setting fails before any process starts.
        named = {"queue": queue, "key_prefix": key_prefix,
                 "heartbeat_interval": heartbeat_interval, "lease_seconds": lease_seconds,
                 "partitions": partitions}
        settings = dict(settings or {})
        if trust_code:
            if "secret" not in settings:
                settings["secret"] = secrets.token_hex(32)
                # The secret guards shipped code; on this loopback stack any local client
                # may still call registered tasks with JSON arguments (kcat, say).
                settings.setdefault("require_signed", False)
            settings["trust_code"] = True
        self._settings = Config(bootstrap="", redis_url="", source="local stack").with_overrides(
            **{**named, **settings})
        self.initial_workers = workers
        self.concurrency = concurrency
        self.task_modules = tuple(task_modules)
        self.log_level = log_level
        self.worker_args = tuple(worker_args)
        self.worker_env = dict(worker_env or {})
        self.record = record
        self.stop_timeout = stop_timeout
        self._data_dir = data_dir
        self._broker = broker
        self._kafka_nodes = kafka_nodes
        self._redis_replicas = redis_replicas
        self._servers = servers
        self._log_dir: Path | None = None
        self._owned_log_dir: str | None = None
        self._stack = stack
        self._owns_stack = stack is None
        self._config: Config | None = None
        self._workers: list[ChildProcess] = []  # shared with the exit-time finalizer
        self._replaced: set[int] = set()  # pids of exited workers started again
        self._exit_noticed: dict[int, float] = {}
        self._restart_delay: dict[str, float] = {}
        self._finalizer: weakref.finalize | None = None
        self._supervisor: Supervisor | None = None

    @property
    def stack(self) -> LocalStack:
        """The broker and Redis the workers use."""
        if self._stack is None:
            raise RuntimeError("the local cluster is not started; call start() or use `with`")
        return self._stack

    @property
    def config(self) -> Config:
        """Settings for clients of this cluster: its addresses, queue and key prefix."""
        if self._config is None:
            raise RuntimeError("the local cluster is not started; call start() or use `with`")
        return self._config

    @property
    def worker_processes(self) -> list[ChildProcess]:
        """Every worker started so far, in start order, including killed ones."""
        return list(self._workers)

    def start(self) -> LocalCluster:
        """Start the stack (unless one was given) and the workers.

        Raises:
            ConfigurationError: ``record=True`` and another local stack is recorded
                as running, or a binary is missing.
            BrokerUnavailable, BackendUnavailable: a server failed to start.
        """
        if self._finalizer is not None and self._finalizer.alive:
            raise RuntimeError("this LocalCluster is already started")
        if self.record:
            self._refuse_a_second_recorded_stack()
        self._finalizer = weakref.finalize(self, stop_all, self._workers, self.stop_timeout)
        try:
            external = self._external_servers()
            if external is not None:
                bootstrap, redis_url = external.bootstrap, external.redis_url
                self._owned_log_dir = tempfile.mkdtemp(prefix="yadtq-workers-")
                self._log_dir = Path(self._owned_log_dir)
                self._supervisor = Supervisor(broker="external", data_dir=self._owned_log_dir,
                                              owns_servers=False)
                self._supervisor.remove_on_exit(self._log_dir)
            else:
                if self._stack is None:
                    self._stack = LocalStack(self._data_dir, broker=self._broker,
                                             nodes=self._kafka_nodes,
                                             redis_replicas=self._redis_replicas).start()
                bootstrap, redis_url = self._stack.bootstrap, self._stack.redis_url
                self._log_dir = self._stack.data_dir
                self._supervisor = self._stack.supervisor if self._owns_stack else Supervisor(
                    broker=self._stack.broker, data_dir=str(self._log_dir), owns_servers=False)
            self._config = self._settings.with_overrides(bootstrap=bootstrap,
                                                         redis_url=redis_url)
            self._supervisor.update(
                bootstrap=bootstrap, redis_url=redis_url, queue=self._config.queue,
                key_prefix=self._config.key_prefix, secret=self._config.secret,
                environment=client_environment(self._config))
            for _ in range(self.initial_workers):
                self.start_worker()
            if self.record:
                self._supervisor.point_at(local_stack_record_path())
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 60.0, client: Client | None = None) -> None:
        """Wait until the running workers hold every partition of the queue between them.

        Until then the first task waits for the consumer group to form (about 5 s on a
        fresh stack), and the first worker to join takes every task. ``yadtq local up``
        says "up", and ``connect("local")`` returns, only after this.

        Args:
            timeout: seconds to wait.
            client: a client of this cluster to ask (default: one made for the wait).

        Raises:
            ConfigurationError: every worker exited; the message quotes a log.
            TimeoutError: the workers did not settle within ``timeout`` seconds.
        """
        if not any(worker.alive for worker in self._workers):
            return
        asker = client if client is not None else Client(self.config)
        deadline = time.monotonic() + timeout
        try:
            while True:
                count = sum(worker.alive for worker in self._workers)  # one may have died
                if count == 0:
                    last = self._workers[-1]
                    raise ConfigurationError(
                        f"every worker exited before taking tasks; {last.name} exited with "
                        f"code {last.popen.returncode}, its log ({last.log_path}) ends with:\n"
                        f"{last.log_tail()}")
                try:
                    asker.wait_for_workers(count, timeout=min(1.0, timeout))
                    return
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise
        finally:
            if client is None:
                asker.close()

    def start_worker(self, name: str | None = None) -> ChildProcess:
        """Start one more worker process (named ``local-worker-<n>`` unless given)."""
        config = self.config
        if name is None:
            name = self._next_worker_name()
        elif any(w.name == name and w.alive for w in self._workers):
            raise ConfigurationError(f"a worker named {name!r} is already running")
        command = [
            sys.executable, "-m", "worker_node",
            "--bootstrap", config.bootstrap,
            "--queue", config.queue, "--key-prefix", config.key_prefix,
            "--concurrency", str(self.concurrency), "--name", name,
            "--heartbeat-interval", str(config.heartbeat_interval),
            "--lease-seconds", str(config.lease_seconds),
            "--partitions", str(config.partitions),
            "--log-level", self.log_level,
        ]
        for module in self.task_modules:
            command += ["--tasks", module]
        command += self.worker_args
        # Every setting the cluster's clients use goes to the workers in the environment
        # (where `ps` does not show the Redis password or the secret), so the two cannot
        # drift. PYTHONUNBUFFERED: logs appear as they happen.
        env = {**os.environ, **config.to_environment(), "PYTHONUNBUFFERED": "1",
               **self.worker_env}
        assert self._log_dir is not None
        log_path = self._log_dir / f"worker-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.log"
        worker = spawn(name, command, log_path, group=self.supervisor.group, env=env)
        self._workers.append(worker)
        self.supervisor.add_child(worker)
        self.supervisor.update(workers=sorted({w.name for w in self._workers if w.alive}))
        return worker

    def replace_exited_workers(self) -> list[ChildProcess]:
        """Start again every worker that exited on its own, with backoff; returns the new ones.

        Like a nanny: the first restart comes ``RESTART_BACKOFF_MIN`` seconds after the
        exit is noticed, each further one of the same name twice as late (up to
        ``RESTART_BACKOFF_MAX``), and a worker that ran ``RESTART_STABLE`` seconds
        starts the count again. Call it periodically (``yadtq local up`` does, every second).
        """
        now = time.monotonic()
        started = []
        for worker in list(self._workers):
            if worker.alive or worker.pid in self._replaced:
                continue
            noticed = self._exit_noticed.setdefault(worker.pid, now)
            delay = self._restart_delay.get(worker.name, RESTART_BACKOFF_MIN)
            if noticed - worker.started_at >= RESTART_STABLE:
                delay = RESTART_BACKOFF_MIN
            if now < noticed + delay:
                continue
            self._replaced.add(worker.pid)
            self._restart_delay[worker.name] = min(2 * delay, RESTART_BACKOFF_MAX)
            started.append(self.start_worker(worker.name))
        return started

    def kill_worker(self, which: int | str, sig: int = signal.SIGKILL) -> ChildProcess:
        """Send ``sig`` to a worker chosen by index or name; SIGKILL also waits for it to die.

        The worker stays in :attr:`worker_processes` so indexes do not shift.
        """
        worker = self._find_worker(which)
        with contextlib.suppress(ProcessLookupError):
            worker.popen.send_signal(sig)
        if sig == signal.SIGKILL:
            worker.popen.wait(self.stop_timeout)
        return worker

    def stop(self) -> None:
        """Stop the workers (SIGTERM, SIGKILL after ``stop_timeout``), then an owned stack."""
        if self._supervisor is not None:
            self._supervisor.drop_pointer()  # first, so no new client connects to it
        if self._finalizer is not None:
            self._finalizer()  # stops the workers once
        self._workers.clear()
        if self._owned_log_dir is not None:
            shutil.rmtree(self._owned_log_dir, ignore_errors=True)
            self._owned_log_dir = None
        if self._owns_stack and self._stack is not None:
            self._stack.stop()  # closes the supervisor the cluster shares with it
            self._stack = None
        elif self._supervisor is not None:
            self._supervisor.close()
        self._supervisor = None
        self._config = None

    @property
    def supervisor(self) -> Supervisor:
        """The record and watchdog of this cluster's processes (its stack's, if it owns one)."""
        if self._supervisor is None:
            raise RuntimeError("the local cluster is not started; call start() or use `with`")
        return self._supervisor

    def _external_servers(self) -> Config | None:
        """The servers to use instead of an embedded stack, if any were asked for."""
        if isinstance(self._servers, Config):
            return self._servers
        if self._servers == "auto" and self._stack is None:
            try:
                return resolve_config()
            except ConfigurationError:
                return None
        if self._servers not in (None, "auto"):
            raise ConfigurationError(
                f"servers must be a Config, 'auto' or None, got {self._servers!r}"
            )
        return None

    def _next_worker_name(self) -> str:
        taken = {w.name for w in self._workers}
        number = len(self._workers) + 1
        while f"local-worker-{number}" in taken:
            number += 1
        return f"local-worker-{number}"

    def _find_worker(self, which: int | str) -> ChildProcess:
        if isinstance(which, int):
            try:
                return self._workers[which]
            except IndexError:
                raise LookupError(
                    f"no worker at index {which}; there are {len(self._workers)}"
                ) from None
        named = [w for w in self._workers if w.name == which]
        if named:
            return next((w for w in reversed(named) if w.alive), named[-1])
        names = ", ".join(w.name for w in self._workers) or "none"
        raise LookupError(f"no worker named {which!r}; workers: {names}")

    def _refuse_a_second_recorded_stack(self) -> None:
        existing = read_local_stack_record()
        if existing is not None:
            raise ConfigurationError(
                f"a local stack is already running (pid {existing.get('pid')}, Kafka at "
                f"{existing.get('bootstrap')}); use it, stop it, or delete "
                f"{local_stack_record_path()} if that process is not yadtq"
            )

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        alive = sum(w.alive for w in self._workers)
        state = f"queue={self.config.queue!r}" if self._config else "stopped"
        trust = ", trusting code signed with its secret" if self._config and \
            self._settings.trust_code else ""
        return f"<LocalCluster {state} workers={alive} alive{trust}>"


def client_environment(config: Config) -> dict[str, str]:
    """The ``YADTQ_*`` variables a client of ``config``'s workers needs: its addresses and
    every setting not at its default (the secret too), but not the workers' own
    ``YADTQ_TRUST_CODE``."""
    defaults = Config(bootstrap="", redis_url="").to_environment()
    return {name: value for name, value in config.to_environment().items()
            if value and value != defaults.get(name) and name != "YADTQ_TRUST_CODE"}
