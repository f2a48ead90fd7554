"""A replicated Redis for the local stack (top layer, in ``local``): :class:`ReplicatedRedis`.

A primary, ``replicas`` replicas (each with its own data dir) and three sentinels that
watch them, all on loopback ports, so the failover code paths run on one machine
(docs/redis-ha.md). The stack starts each process through the launcher it passes in,
so they join its process group and record and stop with it. The set counts as up only
when every replica is online and in sync and every sentinel knows the primary, the
replicas and the other sentinels: before that a failover could pick a replica that
misses writes, or find no quorum.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from yadtq.local.processes import LOOPBACK, ChildProcess
from yadtq.local.servers import redis_answers, redis_command

MASTER_NAME = "yadtq"
SENTINELS = 3
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
_PROBE_KEY = "yadtq:local:failover-probe"

# The stack's launcher: (name, command for a port, "answers on a port", port or None for
# a free one) -> the started child and its port, once it answers.
Launch = Callable[[str, Callable[[int], list[str]], Callable[[int], bool], int | None],
                  tuple[ChildProcess, int]]


def sentinel_config(port: int, primary_port: int, password: str | None) -> str:
    """A sentinel's config file (it rewrites the file as it learns the set)."""
    lines = [
        f"port {port}",
        f"bind {LOOPBACK}",
        "daemonize no",
        'logfile ""',
        f"sentinel monitor {MASTER_NAME} {LOOPBACK} {primary_port} {QUORUM}",
        f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
        f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
        f"sentinel parallel-syncs {MASTER_NAME} 1",
        *([f"sentinel auth-pass {MASTER_NAME} {password}"] if password else []),
    ]
    return "\n".join(lines) + "\n"


def _client(port: int, password: str | None = None) -> redis.Redis:
    """A one-try client for probes; the caller's loop retries."""
    return redis.Redis(host=LOOPBACK, port=port, password=password, socket_connect_timeout=0.5,
                       socket_timeout=1, retry=Retry(NoBackoff(), 0), decode_responses=True)


