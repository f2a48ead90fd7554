"""Browser test (issue 3, item 5): the batch widget seen in a real JupyterLab page.

JupyterLab runs on loopback with token auth, Debian's chromium (driven by
Playwright, headless) opens a notebook, runs all cells, and the assertions
read the batch widget's progress from the DOM. The widget contract:

- the batch widget's root element has the class ``yadtq-batch``, and
  ``yadtq-finished`` as well once the batch is over;
- inside it, ``<div class="yadtq-progress" data-total data-success data-failed
  data-processing data-queued data-percent>`` updates live while tasks run.

Every process the test starts (JupyterLab, the kernel, and whatever the
notebook starts: broker, Redis, workers) inherits a marker variable in its
environment, so the teardown finds and stops all of them even when they have
left JupyterLab's process group or the test failed midway.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from helpers import wait_until

from yadtq.local import free_port

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "02_distribution_across_nodes.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
# The machine has no network: keep chromium from reaching out (and stalling on it).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MARKER = "YADTQ_BROWSER_TEST_RUN"

# JupyterLab settings for a quiet, deterministic page: no news or update
# checks, no build prompt, and every cell kept in the DOM (no windowing).
PAGE_CONFIG = {
    "buildAvailable": False,
    "buildCheck": False,
    "disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True},
}
USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


# --- JupyterLab --------------------------------------------------------------------


def _marked_processes(marker: str) -> dict[int, str]:
    """Processes whose environment carries ``MARKER=marker``: pid -> command line."""
    needle = f"{MARKER}={marker}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # exited, waiting to be reaped
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        found[int(entry.name)] = cmdline
    return found


class JupyterLab:
    """A JupyterLab server on a free loopback port, isolated under ``home``."""

    def __init__(self, root_dir: Path, home: Path) -> None:
        self.root_dir = root_dir
        self.home = home
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.marker = uuid.uuid4().hex
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "jupyterlab.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        """The page or API ``path`` with the token attached."""
        separator = "&" if "?" in path else "?"
        return f"{self.base_url}{path}{separator}token={self.token}"

    def start(self, timeout: float = 60) -> JupyterLab:
        """Start the server and wait until its REST API answers."""
        config_dir, settings_dir = self.home / "config", self.home / "settings"
        (config_dir / "labconfig").mkdir(parents=True)
        (config_dir / "labconfig" / "page_config.json").write_text(json.dumps(PAGE_CONFIG))
        for name, settings in USER_SETTINGS.items():
            path = settings_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings))
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "JUPYTER_CONFIG_DIR": str(config_dir),
            "JUPYTER_DATA_DIR": str(self.home / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.home / "runtime"),
            "IPYTHONDIR": str(self.home / "ipython"),
            "YADTQ_HOME": str(self.home / "yadtq"),  # never attach to a user's local stack
            "PYTHONUNBUFFERED": "1",
            MARKER: self.marker,
        }
        command = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.allow_root=True",  # CI containers run as root
            f"--ServerApp.root_dir={self.root_dir}",
            f"--LabApp.user_settings_dir={settings_dir}",
            f"--LabApp.workspaces_dir={self.home / 'workspaces'}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.expose_app_in_browser=True",
        ]
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=self.root_dir, start_new_session=True,
            )
        wait_until(self._status, timeout, f"JupyterLab to answer on {self.base_url}")
        return self

    def _status(self) -> dict[str, Any] | None:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise AssertionError(
                f"JupyterLab exited with {self.popen.returncode}:\n{self.log_tail()}"
            )
        try:
            return self.api("GET", "/api/status", timeout=2)
        except (OSError, urllib.error.URLError):
            return None

    def api(self, method: str, path: str, timeout: float = 10) -> Any:
        """Call the REST API (token in the header, so no XSRF cookie is needed)."""
        request = urllib.request.Request(
            self.base_url + path, method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else {}

    def processes(self) -> dict[int, str]:
        """Every live process started by this server or its descendants."""
        return _marked_processes(self.marker)

    def kernel_pids(self) -> set[int]:
        """The server's live kernel processes."""
        return {pid for pid, cmd in self.processes().items() if "ipykernel_launcher" in cmd}

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for failure messages."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30) -> dict[int, str]:
        """Shut down (kernels first) and wait; stop and return whatever outlived it.

        What the notebook started lives in sessions of its own, so a kernel
        that dies before its cleanup leaves them orphaned: they get SIGTERM,
        then SIGKILL, found by the marker in their environment.
        """
        assert self.popen is not None
        with contextlib.suppress(OSError, urllib.error.URLError):
            self.api("POST", "/api/shutdown", timeout=5)
        leftovers: dict[int, str] = {}
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            leftovers[self.popen.pid] = "jupyter lab (did not exit after /api/shutdown)"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        remaining = self._wait_for_exit(10)  # the kernels shut down on their own
        leftovers.update(remaining)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in remaining:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            remaining = self._wait_for_exit(10)
        assert not remaining, f"processes survived SIGKILL: {remaining}"
        return leftovers

    def _wait_for_exit(self, timeout: float) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while (remaining := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return remaining


@contextlib.contextmanager
def jupyter_lab(root_dir: Path, home: Path) -> Iterator[JupyterLab]:
    """A running JupyterLab; on exit everything it started must be gone."""
    lab = JupyterLab(root_dir, home)
    try:
        yield lab.start()
    finally:
        leftovers = lab.stop()
        print(f"JupyterLab log: {lab.log_path}")
        if leftovers:
            print(f"still running after JupyterLab shut down (now stopped): {leftovers}")
    assert not leftovers, f"still running after JupyterLab shut down (now stopped): {leftovers}"


# --- the page ------------------------------------------------------------------------

# Records every distinct data-percent the first batch widget shows, from the
# moment it appears, however briefly (polling alone could miss a fast batch).
WATCH_PROGRESS_JS = """() => {
    window.__yadtqPercents = [];
    const record = () => {
        const bar = document.querySelector(".yadtq-batch .yadtq-progress");
        if (!bar) return;
        const percent = bar.getAttribute("data-percent");
        const seen = window.__yadtqPercents;
        if (seen[seen.length - 1] !== percent) seen.push(percent);
    };
    new MutationObserver(record).observe(document.body, {
        subtree: true, childList: true, attributes: true, characterData: true,
    });
    record();
}"""

READ_PROGRESS_JS = """() => {
    const root = document.querySelector(".yadtq-batch");
    const bar = root && root.querySelector(".yadtq-progress");
    if (!bar) return null;
    const data = {finished: root.classList.contains("yadtq-finished")};
    for (const name of ["total", "success", "failed", "processing", "queued", "percent"]) {
        data[name] = bar.getAttribute("data-" + name);
    }
    return data;
}"""

CELL_PROMPTS_JS = """() => Array.from(
    document.querySelectorAll(".jp-Notebook .jp-CodeCell .jp-InputArea-prompt"),
    (prompt) => prompt.textContent.trim())"""

WIDGET_OR_STOPPED_JS = f"""() => {{
    if (document.querySelector(".yadtq-batch .yadtq-progress")) return "widget";
    const prompts = ({CELL_PROMPTS_JS})();
    return !prompts.some((p) => p.includes("*")) && prompts.some((p) => p === "[ ]:")
        ? "stopped" : false;
}}"""

ERROR_OUTPUTS_JS = """() => Array.from(
    document.querySelectorAll(
        '.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'),
    (output) => output.innerText.slice(0, 2000))"""


# The page's own kernel indicator reads "idle" before any kernel exists, so ask
# the notebook's session (JupyterLab runs with expose_app_in_browser).
KERNEL_IDLE_JS = """() => {
    const widget = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const session = widget && widget.sessionContext;
    const kernel = session && session.isReady && session.session && session.session.kernel;
    return !!kernel && kernel.connectionStatus === "connected" && kernel.status === "idle";
}"""


def _kernel_idle(page: Any, timeout_ms: float) -> None:
    page.wait_for_function(KERNEL_IDLE_JS, timeout=timeout_ms)


def _show_batch(page: Any) -> None:
    """Scroll the first batch widget to the middle of the notebook panel."""
    page.locator(".yadtq-batch").first.evaluate("(e) => e.scrollIntoView({block: 'center'})")


def _run_all_cells(page: Any) -> None:
    """Run > Run All Cells, as a user would."""
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()


def run_notebook_and_watch_batch(
    lab: JupyterLab, notebook: str, shots: Path, timeout: float = 150
) -> dict[str, Any]:
    """Open ``notebook``, run all cells, follow the first batch widget to its end.

    Returns the widget's final attributes, the percents seen on the way, the
    cell prompts once every cell ran, and the screenshot paths.
    """
    from playwright.sync_api import sync_playwright

    deadline = time.monotonic() + timeout

    def left_ms() -> float:
        return max(1.0, deadline - time.monotonic()) * 1000

    page_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(lab.url(f"/lab/tree/{notebook}"), timeout=left_ms())
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=left_ms())
            _kernel_idle(page, left_ms())
            page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # room for outputs
            page.evaluate(WATCH_PROGRESS_JS)

            _run_all_cells(page)
            page.wait_for_function(
                f"() => ({CELL_PROMPTS_JS})().some((p) => p.includes('*'))", timeout=left_ms()
            )

            # The widget shows up, unless a cell fails first (the run stops short).
            outcome = page.wait_for_function(WIDGET_OR_STOPPED_JS, timeout=left_ms())
            if outcome.json_value() == "stopped":
                raise AssertionError(
                    f"the run stopped before any batch widget appeared: prompts "
                    f"{page.evaluate(CELL_PROMPTS_JS)}; stderr/errors "
                    f"{page.evaluate(ERROR_OUTPUTS_JS)}"
                )

            # While the batch runs: poll its attributes; keep a picture of it mid-run.
            polled: list[str] = []
            midrun_shot: Path | None = None
            while True:
                state = page.evaluate(READ_PROGRESS_JS)
                if state is not None:
                    if not polled or polled[-1] != state["percent"]:
                        polled.append(state["percent"])
                    if state["finished"]:
                        break
                    if midrun_shot is None and 0 < float(state["percent"] or 0) < 100:
                        midrun_shot = shots / f"{Path(notebook).stem}-midrun.png"
                        _show_batch(page)
                        page.screenshot(path=midrun_shot)
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the batch widget did not finish within {timeout} s; last saw {state}"
                    )
                page.wait_for_timeout(100)

            # Then every cell must have run (a failing cell leaves the rest unnumbered).
            page.wait_for_function(
                f"() => !({CELL_PROMPTS_JS})().some((p) => p.includes('*'))",
                timeout=left_ms(),
            )
            _kernel_idle(page, left_ms())
            prompts = page.evaluate(CELL_PROMPTS_JS)
            batch = page.locator(".yadtq-batch").first
            _show_batch(page)
            final_shot = shots / f"{Path(notebook).stem}-final.png"
            page.screenshot(path=final_shot)
            return {
                "final": page.evaluate(READ_PROGRESS_JS),
                "box": batch.bounding_box(),
                "seen": page.evaluate("() => window.__yadtqPercents"),
                "polled": polled,
                "prompts": prompts,
                "errors": page.evaluate(ERROR_OUTPUTS_JS),
                "page_errors": page_errors,
                "midrun_shot": midrun_shot,
                "final_shot": final_shot,
            }
        except Exception:
            failure_shot = shots / f"{Path(notebook).stem}-failure.png"
            with contextlib.suppress(Exception):
                page.screenshot(path=failure_shot)
                print(f"screenshot (failure): {failure_shot}")
                print(f"cell prompts: {page.evaluate(CELL_PROMPTS_JS)}")
                print(f"stderr/errors: {page.evaluate(ERROR_OUTPUTS_JS)}")
            print(f"page errors: {page_errors}")
            raise
        finally:
            browser.close()


