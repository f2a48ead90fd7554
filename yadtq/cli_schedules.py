"""``yadtq schedule list|pause|resume|remove|trigger`` (top layer): the command line's
schedules, parsed here and carried out by ``yadtq.schedules``."""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable
from typing import Any

ACTIONS = ("pause", "resume", "remove", "trigger")
PAST = {"pause": "paused", "resume": "resumed", "remove": "removed"}


def add_parser(commands: Any, servers: argparse.ArgumentParser,
               connect: Callable[[argparse.Namespace], Any]) -> None:
    """Add the ``schedule`` command to ``commands``; ``connect(args)`` opens a client."""
    schedule = commands.add_parser("schedule", parents=[servers],
                                   help="list the queue's schedules, or pause, resume, "
                                   "remove or trigger one")
    actions = schedule.add_subparsers(dest="schedule_command", required=True,
                                      metavar="COMMAND")
    listing = actions.add_parser("list", parents=[servers],
                                 help="print the schedules, the next to fire first")
    listing.set_defaults(run=lambda args: _list(connect(args)))
    for action in ACTIONS:
        one = actions.add_parser(action, parents=[servers], help=f"{action} schedule NAME")
        one.add_argument("name", metavar="NAME")
        one.set_defaults(run=lambda args, action=action: _act(connect(args), args.name,
                                                                action))


def _list(client: Any) -> int:
    from yadtq.schedules import schedule_rows

    try:
        rows = schedule_rows(client.backend)
    finally:
        client.close()
    if not rows:
        print("no schedule on this queue", file=sys.stderr)
        return 0
    print(f"{'NAME':20} {'TASK':20} {'WHEN':28} {'NEXT RUN (UTC)':20} FIRED MISSED SKIPPED")
    for row in rows:
        next_run = "paused" if row["next_run"] is None else datetime.datetime.fromtimestamp(
            row["next_run"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{row['name']:20} {row['task'] or '?':20} {row['when']:28} {next_run:20} "
              f"{row['fired']:5} {row['missed']:6} {row['skipped']:7}")
    return 0


def _act(client: Any, name: str, action: str) -> int:
    from yadtq.schedules import Schedule

    try:
        schedule = Schedule(name, client.backend)
        done = getattr(schedule, action)()
    finally:
        client.close()
    if action == "trigger":
        print(f"triggered {name}: task {done}")
    else:
        print(f"{PAST[action]} {name}")
    return 0
