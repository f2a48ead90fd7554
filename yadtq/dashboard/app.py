"""The dashboard's routes (top layer): pages, their JSON API and their live streams.

Each page has three routes over one read: ``<page>`` renders it, ``api/<page>`` returns
its JSON, ``live/<page>`` streams that JSON when it changes (``live``). Every link is
relative, so the app works at any prefix (Jupyter's server proxy). The pages that show
one batch, workflow or task take ``?queue=`` (default: the first queue served).
Actions (cancel, retry) exist only with ``allow_actions``; otherwise they answer 403.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from yadtq.backend import RedisBackend
from yadtq.dashboard.actions import Actions
from yadtq.dashboard.auth import TokenAuth, same_origin
from yadtq.dashboard.live import event_stream
from yadtq.dashboard.reads import (
    OVERVIEW_BATCHES,
    RECENT_BATCHES,
    RECENT_WORKFLOWS,
    QueueReads,
)
from yadtq.dashboard.settings import DashboardSettings
from yadtq.errors import TaskNotFound
from yadtq.metrics import exposition, registry_of
from yadtq.status import TaskStatus

TEMPLATES = Path(__file__).parent / "templates"


def _when(seconds: float | None) -> str:
    if not seconds:
        return ""
    return datetime.datetime.fromtimestamp(float(seconds), datetime.timezone.utc) \
        .strftime("%Y-%m-%d %H:%M:%S UTC")


def _fixed(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{float(value):.{digits}f}"


class Dashboard:
    """The reads and actions of the queues one dashboard serves, behind its routes."""

    def __init__(self, settings: DashboardSettings) -> None:
        self.settings = settings
        self.backends = {c.queue: RedisBackend(c) for c in settings.configs}
        self._registry = registry_of(list(self.backends.values()))
        self.actions = Actions(settings) if settings.allow_actions else None
        self.templates = Jinja2Templates(directory=str(TEMPLATES))
        self.templates.env.filters["when"] = _when
        self.templates.env.filters["fixed"] = _fixed
        self.templates.env.globals["colours"] = {s.value: s.colour for s in TaskStatus}

    def close(self) -> None:
        """Close the Redis connections and the clients the actions opened."""
        if self.actions is not None:
            self.actions.close()
        for backend in self.backends.values():
            backend.close()

    # --- reading ---------------------------------------------------------------

    def reads(self, request: Request) -> QueueReads:
        """The reads of the queue ``?queue=`` names (default: the first served)."""
        queue = request.query_params.get("queue") or self.settings.queues[0]
        if queue not in self.backends:
            raise TaskNotFound(f"this dashboard does not serve queue {queue!r}; it serves "
                               f"{', '.join(self.settings.queues)}")
        return QueueReads(self.backends[queue])

    def all_reads(self) -> list[QueueReads]:
        """Fresh reads of every queue served (each counts its own commands)."""
        return [QueueReads(backend) for backend in self.backends.values()]

    def overview(self, request: Request) -> tuple[dict[str, Any], int]:
        """Per queue: counters, live workers and slots, newest batches; and the cost."""
        queues, cost = [], 0
        for reads in self.all_reads():
            workers = reads.workers()
            queues.append({"id": reads.queue, **reads.stats(),
                           "alive": sum(1 for w in workers if w["status"] == "alive"),
                           "workers": len(workers),
                           "slots": sum(w["slots"] for w in workers if w["status"] == "alive"),
                           "busy": sum(w["busy"] for w in workers if w["status"] == "alive"),
                           "batches": reads.batches(OVERVIEW_BATCHES)})
            cost += reads.commands
        shape = [(q["id"], q["workers"], [b["id"] for b in q["batches"]],
                  [o["id"] for o in q["outcomes"]]) for q in queues]
        return {"queues": queues, "shape": repr(shape)}, cost

    def workers(self, request: Request) -> tuple[dict[str, Any], int]:
        """Per queue: each worker and what it runs now; and the cost."""
        queues, cost = [], 0
        for reads in self.all_reads():
            queues.append({"id": reads.queue, "workers": reads.workers(running=True)})
            cost += reads.commands
        shape = [(q["id"], [w["id"] for w in q["workers"]]) for q in queues]
        return {"queues": queues, "shape": repr(shape)}, cost

    def batches(self, request: Request) -> tuple[dict[str, Any], int]:
        """Per queue: the newest batches and workflows with progress; and the cost."""
        queues, cost = [], 0
        for reads in self.all_reads():
            queues.append({"id": reads.queue, "batches": reads.batches(RECENT_BATCHES),
                           "workflows": reads.workflows(RECENT_WORKFLOWS)})
            cost += reads.commands
        shape = [(q["id"], [b["id"] for b in q["batches"]], [w["id"] for w in q["workflows"]])
                 for q in queues]
        return {"queues": queues, "shape": repr(shape)}, cost

    def batch(self, request: Request) -> tuple[dict[str, Any], int]:
        """One batch and a page of its tasks; and the cost."""
        reads = self.reads(request)
        found = reads.batch(request.path_params["id"], _page_number(request))
        return {**found, "shape": _rows_shape(found)}, reads.commands

    def workflow(self, request: Request) -> tuple[dict[str, Any], int]:
        """One workflow and a page of its tasks; and the cost."""
        reads = self.reads(request)
        found = reads.workflow(request.path_params["id"], _page_number(request))
        return {**found, "shape": _rows_shape(found)}, reads.commands

    def again(self, request: Request, previous: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """A batch or workflow page read again, cheaply, for its live stream."""
        reads = self.reads(request)
        return reads.again(previous), reads.commands

    def task(self, request: Request) -> tuple[dict[str, Any], int]:
        """One task's record and attempts; and the cost."""
        reads = self.reads(request)
        found = reads.task(request.path_params["id"])
        return {**found, "shape": repr((found["status"], len(found["attempts"])))}, \
            reads.commands

    # --- routes ------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """Each page's three routes (page, api, live), then the actions."""
        pages: list[tuple[str, str, Callable[[Request], tuple[dict[str, Any], int]], str]] = [
            ("/", "overview", self.overview, "overview.html"),
            ("/workers", "workers", self.workers, "workers.html"),
            ("/batches", "batches", self.batches, "batches.html"),
            ("/batch/{id}", "batch/{id}", self.batch, "tasks.html"),
            ("/workflow/{id}", "workflow/{id}", self.workflow, "tasks.html"),
            ("/task/{id}", "task/{id}", self.task, "task.html"),
        ]
        routes = []
        for path, api, read, template in pages:
            again = self.again if template == "tasks.html" else None
            routes += [Route(path, self._page(path, api, read, template)),
                       Route(f"/api/{api}", self._api(read)),
                       Route(f"/live/{api}", self._live(read, again))]
        for kind in ("task", "batch", "workflow"):
            routes.append(Route(f"/{kind}/{{id}}/cancel", self._action(kind, "cancel"),
                                methods=["POST"]))
        routes.append(Route("/workflow/{id}/retry", self._action("workflow", "retry"),
                            methods=["POST"]))
        routes.append(Route("/metrics", self._metrics))
        return routes

    def _metrics(self, request: Request) -> Response:
        """The queue-wide metrics, as ``yadtq metrics`` serves them (``yadtq.metrics``)."""
        body, content_type = exposition(self._registry)
        return Response(body, media_type=content_type)

    def _page(self, path: str, api: str, read: Callable[[Request], tuple[dict[str, Any], int]],
              template: str) -> Callable[[Request], Response]:
        root = "./" if path.count("/") == 1 else "../"  # from this page to the app's root

        def page(request: Request) -> Response:
            try:
                data, _ = read(request)
            except TaskNotFound as exc:
                return self.templates.TemplateResponse(
                    request, "not_found.html", {"root": root, "message": str(exc), "data": {}},
                    status_code=404)
            query = str(request.query_params)
            live = f"{root}live/{api.format(**request.path_params)}" \
                + (f"?{query}" if query else "")
            return self.templates.TemplateResponse(request, template, {
                "root": root, "data": data, "live": live, "actions": self.actions is not None,
                "note": request.query_params.get("note", ""),
            })
        return page

    @staticmethod
    def _api(read: Callable[[Request], tuple[dict[str, Any], int]]
             ) -> Callable[[Request], Response]:
        def api(request: Request) -> Response:
            try:
                data, _ = read(request)
            except TaskNotFound as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            return JSONResponse(data)
        return api

    @staticmethod
    def _live(read: Callable[[Request], tuple[dict[str, Any], int]],
              again: Callable[[Request, dict[str, Any]], tuple[dict[str, Any], int]] | None
              ) -> Callable[[Request], Response]:
        """The stream of a page's JSON; with ``again``, each read after the first is
        ``again(request, previous)`` (a page that can be read again more cheaply)."""
        def live(request: Request) -> Response:
            try:
                first, _ = read(request)  # a 404 now, rather than a stream of errors
            except TaskNotFound as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            if again is None:
                return event_stream(request, lambda: read(request))
            last = [first]

            def update() -> tuple[dict[str, Any], int]:
                found, cost = again(request, last[0])
                last[0] = found
                return found, cost
            return event_stream(request, update)
        return live

    def _action(self, kind: str, verb: str) -> Callable[[Request], Response]:
        def act(request: Request) -> Response:
            if self.actions is None:
                raise HTTPException(403, "this dashboard is read-only; start it with "
                                         "--allow-actions to cancel and retry from it")
            if not same_origin(request):
                raise HTTPException(403, "refused: the request came from another site")
            try:
                reads = self.reads(request)
                note = self.actions.run(kind, verb, reads.queue, request.path_params["id"])
            except TaskNotFound as exc:
                raise HTTPException(404, str(exc)) from None
            # From <kind>/<id>/<verb> back to <kind>/<id>, relative to work at any prefix.
            query = urlencode({"queue": reads.queue, "note": note})
            return RedirectResponse(f"../{request.path_params['id']}?{query}", status_code=303)
        return act


def _page_number(request: Request) -> int:
    text = request.query_params.get("page", "1")
    if not text.isdigit() or int(text) < 1:
        raise HTTPException(400, f"page must be a whole number from 1, got {text!r}")
    return int(text)


def _rows_shape(found: dict[str, Any]) -> str:
    return repr((found["page"], found["pages"], [t["id"] for t in found["tasks"]]))


def create_app(settings: DashboardSettings) -> Starlette:
    """The dashboard as an ASGI app, guarded by the token if the settings have one."""
    dashboard = Dashboard(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        dashboard.close()

    middleware = [Middleware(TokenAuth, token=settings.token)] if settings.token else []
    return Starlette(routes=dashboard.routes(), middleware=middleware, lifespan=lifespan)
