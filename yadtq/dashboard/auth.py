"""The dashboard's token check (top layer), and the guard on the actions it allows.

With a token every request must carry it: ``Authorization: Bearer T`` (scripts), or
the cookie set when a browser first opens a page with ``?token=T``, which then goes
to the same page without the token in its address, so the browser's relative links
keep working and the token stays out of its history. Without a token the dashboard
only listens on loopback (``settings.check_exposure``).
"""

from __future__ import annotations

import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "yadtq_dashboard_token"


class TokenAuth:
    """ASGI middleware: 401 for every request without the token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        query = parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True)
        given = dict(query).get("token")
        if given is not None and self._matches(given):
            await self._remember(scope, query)(scope, receive, send)
        elif self._matches(_bearer(headers)) or self._matches(_cookie(headers)):
            await self.app(scope, receive, send)
        else:
            response = PlainTextResponse(
                "401: this dashboard needs its token: open it once with ?token=<token>, or "
                "send the header 'Authorization: Bearer <token>'", status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="yadtq dashboard"'})
            await response(scope, receive, send)

    def _matches(self, given: str | None) -> bool:
        return bool(given) and secrets.compare_digest(given.encode(), self.token.encode())

    def _remember(self, scope: Scope, query: list[tuple[str, str]]) -> Response:
        """Set the cookie and go to the same page without the token (a relative address,
        so it works behind a proxy at any prefix)."""
        rest = urlencode([(k, v) for k, v in query if k != "token"])
        page = scope["path"].rsplit("/", 1)[-1]
        response = RedirectResponse("./" + page + (f"?{rest}" if rest else ""), status_code=303)
        # Path=/ because the prefix a proxy adds is unknown here; HttpOnly keeps it from
        # scripts, SameSite=Strict from other sites' forms.
        response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
        return response


def _bearer(headers: Headers) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _cookie(headers: Headers) -> str | None:
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(headers.get("cookie", ""))
    except ValueError:
        return None
    morsel = cookies.get(COOKIE)
    return morsel.value if morsel else None


def same_origin(request: Request) -> bool:
    """False for a request another site's page made (a form posted cross-site): browsers
    say so in Sec-Fetch-Site, or in an Origin whose host differs; scripts send neither."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return origin.split("://", 1)[-1] == request.headers.get("host", "")
