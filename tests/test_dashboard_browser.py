"""Browser test (issue 25): `yadtq dashboard` as a real process, watched in chromium.

The dashboard runs under uvicorn on a free loopback port; Debian's chromium (driven by
Playwright, headless, offline) opens its overview while three real workers run a
10,000-task map. The figures are read from the DOM, where the page's live stream
writes them, and compared with what Redis says; the dashboard is restarted midway,
and the reloaded page must agree with Redis again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until
from test_browser import CHROMIUM, CHROMIUM_ARGS

from worker_node.tasks import add
from yadtq.config import Config
from yadtq.local import free_port

TASKS = 10_000
CATCH_UP = 2.0  # seconds the page may lag the batch's end


class DashboardProcess:
    """``yadtq dashboard`` in a child process on ``port``, stopped by its pid."""

    def __init__(self, config: Config, port: int) -> None:
        self.config, self.port = config, port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> DashboardProcess:
        env = {**os.environ, **self.config.to_environment()}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "yadtq", "dashboard", "--port", str(self.port)], env=env)
        wait_until(self._answers, 30, f"the dashboard to answer at {self.url}")
        return self

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "dashboard exited"
        try:
            with urllib.request.urlopen(self.url + "api/overview", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@pytest.fixture
def dashboard_process(config: Config) -> Iterator[DashboardProcess]:
    running = DashboardProcess(config, free_port())
    yield running.start()
    running.stop()


def dom_figures(page, queue: str) -> dict[str, int]:
    """The overview's queue figures as the page shows them now."""
    names = ["done", "submitted", "alive", "statuses.success", "statuses.queued",
             "statuses.processing"]
    shown = page.evaluate(
        "(keys) => keys.map((k) => document.querySelector(`[data-live='${k}']`).textContent)",
        [f"queues.{queue}.{name}" for name in names])
    return dict(zip(names, map(int, shown), strict=True))


def test_overview_follows_a_10000_task_map_live_and_survives_a_restart(
        config, client, start_workers, dashboard_process, tmp_path):
    from playwright.sync_api import sync_playwright

    # Given three live workers and the dashboard's overview open in chromium
    start_workers(3)
    client.wait_for_workers(3)
    shots = Path(os.environ.get("YADTQ_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(dashboard_process.url)
            wait_until(lambda: dom_figures(page, config.queue)["alive"] == 3, 10,
                       "3 live workers on the page")

            # When a 10,000-task map runs, and the dashboard restarts midway
            batch = client.map(add, [(i, i) for i in range(TASKS)])
            seen: list[int] = []
            restarted = ended_at = shown_at = None
            deadline = time.monotonic() + 120
            while shown_at is None and time.monotonic() < deadline:
                seen.append(dom_figures(page, config.queue)["done"])
                now = time.monotonic()
                if ended_at is None and batch.done():
                    ended_at = now
                if seen[-1] == TASKS:
                    shown_at = now
                if restarted is None and seen[-1] >= TASKS // 5 and not batch.done():
                    restarted = restart_and_compare(dashboard_process, page, client, config)
                    seen.append(restarted["done"])
                page.wait_for_timeout(100)
            if ended_at is None:
                batch.wait(timeout=30)
                ended_at = time.monotonic()
            page.screenshot(path=str(shots / "dashboard-overview.png"), full_page=True)
        finally:
            browser.close()

    # Then the page's script never failed, its done count never went down, and it
    # reached 10,000 within 2 s of the end
    assert not page_errors, page_errors
    assert restarted is not None, f"the map ended before a restart could happen: {seen[-5:]}"
    assert all(a <= b for a, b in zip(seen, seen[1:], strict=False)), seen
    assert shown_at is not None, f"the page never showed {TASKS} done; last {seen[-5:]}"
    assert shown_at - ended_at <= CATCH_UP, f"the page showed the end {shown_at - ended_at} s late"
    assert client.backend.queue_stats().statuses["success"] == TASKS


def restart_and_compare(dashboard, page, client, config) -> dict[str, int]:
    """Restart the dashboard, reload the page, and check it shows what Redis says."""
    dashboard.stop()
    dashboard.start()
    before = client.backend.queue_stats()
    page.reload()
    shown = dom_figures(page, config.queue)
    after = client.backend.queue_stats()
    assert shown["submitted"] == before.submitted == TASKS
    assert before.finished <= shown["done"] <= after.finished
    assert before.statuses["success"] <= shown["statuses.success"] <= \
        after.statuses["success"]
    assert shown["alive"] == 3
    return shown