class ReplicatedRedis:
    """Redis nodes ``redis-1`` (the first primary) to ``redis-<replicas + 1>`` and sentinels
    ``sentinel-1`` to ``sentinel-3``.

    Nodes keep their port and data dir across a kill and :meth:`start_node`.
    """

    def __init__(self, binary: str, data_dir: Path, replicas: int, password: str | None,
                 launch: Launch, forget: Callable[[ChildProcess], None],
                 startup_timeout: float, stop_timeout: float) -> None:
        self._binary, self._data_dir, self._password = binary, data_dir, password
        self._launch, self._forget = launch, forget
        self._startup_timeout, self._stop_timeout = startup_timeout, stop_timeout
        self._node_names = [f"redis-{n}" for n in range(1, replicas + 2)]
        self.ports: dict[str, int] = {}  # every node's and sentinel's port, running or not
        self.running: dict[str, ChildProcess] = {}

    @property
    def url(self) -> str:
        """``redis+sentinel://[:password@]127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/yadtq/0``."""
        auth = f":{quote(self._password, safe='')}@" if self._password else ""
        hosts = ",".join(f"{LOOPBACK}:{self.ports[name]}" for name in self._sentinel_names)
        return f"redis+sentinel://{auth}{hosts}/{MASTER_NAME}/0"

    @property
    def _sentinel_names(self) -> list[str]:
        return [f"sentinel-{n}" for n in range(1, SENTINELS + 1)]

    def start(self) -> None:
        """Start the primary, its replicas and the sentinels, and wait until all is settled.

        Raises:
            TimeoutError: the set did not settle within the startup timeout.
        """
        primary, *replicas = self._node_names
        self._start_node(primary, port=None, replica_of=None)
        for name in replicas:
            self._start_node(name, port=None, replica_of=self.ports[primary])
        for name in self._sentinel_names:
            self._start_sentinel(name)
        self._wait(self._settled, "every replica online and every sentinel knowing the set")

    def primary(self) -> str:
        """The node the sentinels name as the primary (the first that answers).

        Raises:
            LookupError: no sentinel answers, or one names an unknown address.
        """
        for name in self._running_sentinels():
            named = self._named_by(name)
            if named is not None:
                return named
        raise LookupError("no running sentinel names a primary")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to node or sentinel ``name`` and wait until it exits."""
        child = self._child(name)
        with contextlib.suppress(ProcessLookupError):
            child.popen.send_signal(sig)
            if sig != signal.SIGKILL:
                child.popen.send_signal(signal.SIGCONT)  # a stopped process acts on it now
        try:
            child.popen.wait(self._stop_timeout)
        except subprocess.TimeoutExpired:
            child.popen.kill()
            child.popen.wait()
        del self.running[name]
        self._forget(child)

    def signal(self, name: str, sig: int) -> None:
        """Send ``sig`` (SIGSTOP, SIGCONT, ...) to node or sentinel ``name``; no waiting."""
        self._child(name).popen.send_signal(sig)

    def start_node(self, name: str, as_replica: bool = True) -> None:
        """Start a killed node again on its port and data dir and wait until it is a replica,
        online and in sync, and the sentinels know it.

        ``as_replica``: start it as a replica of the current primary (back in about a
        second); else with its first options, as a supervisor restarting it would, so an
        old primary comes back as a primary until the sentinels convert it (about 10 s).

        Raises:
            LookupError: ``name`` is not a stopped node of this set.
            TimeoutError: it did not rejoin within the startup timeout.
        """
        if name not in self._node_names or name in self.running:
            raise LookupError(f"{name!r} is not a stopped Redis node; nodes: "
                              f"{', '.join(self._node_names)}, running: "
                              f"{', '.join(n for n in self._node_names if n in self.running)}")
        first, primary = self._node_names[0], self.primary()
        if primary == name:  # not failed over (yet): it is still the primary
            replica_of: int | None = None
        elif as_replica:
            replica_of = self.ports[primary]
        else:
            replica_of = None if name == first else self.ports[first]
        self._start_node(name, port=self.ports[name], replica_of=replica_of)
        self._wait(self._settled, f"{name} back in the set")

    def wait_for_failover(self, old_primary: str, timeout: float) -> str:
        """Wait until every running sentinel names a primary other than ``old_primary`` and
        it accepts writes; returns its name.

        Raises:
            TimeoutError: no new primary within ``timeout`` seconds.
        """
        return str(self._wait(functools.partial(self._new_primary, old_primary),
                              f"a primary other than {old_primary} that accepts writes", timeout))

    def _start_node(self, name: str, port: int | None, replica_of: int | None) -> None:
        folder = self._data_dir / name
        folder.mkdir(exist_ok=True)
        binary, password = self._binary, self._password
        follow = ["--replicaof", LOOPBACK, str(replica_of)] if replica_of is not None else []
        auth = ["--masterauth", password] if password else []
        # A primary waits 5 s by default for more replicas before a full sync; here the
        # replicas come one at a time, and a restarted node should catch up at once.
        sync = ["--repl-diskless-sync-delay", "0"]
        child, port = self._launch(
            name, lambda p: [*redis_command(binary, p, folder, password), *follow, *auth, *sync],
            functools.partial(redis_answers, password=password), port)
        self.running[name], self.ports[name] = child, port

    def _start_sentinel(self, name: str) -> None:
        conf = self._data_dir / f"{name}.conf"
        primary_port = self.ports[self._node_names[0]]

        def command(port: int) -> list[str]:
            conf.write_text(sentinel_config(port, primary_port, self._password))
            return [self._binary, str(conf), "--sentinel"]

        child, port = self._launch(name, command, redis_answers, None)
        self.running[name], self.ports[name] = child, port

    def _child(self, name: str) -> ChildProcess:
        child = self.running.get(name)
        if child is None:
            raise LookupError(f"no running Redis node or sentinel named {name!r}; running: "
                              f"{', '.join(self.running) or 'none'}")
        return child

    def _running_sentinels(self) -> list[str]:
        return [name for name in self._sentinel_names if name in self.running]

    def _named_by(self, sentinel: str) -> str | None:
        """The node ``sentinel`` names as the primary, or None if it does not answer."""
        client = _client(self.ports[sentinel])
        try:
            address = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        except redis.RedisError:
            return None
        finally:
            client.close()
        if not address:
            return None
        by_port = {port: name for name, port in self.ports.items() if name in self._node_names}
        if int(address[1]) not in by_port:
            raise LookupError(f"{sentinel} names {address[0]}:{address[1]}, not a node of "
                              "this stack")
        return by_port[int(address[1])]

    def _settled(self) -> bool:
        """True when the sentinels agree on a running primary, every other running node is
        its replica, online, and every sentinel knows those replicas and the other sentinels."""
        sentinels = self._running_sentinels()
        named = {self._named_by(name) for name in sentinels}
        if len(named) != 1 or None in named:
            return False
        primary = named.pop()
        assert primary is not None
        others = [n for n in self._node_names if n in self.running and n != primary]
        replicas = {self.ports[n] for n in others}
        if primary not in self.running or _online_replicas(self.ports[primary],
                                                           self._password) != replicas:
            return False
        if not all(_synced_from(self.ports[n], self.ports[primary], self._password)
                   for n in others):
            return False
        return all(_knows_the_set(self.ports[name], replicas, len(sentinels) - 1)
                   for name in sentinels)

    def _new_primary(self, old_primary: str) -> str | None:
        """The new primary's name once every running sentinel names it and it takes a write."""
        named = {self._named_by(name) for name in self._running_sentinels()}
        if len(named) != 1:
            return None
        primary = named.pop()
        if primary in (None, old_primary) or primary not in self.running:
            return None
        assert primary is not None
        client = _client(self.ports[primary], self._password)
        try:
            client.set(_PROBE_KEY, "1", px=1000)
        except redis.RedisError:
            return None
        finally:
            client.close()
        return primary

    def _wait(self, probe: Callable[[], object], what: str, timeout: float | None = None
              ) -> object:
        """Poll ``probe`` until it gives a true value, which is returned."""
        timeout = self._startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = probe()
            except (redis.RedisError, LookupError):
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout:g} s; {self._describe()}")
            time.sleep(0.1)  # polling servers that give no change notice

    def _describe(self) -> str:
        """What each running node says of its role, for a timeout's message."""
        roles = []
        for name in self._node_names:
            if name not in self.running:
                roles.append(f"{name} stopped")
                continue
            client = _client(self.ports[name], self._password)
            try:
                info = client.info("replication")
                roles.append(f"{name} {info.get('role')} ({info.get('connected_slaves', 0)} "
                             f"replicas, link {info.get('master_link_status', '-')})")
            except redis.RedisError as exc:
                roles.append(f"{name} does not answer ({exc})")
            finally:
                client.close()
        return "; ".join(roles)


