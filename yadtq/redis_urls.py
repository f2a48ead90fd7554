"""Redis URLs (bottom layer): which forms are taken, what a sentinel URL names, how one is shown.

Everything that takes a Redis URL takes ``redis://``, ``rediss://`` (TLS), ``unix://``
and ``redis+sentinel://`` (DESIGN.md). A sentinel URL names the sentinels, not a
server: ``redis+sentinel://[:password@]host:port[,host:port...]/<master>[/<db>]``,
with ``?sentinel_password=...`` when the sentinels themselves require one. The
password before ``@`` is the master's and its replicas'. redis-py has no parser
for this form, so :func:`parse_sentinel_url` is the one place that reads it, and
it says what is wrong with a malformed one rather than letting a bare ValueError
surface at the first command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from yadtq.errors import ConfigurationError

SENTINEL_SCHEME = "redis+sentinel"
REDIS_SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME)
DEFAULT_SENTINEL_PORT = 26379
SENTINEL_FORM = "redis+sentinel://[:password@]host1:26379,host2:26379/<master>[/<db>]"
_SECRET_PARAMETERS = ("password", "sentinel_password")
_SENTINEL_PARAMETERS = ("sentinel_password",)
_MASTER_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class SentinelURL:
    """What a ``redis+sentinel://`` URL names: where the sentinels are and which master."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def hosts(self) -> str:
        """``h1:p1,h2:p2``, the sentinels' addresses."""
        return ",".join(f"{host}:{port}" for host, port in self.sentinels)

    def describe(self) -> str:
        """``sentinels h1:p1,h2:p2 (master mymaster)``, for messages."""
        return f"sentinels {self.hosts} (master {self.master})"


def is_sentinel_url(url: str) -> bool:
    """True for a ``redis+sentinel://`` URL."""
    return url.lower().startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str, name: str = "redis_url") -> SentinelURL:
    """Read a ``redis+sentinel://`` URL (``name``: where it came from, for the message).

    Raises:
        ConfigurationError: it names no sentinel, no master, a bad port or db, or an
            unknown parameter; the message shows the expected form.
    """
    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    sentinels = tuple(_sentinel_address(url, name, entry) for entry in hosts.split(",") if entry)
    if not sentinels:
        _refuse(url, name, "it names no sentinel host")
    path = [unquote(piece) for piece in parts.path.strip("/").split("/") if piece]
    if not path:
        _refuse(url, name, "it names no master after the sentinels")
    if len(path) > 2:
        _refuse(url, name, f"its path has {len(path)} parts; give the master name and the db only")
    master = path[0]
    if not _MASTER_NAME.match(master):
        _refuse(url, name, f"the master name {master!r} has characters other than letters, digits, "
                ". _ -")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            _refuse(url, name, f"the db {path[1]!r} is not a number")
        db = int(path[1])
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_SENTINEL_PARAMETERS))
    if unknown:
        _refuse(url, name, f"unknown parameter {', '.join(unknown)} (known: "
                f"{', '.join(_SENTINEL_PARAMETERS)})")
    sentinel_password = query.get("sentinel_password", [None])[-1]
    return SentinelURL(sentinels, master, db, unquote(username) or None,
                       unquote(password) or None, sentinel_password or None)


def _sentinel_address(url: str, name: str, entry: str) -> tuple[str, int]:
    """``host[:port]`` (or ``[ipv6][:port]``) of one sentinel; the port defaults to 26379."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    else:
        host, _, port_text = entry.rpartition(":") if ":" in entry else (entry, "", "")
    if not host:
        _refuse(url, name, f"the sentinel {entry!r} has no host")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        _refuse(url, name, f"the sentinel {entry!r} has port {port_text!r}, not a number from 1 "
                "to 65535")
    return host, int(port_text)


def _refuse(url: str, name: str, reason: str) -> None:
    raise ConfigurationError(
        f"{name}={redacted_url(url)!r} is not a valid sentinel URL: {reason}; write "
        f"{SENTINEL_FORM}"
        " (add ?sentinel_password=... if the sentinels require one)"
    )


def redacted_url(url: str) -> str:
    """``url`` with its passwords (before ``@``, and in ``password``/``sentinel_password``
    parameters) replaced by ``***``."""
    parts = original = urlsplit(url)
    if "@" in parts.netloc:
        credentials, _, host = parts.netloc.rpartition("@")
        user, colon, password = credentials.partition(":")
        if colon and password:
            parts = parts._replace(netloc=f"{user}:***@{host}")
    if any(f"{name}=" in parts.query for name in _SECRET_PARAMETERS):
        query = [(name, "***" if name in _SECRET_PARAMETERS else value)
                 for name, value in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return url if parts == original else urlunsplit(parts)