def assert_batch_widget_ran_to_completion(run: dict[str, Any]) -> int:
    """The widget rendered, moved while tasks ran, and ended at 100% all successful."""
    print(f"screenshot (final): {run['final_shot']}")
    print(f"screenshot (mid-run): {run['midrun_shot']}")
    print(f"percents seen: {run['seen']}; polled: {run['polled']}; final: {run['final']}")
    assert all(p[1:-2].strip().isdigit() for p in run["prompts"]), (
        f"not every cell ran: prompts {run['prompts']}; stderr/errors: {run['errors']}; "
        f"page errors: {run['page_errors']}"
    )
    box = run["box"]
    assert box and box["width"] > 0 and box["height"] > 0, f"widget not visible: {box}"
    percents = [float(p) for p in run["seen"] + run["polled"] if p not in (None, "")]
    before_end = {p for p in percents if p < 100}
    assert any(0 < p < 100 for p in percents) or len(before_end) >= 2, (
        f"the widget did not move while tasks ran: percents seen {run['seen']}, "
        f"polled {run['polled']}"
    )
    final = run["final"]
    total = int(final["total"])
    assert float(final["percent"]) == 100, final
    assert int(final["success"]) == total, final
    assert int(final["failed"]) == 0 and int(final["processing"]) == 0, final
    assert int(final["queued"]) == 0, final
    return total


