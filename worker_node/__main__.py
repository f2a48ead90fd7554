"""``python -m worker_node``: parse options and run one yadtq worker until stopped."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from yadtq.config import metrics_port, resolve_config
from yadtq.errors import YadtqError
from yadtq.worker import DEFAULT_TASK_MODULES, Worker


def _at_least_one(text: str) -> int:
    """An argparse type for counts: an integer of 1 or more (argparse names the option)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer of 1 or more, got {text!r}"
                                         ) from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {number}")
    return number


def _port(text: str) -> int:
    """An argparse type for a TCP port, 1 to 65535."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(
            f"must be a TCP port, 1 to 65535, got {text!r} (from the option, else "
            "$YADTQ_METRICS_PORT)")
    return number


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker_node",
        description="Run a yadtq worker: join the queue's Kafka consumer group, run the tasks "
        "registered in --tasks modules, report status and heartbeats to Redis. "
        "Stops gracefully on SIGTERM or Ctrl-C.",
    )
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers, host:port[,host:port] "
                        "(default: $YADTQ_BOOTSTRAP, else a running `yadtq local up` stack)")
    parser.add_argument("--redis", dest="redis_url", help="Redis URL, e.g. "
                        "redis://host:6379/0 (default: $YADTQ_REDIS_URL, else the local stack)")
    parser.add_argument("--queue", help="queue name (default: $YADTQ_QUEUE or 'default')")
    parser.add_argument("--key-prefix", help="prefix of every Redis key (default: yadtq)")
    parser.add_argument("--tasks", action="append", metavar="MODULE",
                        help="module whose @yadtq.task functions this worker runs; repeat for "
                        f"several (default: {', '.join(DEFAULT_TASK_MODULES)})")
    parser.add_argument("--concurrency", type=_at_least_one, default=4,
                        help="tasks run at once (default: 4)")
    parser.add_argument("--mode", choices=["process", "thread"], default="process",
                        help="where task code runs: 'process' (default) runs each slot's tasks "
                        "in a child process, so time limits and cancellation really stop the "
                        "code; 'thread' runs them in this process, cheaper but unstoppable")
    parser.add_argument("--steal", action=argparse.BooleanOptionalAction, default=True,
                        help="when idle, take tasks waiting in other workers' partitions, so "
                        "long-tail batches even out (default: on)")
    parser.add_argument("--trust-code", action="store_true", default=None,
                        help="also run functions shipped by value (cloudpickle) and load "
                        "pickled arguments, from messages signed with $YADTQ_SECRET only: "
                        "anyone with the secret can run code here (default: "
                        "$YADTQ_TRUST_CODE, else off: registered tasks only)")
    parser.add_argument("--require-signed", action=argparse.BooleanOptionalAction,
                        default=None,
                        help="refuse plain JSON calls of registered tasks that are not signed "
                        "with $YADTQ_SECRET (code and pickles must always be signed) "
                        "(default: $YADTQ_REQUIRE_SIGNED, else on when YADTQ_SECRET is set)")
    parser.add_argument("--default-timeout", type=float, metavar="SECONDS",
                        help="time limit for tasks that declare none (default: "
                        "$YADTQ_DEFAULT_TIMEOUT, else no limit)")
    parser.add_argument("--name", help="worker name shown in status and heartbeats "
                        "(default: HOSTNAME-PID)")
    parser.add_argument("--heartbeat-interval", type=float,
                        help="seconds between heartbeats (default: 2)")
    parser.add_argument("--lease-seconds", type=float,
                        help="seconds a claim lasts without renewal before other workers "
                        "re-run the task (default: 10)")
    parser.add_argument("--partitions", type=int,
                        help="partitions of the tasks topic if this worker creates it "
                        "(default: 12)")
    parser.add_argument("--shutdown-grace", type=float, default=30.0,
                        help="seconds to let running tasks finish on SIGTERM before handing "
                        "them back (default: 30)")
    parser.add_argument("--metrics-port", type=_port, default=metrics_port(), metavar="PORT",
                        help="serve this worker's Prometheus metrics (task duration and "
                        "queue-wait histograms, busy slots) at http://HOST:PORT/metrics; "
                        "each worker on a host needs its own port "
                        "(default: $YADTQ_METRICS_PORT, else none)")
    parser.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                        help="address to serve metrics on; 0.0.0.0 for every interface "
                        "(default: 127.0.0.1)")
    parser.add_argument("--tracing", action="store_true", default=None,
                        help="run each task in an OpenTelemetry span, a child of the span that "
                        "submitted it; exporters from $OTEL_TRACES_EXPORTER, needs "
                        "pip install 'yadtq[otel]' (default: $YADTQ_TRACING, else off)")
    parser.add_argument("--trace-file", metavar="PATH",
                        help="also write the spans to PATH as JSON lines, {worker} replaced by "
                        "the worker's name; implies --tracing (default: $YADTQ_TRACE_FILE)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default: INFO)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(args.log_level)))
    try:
        config = resolve_config(
            bootstrap=args.bootstrap, redis_url=args.redis_url, queue=args.queue,
            key_prefix=args.key_prefix, heartbeat_interval=args.heartbeat_interval,
            lease_seconds=args.lease_seconds, partitions=args.partitions,
            default_timeout=args.default_timeout, trust_code=args.trust_code,
            require_signed=args.require_signed, tracing=args.tracing,
            trace_file=args.trace_file, audience="worker",
        )
        worker = Worker(config, name=args.name, concurrency=args.concurrency,
                        task_modules=args.tasks or DEFAULT_TASK_MODULES, mode=args.mode,
                        steal=args.steal, shutdown_grace=args.shutdown_grace,
                        metrics_port=args.metrics_port, metrics_host=args.metrics_host)
    except (YadtqError, ImportError) as exc:
        print(f"worker_node: error: {exc}", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):  # stop gracefully: finish, hand back
        signal.signal(signum, lambda number, _frame: worker.stop(
            f"received {signal.Signals(number).name}"))
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