def _online_replicas(port: int, password: str | None) -> set[int]:
    """Ports of the replicas the primary on ``port`` reports online (in sync)."""
    client = _client(port, password)
    try:
        info = client.info("replication")
    finally:
        client.close()
    if info.get("role") != "master":
        return set()
    slaves = [value for key, value in info.items()
              if key.startswith("slave") and isinstance(value, dict)]
    return {int(s["port"]) for s in slaves if s.get("state") == "online"}


def _synced_from(port: int, primary_port: int, password: str | None) -> bool:
    """True when the node on ``port`` is a replica of ``primary_port`` with its link up and
    no sync in progress: a primary reports a replica online while it may still be loading
    the new data (and serving its old data meanwhile)."""
    client = _client(port, password)
    try:
        info = client.info("replication")
    finally:
        client.close()
    return (info.get("role") == "slave" and info.get("master_port") == primary_port
            and info.get("master_link_status") == "up"
            and not info.get("master_sync_in_progress"))


def _knows_the_set(port: int, replicas: set[int], other_sentinels: int) -> bool:
    """True when the sentinel on ``port`` sees the master up, ``replicas`` up and
    ``other_sentinels`` other sentinels."""
    client = _client(port)
    try:
        master = client.sentinel_master(MASTER_NAME)
        known = client.sentinel_slaves(MASTER_NAME)
    finally:
        client.close()
    up = {int(r["port"]) for r in known if not (r.get("is_sdown") or r.get("is_disconnected"))}
    return (bool(master.get("is_master")) and not master.get("is_sdown")
            and not master.get("is_odown") and master.get("num-other-sentinels") == other_sentinels
            and replicas <= up)
