"""The web dashboard (top layer): ``yadtq dashboard`` serves a queue's state as pages.

Server-rendered pages (Jinja2 templates) with relative links, so the dashboard works
at any prefix, behind Jupyter's server proxy too; a JSON API behind each page and a
server-sent events stream per page that pushes at most one update a second. Every
figure is read from Redis through the backend on each request: nothing is kept, so a
restarted dashboard shows what Redis says.

- ``settings``: the options and the refusal to expose an unguarded dashboard.
- ``reads``: what each page shows, read through the backend with bounded reads.
- ``auth``: the token check (bearer header, cookie, or ``?token=`` once).
- ``app``: the routes; ``live``: the update streams; ``actions``: cancel and retry;
  ``server``: uvicorn (the command itself is ``yadtq.cli_dashboard``).

Starlette, uvicorn and Jinja2 come with ``pip install 'yadtq[dashboard]'``; only
``settings`` imports without them.
"""
