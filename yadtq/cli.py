"""Command line (top layer): ``yadtq submit|status|result|workers|dashboard|local ...``.

It only parses arguments and calls library functions. Library errors print as
``yadtq: error: <message>`` on stderr with exit status 1 and no traceback (a
failed task's message carries the remote traceback). A reader that goes away
(``yadtq local status | head``) ends the command quietly, as it would ``cat``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from importlib import resources
from types import FrameType
from typing import Any

from yadtq import __version__, cli_dashboard, cli_observe, cli_schedules
from yadtq.config import (
    Config,
    local_stack_record_path,
    local_stacks_dir,
    record_settings,
    redacted_url,
)
from yadtq.errors import YadtqError
from yadtq.local import BROKERS, LocalCluster, registry
from yadtq.store import no_worker_hint
from yadtq.worker_table import LIMIT_COLUMNS, format_rows

READY_TIMEOUT = 120.0  # seconds `local up` gives its workers to take their partitions


def parse_task_arg(text: str) -> Any:
    """A task argument from the command line: JSON if it parses (``3``, ``[1, 2]``), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _positive_seconds(text: str) -> float:
    seconds = float(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    """The ``yadtq`` argument parser; server options work before or after the command."""
    # SUPPRESS keeps a subcommand from overwriting a value given before it.
    servers = argparse.ArgumentParser(add_help=False)
    servers.add_argument(
        "--bootstrap", default=argparse.SUPPRESS, metavar="HOST:PORT",
        help="Kafka bootstrap servers host:port[,...] (default: $YADTQ_BOOTSTRAP, else a "
        "running `yadtq local up` stack)",
    )
    servers.add_argument(
        "--redis", dest="redis_url", default=argparse.SUPPRESS, metavar="URL",
        help="Redis URL, e.g. redis://host:6379/0 (default: $YADTQ_REDIS_URL, else the local "
        "stack)",
    )
    servers.add_argument(
        "--queue", default=argparse.SUPPRESS,
        help="queue name (default: $YADTQ_QUEUE or 'default')",
    )
    parser = argparse.ArgumentParser(
        prog="yadtq", parents=[servers],
        description="Submit and inspect yadtq tasks, or run a local stack to try them on.",
        epilog="Start here: `yadtq local up` in one terminal, then `yadtq submit add 1 2 --wait` "
        "in another.",
    )
    parser.add_argument("--version", action="version", version=f"yadtq {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser(
        "submit", parents=[servers], help="submit a task; print its id, or its result with --wait",
        description="Submit TASK with ARGS (each read as JSON if it parses, else as a string).",
    )
    submit.add_argument("task", metavar="TASK", help="registered task name, e.g. add")
    submit.add_argument("args", metavar="ARGS", nargs="*", type=parse_task_arg,
                        help="task arguments: 2, 1.5, null, '[1, 2]' are JSON; quote a "
                        "string that looks like JSON as '\"2\"'")
    submit.add_argument("--wait", action="store_true", help="wait and print the result as JSON")
    submit.add_argument("--timeout", type=_positive_seconds, metavar="S",
                        help="with --wait, give up after S seconds (default: wait forever)")
    submit.set_defaults(run=_submit)

    status = commands.add_parser("status", parents=[servers],
                                 help="print a task's status, or without ID the queue's counts")
    status.add_argument("task_id", metavar="ID", nargs="?")
    status.set_defaults(run=_status)

    result = commands.add_parser("result", parents=[servers],
                                 help="wait for a task and print its result as JSON")
    result.add_argument("task_id", metavar="ID")
    result.add_argument("--timeout", type=_positive_seconds, metavar="S",
                        help="give up after S seconds (default: wait forever)")
    result.set_defaults(run=_result)

    cancel = commands.add_parser("cancel", parents=[servers],
                                 help="cancel a task that has not finished")
    cancel.add_argument("task_id", metavar="ID")
    cancel.set_defaults(run=_cancel)
    workers = commands.add_parser("workers", parents=[servers],
                                  help="print the workers and their last heartbeats")
    workers.set_defaults(run=_workers)
    cli_schedules.add_parser(commands, servers, _connect)
    cli_observe.add_parser(commands, servers)
    cli_dashboard.add_parser(commands, servers)

    unit = commands.add_parser("worker-unit",
                               help="print the systemd unit that runs a worker on a VM")
    unit.set_defaults(run=_worker_unit)

    local = commands.add_parser("local", help="run a broker, Redis and workers on this machine")
    local_commands = local.add_subparsers(dest="local_command", required=True, metavar="COMMAND")
    up = local_commands.add_parser(
        "up", help="start a local stack and keep it running until Ctrl-C",
        description="Start an embedded Kafka-protocol broker, Redis and worker processes on "
        "loopback ports, record their addresses for other processes, say it is up once the "
        "workers take tasks, and run until Ctrl-C, SIGTERM or SIGHUP.",
    )
    up.add_argument("--workers", type=int, default=3, help="worker processes (default: 3)")
    up.add_argument("--concurrency", type=int, default=4,
                    help="tasks each worker runs at once (default: 4)")
    up.add_argument("--queue", default=argparse.SUPPRESS, help="queue name (default: default)")
    up.add_argument("--tasks", action="append", metavar="MODULE",
                    help="module of tasks the workers serve; repeat for several "
                    "(default: worker_node.tasks)")
    up.add_argument("--broker", choices=BROKERS, default=None,
                    help="tansu: embedded, pip only, topics in memory; apache-kafka: Apache "
                    "Kafka itself (needs Java 17+ and Maven) (default: $YADTQ_LOCAL_BROKER, "
                    "else tansu)")
    up.add_argument("--kafka-nodes", type=int, default=1, metavar="N",
                    help="Apache Kafka nodes in the cluster; 3 replicate every topic 3 times "
                    "(default: 1)")
    up.add_argument("--redis-replicas", type=int, default=0, metavar="N",
                    help="Redis replicas; with 1 or more, Redis is a primary, N replicas and "
                    "three sentinels that fail over to a replica (default: 0, one server)")
    up.add_argument("--trust-code", action=argparse.BooleanOptionalAction, default=True,
                    help="workers also run functions shipped by value, signed with a random "
                    "secret kept in the stack's owner-only record, where connect() finds it "
                    "(default: on)")
    up.set_defaults(run=_local_up)
    local_status = local_commands.add_parser(
        "status", parents=[servers],
        help="list the local stacks that run (whoever started them): servers, workers, logs")
    local_status.set_defaults(run=_local_status)
    env = local_commands.add_parser(
        "env", help="print the shell exports that point clients at a local stack",
        description="Print `export` lines with a local stack's addresses and settings, its "
        "secret included, for `eval \"$(yadtq local env)\"` in another shell.")
    env.add_argument("id", nargs="?", metavar="ID",
                     help="the stack's id, or its start (default: the `local up` stack, else "
                     "the only one)")
    env.set_defaults(run=_local_env)
    down = local_commands.add_parser("down", help="stop a running local stack")
    down.add_argument("id", nargs="?", metavar="ID",
                      help="the stack's id, or its start, as `local status` shows it (default: "
                      "the `local up` stack, else the only one)")
    down.add_argument("--all", action="store_true", help="stop every local stack")
    down.add_argument("--timeout", type=_positive_seconds, default=60.0, metavar="S",
                      help="wait this long for it to stop (default: 60)")
    down.set_defaults(run=_local_down)
    return parser


def _connect(args: argparse.Namespace) -> Any:
    # Imported here so that `yadtq local up` and `--help` do not load the client stack.
    from yadtq.config import resolve_config
    from yadtq.connection import connect

    return connect(resolve_config(
        bootstrap=getattr(args, "bootstrap", None),
        redis_url=getattr(args, "redis_url", None),
        queue=getattr(args, "queue", None),
        audience="cli",
    ))


def _print_result(client: Any, future: Any, timeout: float | None) -> None:
    try:
        value = future.result(timeout=timeout)
    except TimeoutError as exc:
        if isinstance(exc, YadtqError):
            raise
        raise YadtqError(
            f"task {future.id} did not finish within {timeout:g} s"
            f"{no_worker_hint(client.backend)}; it may still be queued or running: check "
            f"`yadtq status {future.id}` or wait with `yadtq result {future.id}`"
        ) from None
    print(json.dumps(value, default=repr))


def _submit(args: argparse.Namespace) -> int:
    client = _connect(args)
    try:
        future = client.submit(args.task, *args.args)
        if args.wait:
            _print_result(client, future, args.timeout)
        else:
            print(future.id)
    finally:
        client.close()
    return 0


def _status(args: argparse.Namespace) -> int:
    client = _connect(args)
    try:
        if args.task_id is None:
            return cli_observe.print_stats(client)
        status = client.status(args.task_id)
    finally:
        client.close()
    print(getattr(status, "value", status))
    return 0


def _result(args: argparse.Namespace) -> int:
    client = _connect(args)
    try:
        _print_result(client, client.get(args.task_id), args.timeout)
    finally:
        client.close()
    return 0


def _cancel(args: argparse.Namespace) -> int:
    client = _connect(args)
    try:
        cancelled = client.cancel(args.task_id)
        status = client.status(args.task_id)
    finally:
        client.close()
    if not cancelled:
        print(f"task {args.task_id} was not cancelled: it is already {status.value}",
              file=sys.stderr)
        return 1
    print(f"cancelled {args.task_id}")
    return 0


def _workers(args: argparse.Namespace) -> int:
    client = _connect(args)
    try:
        rows, limits = client.worker_rows(), client.limit_rows()
    finally:
        client.close()
    if not rows:
        print("no worker has sent a heartbeat on this queue", file=sys.stderr)
    else:
        print(format_rows(rows))
    if limits:  # what waits for which limit
        print("\nlimits\n" + format_rows(limits, LIMIT_COLUMNS))
    return 0


def _worker_unit(args: argparse.Namespace) -> int:
    """Print worker_node's systemd unit, shipped in the wheel (docs/deployment.md)."""
    print(resources.files("worker_node").joinpath("yadtq-worker.service").read_text(), end="")
    return 0


def _local_up(args: argparse.Namespace) -> int:
    # Signals only set a flag, so a stop can never interrupt starting or stopping halfway.
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print(f"\n{signal.Signals(signum).name}: stopping the local stack (running tasks "
                  "get a few seconds to finish)...", file=sys.stderr)
        stop.set()

    # SIGHUP (its terminal closed) stops it as cleanly as SIGTERM does.
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, request_stop) for sig in signals}
    try:
        with LocalCluster(
            args.workers, queue=getattr(args, "queue", None) or "default",
            concurrency=args.concurrency, task_modules=args.tasks or ("worker_node.tasks",),
            broker=args.broker, kafka_nodes=args.kafka_nodes,
            redis_replicas=args.redis_replicas, record=True,
            trust_code=args.trust_code,
        ) as cluster:
            try:
                cluster.wait_ready(READY_TIMEOUT)
            except TimeoutError as exc:
                raise YadtqError(f"the workers did not take their partitions: {exc}") from None
            _print_banner(cluster)
            return _watch(cluster, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _local_status(args: argparse.Namespace) -> int:
    stacks = registry.running_stacks()
    if not stacks:
        print(f"no local stack is running (no live record in {local_stacks_dir()}); start one "
              "with `yadtq local up`", file=sys.stderr)
        return 1
    return max(_print_stack(record, getattr(args, "queue", None)) for record in stacks)


def _print_stack(record: dict[str, Any], queue: str | None) -> int:
    """Print one stack and the workers of its queue; 1 if its Redis did not answer."""
    uptime = time.time() - float(record["started_at"])
    state = ("orphaned (its owner is gone; its watchdog is stopping it, or `yadtq local down` "
             "will)" if record["orphaned"] else "running")
    queue = queue or record.get("queue")
    default = " (the default: yadtq commands and connect() use it)" \
        if registry.is_default(record) else ""
    print(f"local stack {record['id']}: {state}, owner pid {record['pid']} "
          f"({record.get('owner')}), up {uptime:.0f} s"
          + (f", queue {queue!r}" if queue else "") + default)
    if not record.get("bootstrap"):
        print("  starting: its servers do not answer yet")
        return 0
    print(f"  Kafka   {record['bootstrap']} ({record.get('broker', '?')})\n"
          f"  Redis   {redacted_url(record['redis_url'])}\n"
          f"  logs    {record.get('data_dir')}")
    if queue is None or record["orphaned"]:
        return 0
    # Imported here so that `yadtq local up` and `--help` do not load the client stack.
    from yadtq.connection import connect

    settings = {**record_settings(record), "bootstrap": record["bootstrap"],
                "redis_url": record["redis_url"], "queue": queue}
    try:
        client = connect(Config(**settings, source=f"local stack {record['id']}"))
        try:
            rows = client.worker_rows()
        finally:
            client.close()
    except YadtqError as exc:
        print(f"  workers unknown: {exc}")
        return 1
    if not rows:
        print("  workers none has sent a heartbeat")
    else:
        alive = sum(1 for row in rows if row["status"] == "alive")
        print(f"  workers {alive} alive of {len(rows)}:")
        print(format_rows(rows))
    return 0


def _local_env(args: argparse.Namespace) -> int:
    """Print exports for `eval`: the stack's settings, and `unset` for the others."""
    record = registry.choose(registry.running_stacks(), args.id)
    if not record.get("bootstrap"):
        raise YadtqError(f"the local stack {record['id']} is still starting; try again")
    environment = record.get("environment") or {
        "YADTQ_BOOTSTRAP": record["bootstrap"], "YADTQ_REDIS_URL": record["redis_url"]}
    for name, value in sorted(environment.items()):
        print(f"export {name}={shlex.quote(value)}")
    others = sorted(set(Config(bootstrap="", redis_url="").to_environment())
                    - set(environment) - {"YADTQ_TRUST_CODE"})
    print(f"unset {' '.join(others)}")
    return 0


def _local_down(args: argparse.Namespace) -> int:
    stacks = registry.running_stacks()
    if not stacks:
        print("no local stack is running; nothing to stop", file=sys.stderr)
        return 0
    for record in stacks if args.all else [registry.choose(stacks, args.id)]:
        registry.stop(record, args.timeout)
        print(f"stopped the local stack {record['id']} (owner pid {record['pid']})")
    return 0


def _print_banner(cluster: LocalCluster) -> None:
    config = cluster.config
    print(
        f"yadtq local stack is up: {len(cluster.worker_processes)} worker(s) on queue "
        f"{config.queue!r}, taking tasks\n"
        f"  Kafka bootstrap  {config.bootstrap} ({cluster.stack.broker})\n"
        f"  Redis            {config.redis_url}\n"
        f"  logs             {cluster.stack.data_dir}\n"
        f"yadtq commands and yadtq.connect() on this machine find it through "
        f"{local_stack_record_path()};\n"
        "to point any client at it (its secret included), run in its shell:\n"
        '  eval "$(yadtq local env)"\n'
        "Press Ctrl-C to stop.",
        flush=True,
    )


def _watch(cluster: LocalCluster, stop: threading.Event) -> int:
    """Wait for a stop signal; replace workers that exit, stop if a server does.

    When anything exited on its own, the stack's logs are kept and their folder printed.
    """
    reported: set[int] = set()
    status = 0
    while not stop.wait(1.0):
        for child in [*cluster.stack.processes, *cluster.worker_processes]:
            if child.alive or child.pid in reported:
                continue
            reported.add(child.pid)
            print(f"yadtq: warning: {child.name} exited with code {child.popen.returncode}; "
                  f"last lines of {child.log_path}:\n{child.log_tail()}", file=sys.stderr)
            if child in cluster.stack.processes and cluster.stack.is_redundant(child.name):
                print("yadtq: Redis serves on without it (the sentinels replace a lost "
                      "primary)", file=sys.stderr)
            elif child in cluster.stack.processes:
                print("yadtq: error: the local stack cannot run without it; stopping",
                      file=sys.stderr)
                status = 1
        if status:
            break
        for worker in cluster.replace_exited_workers():
            print(f"yadtq: restarted {worker.name} (pid {worker.pid})", file=sys.stderr)
    if reported:
        print(f"yadtq: logs kept in {cluster.stack.keep_data_dir()}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``yadtq`` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args)
        sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
        return status
    except BrokenPipeError:
        # `yadtq local status | head`: stop quietly with the status of a process killed by
        # SIGPIPE, as cat does, and point stdout at /dev/null so exit's own flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except YadtqError as exc:
        print(f"yadtq: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("yadtq: interrupted", file=sys.stderr)
        return 130
