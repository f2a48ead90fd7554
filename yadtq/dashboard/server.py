"""Running the dashboard (top layer): uvicorn serves the app until Ctrl-C or SIGTERM."""

from __future__ import annotations

import sys

import uvicorn

from yadtq.backend import RedisBackend
from yadtq.dashboard.app import create_app
from yadtq.dashboard.settings import DashboardSettings

SHUTDOWN_GRACE = 2.0  # seconds open pages' streams get to end when the dashboard stops


def serve(settings: DashboardSettings) -> None:
    """Check Redis answers, then serve until stopped.

    Raises:
        BackendUnavailable: Redis does not answer, so no page could show anything.
    """
    for config in settings.configs:
        backend = RedisBackend(config)
        try:
            backend.check_connection()
        finally:
            backend.close()
    guarded = "token required" if settings.token else "no token: loopback only"
    print(f"yadtq dashboard of queue {', '.join(settings.queues)} on "
          f"http://{settings.host}:{settings.port}/ ({guarded}; actions "
          f"{'allowed' if settings.allow_actions else 'off'})", file=sys.stderr, flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE)
