"""Live updates (top layer): a server-sent events stream of one page's JSON.

The stream reads the page again at most once a second and sends it only when it
changed, so a browser gets one coalesced update however many tasks moved. A read
that cost more Redis commands than one second's budget (a large workflow's counts)
spaces the next read out, so one open page never costs more than ``BUDGET`` commands
a second on average.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse

from yadtq.errors import YadtqError

BUDGET = 20.0  # Redis commands a second one open page may cost, on average
INTERVAL = 1.0  # seconds between reads at least: at most one update a second
KEEPALIVE = 15.0  # seconds of no change after which a comment keeps proxies from closing

# A read gives the page's JSON and the Redis commands it cost.
Read = Callable[[], tuple[dict[str, Any], int]]


def event_stream(request: Request, read: Read) -> StreamingResponse:
    """The page's updates as ``text/event-stream``, until the browser goes away."""
    return StreamingResponse(_updates(request, read), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _updates(request: Request, read: Read) -> AsyncIterator[str]:
    last, sent_at = "", time.monotonic()
    while not await request.is_disconnected():
        started = time.monotonic()
        try:
            payload, cost = await anyio.to_thread.run_sync(read)
        except YadtqError as exc:  # Redis away: say so, and try again
            payload, cost = {"problem": str(exc)}, 0
        text = json.dumps(payload, default=str)
        if text != last:
            event = "problem" if "problem" in payload else "message"
            yield f"event: {event}\ndata: {text}\n\n"
            last, sent_at = text, started
        elif started - sent_at > KEEPALIVE:
            yield ": still here\n\n"
            sent_at = started
        interval = max(INTERVAL, cost / BUDGET)
        await anyio.sleep(max(0.0, interval - (time.monotonic() - started)))
