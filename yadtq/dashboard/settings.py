"""The dashboard's options (top layer), and why some are refused before anything starts.

Imports no web package, so the command line can check its options, and say which
extra to install, before loading Starlette.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from yadtq.config import Config
from yadtq.errors import ConfigurationError

DASHBOARD_EXTRA = "pip install 'yadtq[dashboard]'"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


@dataclass(frozen=True)
class DashboardSettings:
    """What ``yadtq dashboard`` serves and to whom."""

    configs: tuple[Config, ...]  # one per queue shown, the first the default
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    allow_actions: bool = False

    def __post_init__(self) -> None:
        if not self.configs:
            raise ConfigurationError("the dashboard needs at least one queue to show")
        check_exposure(self.host, self.token)

    @property
    def queues(self) -> list[str]:
        return [config.queue for config in self.configs]


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve on an address other machines reach without a token.

    Raises:
        ConfigurationError: ``host`` is not loopback and no token was given.
    """
    if not token and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host} without a token: anyone who reaches "
            "that address would see every task's arguments and errors; pass --token T (or "
            "set YADTQ_DASHBOARD_TOKEN), or keep the default --host 127.0.0.1")


def missing_extra(exc: ImportError) -> ConfigurationError:
    """The error for a dashboard started without its packages: names the install."""
    return ConfigurationError(
        f"yadtq dashboard needs {exc.name or 'starlette, uvicorn and jinja2'}, which is not "
        f"installed: {DASHBOARD_EXTRA} adds it (with starlette, uvicorn and jinja2)")