# --- the tests -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_distribution_notebook_batch_widget_reaches_100_percent_in_chromium(tmp_path):
    # Given the distribution notebook, copied where JupyterLab serves it
    assert NOTEBOOK.exists(), (
        f"{NOTEBOOK.relative_to(REPO)} is missing: the browser test drives it (issue 3, item 5)"
    )
    assert nbformat.read(NOTEBOOK, as_version=4).cells, f"{NOTEBOOK} has no cells"
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(NOTEBOOK, served / NOTEBOOK.name)

    with jupyter_lab(served, tmp_path / "lab") as lab:
        # When chromium opens it and runs all cells
        run = run_notebook_and_watch_batch(lab, NOTEBOOK.name, tmp_path)

        # Then the first batch widget moved and reached 100% with every task successful
        total = assert_batch_widget_ran_to_completion(run)
        assert total >= 100, f"the notebook's batch has only {total} tasks"

        # ... and the notebook's last cell stopped every process the notebook started.
        kernels = lab.kernel_pids()
        assert kernels, f"no kernel among the server's processes: {lab.processes()}"
        server_and_kernels = {lab.popen.pid} | kernels
        wait_until(
            lambda: set(lab.processes()) <= server_and_kernels, 30,
            "the notebook's processes (broker, Redis, workers) to stop after its last cell",
        )


