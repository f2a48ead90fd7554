"""binder/start here, as mybinder.org runs it: a background stack, then the command.

The command executes ``notebooks/02_distribution_across_nodes.ipynb`` with
nbconvert. The notebook attaches to the stack binder/start launched (through
the record in ``$YADTQ_HOME``), so its tasks must show up in that stack's
Redis. Afterwards the stack is stopped through the pid in its record, and no
process of it may be left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "02_distribution_across_nodes.ipynb"
EXPECTED_OUTPUT = [  # lines the notebook prints when its checks hold
    r"count_primes correct:\s+True",
    r"add correct:\s+True",
    r"every worker ran at least 20%:\s+True",
    r"workers running in parallel:\s+True",
]

pytestmark = pytest.mark.slow


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] == "Z":  # exited, waiting to be reaped: not running
            continue
        found[int(entry.name)] = (int(fields[1]), command.strip())
    return found


def _belonging_to(root_pid: int, markers: list[str]) -> dict[int, str]:
    """``root_pid``, its descendants, and processes whose command line has a marker."""
    processes = _processes()
    family = {root_pid} & processes.keys()
    grew = True
    while grew:
        children = {pid for pid, (parent, _) in processes.items() if parent in family} - family
        family |= children
        grew = bool(children)
    family |= {pid for pid, (_, command) in processes.items()
               if any(marker in command for marker in markers)}
    family.discard(os.getpid())
    return {pid: processes[pid][1] for pid in family if pid in processes}


def _stop(record: dict, timeout: float = 40) -> dict[int, str]:
    """SIGTERM the recorded stack; return whatever of it is still running after ``timeout``."""
    markers = [record["bootstrap"], record["redis_url"].rpartition("@")[2].split("/")[0]]
    before = _belonging_to(int(record["pid"]), markers)
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(record["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    left = before
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        running = _processes()
        left = {pid: command for pid, command in before.items()
                if pid in running and running[pid][1] == command}
    return left


def _run_in_own_group(
    command: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in a new process group; past ``timeout``, SIGTERM then SIGKILL the group."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=wait)
                break
        raise AssertionError(f"{command[0]} did not finish within {timeout} s") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_binder_start_runs_notebook_02_against_the_stack_it_started(tmp_path):
    # Given binder/start, a fresh YADTQ_HOME and no servers in the environment
    assert NOTEBOOK.is_file(), (
        f"{NOTEBOOK.relative_to(ROOT)} is missing: binder/start has no notebook to run")
    home = tmp_path / "yadtq-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("YADTQ_")}
    env |= {"YADTQ_HOME": str(home),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    record_path = home / "local-stack.json"

    # When it runs nbconvert on notebook 02
    command = [str(ROOT / "binder" / "start"), "jupyter", "nbconvert", "--to", "notebook",
               "--execute", str(NOTEBOOK), "--output-dir", str(tmp_path),
               "--output", "executed", "--ExecutePreprocessor.timeout=180"]
    record = None
    try:
        done = _run_in_own_group(command, env, timeout=200)  # under pytest-timeout's 300 s
        record = json.loads(record_path.read_text()) if record_path.exists() else None

        # Then the stack it started is still recorded, and the notebook ran cleanly ...
        assert record is not None, (
            f"binder/start recorded no stack in {record_path}\n{done.stderr[-3000:]}")
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-5000:]}"
        executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
        outputs = [o for cell in executed.cells if cell.cell_type == "code"
                   for o in cell.outputs]
        errors = [o for o in outputs if o.output_type == "error"]
        assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]
        text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        for expected in EXPECTED_OUTPUT:
            assert re.search(expected, text), f"no line matching {expected!r} in:\n{text}"

        # ... on the servers binder/start launched: its Redis holds the notebook's tasks.
        with redis.Redis.from_url(record["redis_url"], socket_timeout=5) as server:
            tasks = [key for key in server.scan_iter(match="*:task:*", count=1000)
                     if not key.endswith(b":attempts")]
        assert tasks, (
            "the notebook's tasks are not in the Redis binder/start launched "
            f"({record['redis_url']}): it ran on a stack of its own, not on the recorded one "
            "(does it use yadtq.LocalCluster(..., servers='auto')?)")
    finally:
        if record is None and record_path.exists():
            record = json.loads(record_path.read_text())
        left = _stop(record) if record is not None else {}
        for pid in left:  # cleaned up even though the test fails below
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # And stopping it through the recorded pid leaves nothing running, nor a record.
    assert not left, f"still running 40 s after SIGTERM: {left}"
    assert not record_path.exists(), "the stopped stack left its record behind"
