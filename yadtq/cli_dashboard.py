"""``yadtq dashboard`` (top layer): its options, parsed here; served by
``yadtq.dashboard.server``.

Loads no web package until the options are checked, so a missing ``dashboard`` extra
or an unguarded address is reported as one clear line.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

from yadtq.config import dashboard_token, resolve_config
from yadtq.dashboard.settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DashboardSettings,
    missing_extra,
)


def add_parser(commands: Any, servers: argparse.ArgumentParser) -> None:
    """Add the ``dashboard`` command to ``commands`` (server options from ``servers``)."""
    # A copy: "resolve" takes --queue off the parent's own option, which the other
    # commands share.
    dashboard = commands.add_parser(
        "dashboard", parents=[copy.deepcopy(servers)], conflict_handler="resolve",
        help="serve a web dashboard of the queue (needs `pip install 'yadtq[dashboard]'`)",
        description="Serve pages of the queue's counts, workers, batches, workflows and "
        "tasks, updated live, read from Redis on every request.")
    dashboard.add_argument("--host", default=DEFAULT_HOST,
                           help=f"address to listen on (default: {DEFAULT_HOST}); any other "
                           "than loopback needs a token")
    dashboard.add_argument("--port", type=int, default=DEFAULT_PORT,
                           help=f"port to listen on (default: {DEFAULT_PORT})")
    dashboard.add_argument("--token", default=None, metavar="T",
                           help="ask every request for this token (default: "
                           "$YADTQ_DASHBOARD_TOKEN, else none)")
    dashboard.add_argument("--allow-actions", action="store_true",
                           help="show cancel and retry buttons (default: read-only)")
    dashboard.add_argument("--queue", dest="queue", action="extend", nargs="+",
                           default=argparse.SUPPRESS, metavar="Q",
                           help="queues to show (default: $YADTQ_QUEUE or 'default')")
    dashboard.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> DashboardSettings:
    """The dashboard's settings from parsed options and the environment.

    Raises:
        ConfigurationError: no servers configured, or a non-loopback host without a token.
    """
    queues = getattr(args, "queue", None)
    queues = [queues] if isinstance(queues, str) else list(queues or [None])
    base = resolve_config(bootstrap=getattr(args, "bootstrap", None),
                          redis_url=getattr(args, "redis_url", None), queue=queues[0],
                          audience="cli")
    configs = tuple(base.with_overrides(queue=queue) for queue in queues if queue) or (base,)
    return DashboardSettings(configs, host=args.host, port=args.port,
                             token=args.token or dashboard_token(),
                             allow_actions=args.allow_actions)


def run(args: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl-C or SIGTERM."""
    settings = settings_from(args)
    try:
        from yadtq.dashboard.server import serve
    except ImportError as exc:
        raise missing_extra(exc) from None
    serve(settings)
    return 0