STAND_IN_TOTAL = 120
STAND_IN_CODE = f'''\
import threading
import time

import ipywidgets as widgets

TOTAL = {STAND_IN_TOTAL}
progress = widgets.HTML()
batch = widgets.VBox([widgets.HTML("<b>stand-in batch</b>"), progress])
batch.add_class("yadtq-batch")


def show(done):
    percent = done * 100 // TOTAL
    progress.value = (
        f'<div class="yadtq-progress" data-total="{{TOTAL}}" data-success="{{done}}" '
        f'data-failed="0" data-processing="{{min(3, TOTAL - done)}}" '
        f'data-queued="{{max(0, TOTAL - done - 3)}}" data-percent="{{percent}}">'
        f'<div style="width: {{percent}}%; height: 14px; background: #2e7d32"></div>'
        f'{{done}} / {{TOTAL}}</div>'
    )


def run():
    for done in range(0, TOTAL + 1, 10):  # ten updates a second, like the real widget
        show(done)
        time.sleep(0.1)
    batch.add_class("yadtq-finished")


show(0)
worker = threading.Thread(target=run, daemon=True)
worker.start()
batch
'''


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stand_in_widget_is_followed_from_the_page_to_100_percent(tmp_path):
    # Given a notebook whose plain ipywidgets box follows the widget contract
    served = tmp_path / "served"
    served.mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {
        "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python",
    }
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# Stand-in for the batch widget"),
        nbformat.v4.new_code_cell(STAND_IN_CODE),
        nbformat.v4.new_code_cell("worker.join()\nprint('done')"),
    ]
    nbformat.write(notebook, served / "stand_in.ipynb")

    with jupyter_lab(served, tmp_path / "lab") as lab:
        # When chromium runs all its cells
        run = run_notebook_and_watch_batch(lab, "stand_in.ipynb", tmp_path, timeout=60)

        # Then the page showed it moving and ending at 100% of the right count
        assert assert_batch_widget_ran_to_completion(run) == STAND_IN_TOTAL
        assert lab.kernel_pids(), f"no kernel among the server's processes: {lab.processes()}"
