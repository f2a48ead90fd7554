"""``yadtq status`` without an id, and ``yadtq metrics`` (top layer): the queue as an
operator watches it, from the counters the scripts keep (``backend.queue_stats``)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from yadtq.status import FINISHED, TaskStatus

DEFAULT_METRICS_PORT = 9750


def add_parser(commands: Any, servers: argparse.ArgumentParser) -> None:
    """Add the ``metrics`` command to ``commands``."""
    metrics = commands.add_parser(
        "metrics", parents=[servers],
        help="serve the queue's metrics for Prometheus at http://HOST:PORT/metrics",
        description="Serve queue-wide metrics (tasks submitted, outcomes per task, tasks in "
        "each status, retries, live workers, slots, Kafka lag) read from Redis at each "
        "scrape, until Ctrl-C or SIGTERM. They never reset: the scripts keep them in Redis.")
    metrics.add_argument("queues", nargs="*", metavar="QUEUE",
                         help="queues to report (default: --queue, else $YADTQ_QUEUE or "
                         "'default')")
    metrics.add_argument("--port", type=int, default=DEFAULT_METRICS_PORT,
                         help=f"port to listen on (default: {DEFAULT_METRICS_PORT})")
    metrics.add_argument("--host", default="127.0.0.1",
                         help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    metrics.set_defaults(run=_metrics)


def print_stats(client: Any) -> int:
    """Print the queue's counters (``yadtq status`` without an id)."""
    stats = client.stats()
    alive = [row for row in client.worker_rows() if row["status"] == "alive"]
    live = [status for status in TaskStatus if status not in FINISHED]
    finished = [status for status in TaskStatus if status in FINISHED]
    lines = [
        ("queue", stats.queue),
        ("submitted", stats.submitted),
        *((status.value, stats.statuses.get(status.value, 0)) for status in live),
        *((status.value, stats.statuses.get(status.value, 0)) for status in finished),
        ("retries", stats.retries),
        ("requeued", stats.requeued),
        ("dead-lettered", stats.dead_lettered),
        ("workers alive", f"{len(alive)} ({sum(r['concurrency'] for r in alive)} slots, "
                          f"{sum(r['in_flight'] for r in alive)} busy)"),
    ]
    width = max(len(name) for name, _ in lines)
    print("\n".join(f"{name.ljust(width)}  {value}" for name, value in lines))
    return 0


def _metrics(args: argparse.Namespace) -> int:
    from yadtq.config import resolve_config
    from yadtq.metrics import serve

    config = resolve_config(redis_url=getattr(args, "redis_url", None),
                            queue=getattr(args, "queue", None), audience="cli")
    server = serve(config, args.port, args.host, args.queues)
    print(f"serving metrics of {', '.join(args.queues or [config.queue])} at "
          f"http://{args.host}:{args.port}/metrics (Ctrl-C stops)", file=sys.stderr, flush=True)
    _wait_for_stop(server.shutdown)
    return 0


def _wait_for_stop(shutdown: Callable[[], None]) -> None:
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
    finally:
        shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
