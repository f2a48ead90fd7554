"""What a user who installs a built release meets (issue 14): a core install without the
notebook packages, a complete wheel and sdist, and the names the docs (README.md, docs/) use."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

import yadtq
from yadtq.batch import DATAFRAME_COLUMNS
from yadtq.config import Config
from yadtq.local import LocalCluster
from yadtq.worker_table import WORKER_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK_NOTEBOOK_PACKAGES = (
    "import sys\n"
    "for name in ('pandas', 'matplotlib', 'ipywidgets', 'IPython'):\n"
    "    sys.modules[name] = None\n"
)

CORE_CLIENT = BLOCK_NOTEBOOK_PACKAGES + '''
import yadtq
from yadtq.config import resolve_config
with yadtq.Client(resolve_config()) as q:
    rows = q.wait_for_workers(1, timeout=60)
    print("workers", len(rows))
    print("submit", q.submit("add", 1, 2).result(timeout=60))
    print("map", sum(q.map("add", [(i, i) for i in range(20)]).results(timeout=60)))
    try:
        q.map("add", [(1, 1)]).to_dataframe()
    except ImportError as exc:
        print("dataframe", exc)
'''


def test_a_core_install_serves_a_script_client_and_names_the_extra_for_dataframes(
        config: Config, start_workers: Callable[..., LocalCluster]) -> None:
    # Given a worker, and a client process in which pandas, matplotlib and ipywidgets
    # cannot be imported (as in `pip install yadtq` without the notebook extra)
    start_workers(1)
    env = {**os.environ, **config.to_environment()}

    # When it waits for the worker, submits, maps and asks for a DataFrame
    done = subprocess.run([sys.executable, "-c", CORE_CLIENT], capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT)

    # Then everything but the DataFrame works, and that says which extra to install
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["workers"] == "1" and lines["submit"] == "3" and lines["map"] == "380"
    assert "pip install 'yadtq[notebook]'" in lines["dataframe"]


def test_the_workers_command_prints_a_table_without_pandas(
        config: Config, start_workers: Callable[..., LocalCluster]) -> None:
    start_workers(1)
    with yadtq.Client(config) as client:
        client.wait_for_workers(1, timeout=60)
    code = BLOCK_NOTEBOOK_PACKAGES + "from yadtq.cli import main\nsys.exit(main(['workers']))"

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **config.to_environment()}, cwd=ROOT)

    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()[:2]
    assert header.split()[:4] == ["name", "host", "pid", "status"]
    assert row.split()[0] == "local-worker-1" and "alive" in row.split()


def test_worker_unit_prints_the_systemd_unit_the_wheel_ships() -> None:
    done = subprocess.run([sys.executable, "-m", "yadtq", "worker-unit"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)

    assert done.returncode == 0, done.stderr
    assert done.stdout == (ROOT / "worker_node" / "yadtq-worker.service").read_text()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The wheel and the sdist built from this checkout, and what the builds printed."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--sdist", "-o", str(out),
                           str(ROOT)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [wheel], [sdist] = out.glob("*.whl"), out.glob("*.tar.gz")
    return wheel, sdist, done.stdout + done.stderr


def test_the_wheel_carries_every_module_the_license_the_lua_and_java_files_and_the_unit(
        built: tuple[Path, Path, str]) -> None:
    wheel, _, _ = built
    names = zipfile.ZipFile(wheel).namelist()

    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert "worker_node/yadtq-worker.service" in names
    assert {"yadtq/local/java/pom.xml", "yadtq/local/java/log4j2.properties"} <= set(names)
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "yadtq").rglob("*.py")}
    assert modules <= set(names), f"not in the wheel: {sorted(modules - set(names))}"
    lua = {n.removeprefix("yadtq/backend/lua/") for n in names
           if n.startswith("yadtq/backend/lua/")}
    sources = ROOT / "yadtq" / "backend" / "lua"
    assert lua == {str(p.relative_to(sources)) for p in sources.rglob("*.lua")}
    templates = ROOT / "yadtq" / "dashboard" / "templates"
    assert {str(p.relative_to(ROOT)) for p in templates.glob("*.html")} <= set(names)


def test_the_sdist_ships_no_half_test_tree_and_the_build_warns_of_nothing(
        built: tuple[Path, Path, str]) -> None:
    _, sdist, output = built
    names = tarfile.open(sdist).getnames()

    assert not [n for n in names if "/tests/" in n]
    assert any(n.endswith("/LICENSE") for n in names)
    warnings = [line for line in output.splitlines()
                if re.search(r"DeprecationWarning|deprecated|absent from the", line)]
    assert not warnings, "\n".join(warnings)


def _docs_text() -> str:
    return "\n".join(path.read_text() for path in DOCS)


def test_docs_document_the_dataframe_columns_the_code_produces() -> None:
    docs = (ROOT / "docs" / "usage.md").read_text()
    start = docs.index("b.to_dataframe()")
    comment = " ".join(line.split("#", 1)[1] for line in docs[start:].splitlines()[:2])

    documented = [name.strip() for name in comment.split(",")]

    assert documented == DATAFRAME_COLUMNS


def test_docs_name_only_commands_and_settings_that_exist() -> None:
    docs = _docs_text()
    cli = " ".join(path.read_text() for path in (ROOT / "yadtq").glob("cli*.py"))
    commands = set(re.findall(r'add_parser\(\s*"([\w-]+)"', cli))
    used = set(re.findall(r"`yadtq ([a-z][\w-]+)", docs)) - {"local"}
    assert used <= commands, used - commands

    config_source = (ROOT / "yadtq" / "config.py").read_text()
    variables = set(re.findall(r'"(YADTQ_[A-Z_]+)"', config_source))
    others = set(re.findall(r"YADTQ_[A-Z_]+", " ".join(
        path.read_text() for path in (ROOT / "yadtq").rglob("*.py")))) | {
        "YADTQ_REQUIRE_APACHE_KAFKA", "YADTQ_REQUIRE_NETNS", "YADTQ_TEST_BROKER"}
    documented = set(re.findall(r"YADTQ_[A-Z_]+", docs))
    assert documented <= variables | others, documented - variables - others


def test_worker_columns_in_docs_are_columns_of_workers() -> None:
    docs = (ROOT / "docs" / "usage.md").read_text()
    line = next(line for line in docs.splitlines() if line.startswith("q.workers()"))
    named = [n.strip() for n in line.split("DataFrame:", 1)[1].split(",") if n.strip() != "..."]

    assert set(named) <= set(WORKER_COLUMNS)


def test_every_command_line_option_in_docs_exists() -> None:
    docs = _docs_text()
    parsers = [*(ROOT / "yadtq").glob("cli*.py"), ROOT / "worker_node" / "__main__.py",
               *(ROOT / "benchmarks").glob("*.py")]
    options = {node.value for path in parsers for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)
               and node.value.startswith("--")}
    options |= {"--no-" + option[2:] for option in options}  # BooleanOptionalAction
    ours = re.compile(r"(^|[\s`])(yadtq [a-z]|python -m (worker_node|yadtq)|\S*(bench|peers|chaos)"
                      r"\.py|\S*run_(worker|client)\.sh)")
    used = {option for line in docs.splitlines() if ours.search(line)
            for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", line)}

    assert used - {"--nbval", "--nbval-sanitize-with", "--help"} <= options, \
        sorted(used - options)


def test_the_scripts_say_what_to_do_when_no_python_has_yadtq(tmp_path: Path) -> None:
    # Given the scripts outside a checkout with a .venv, and only a python3 without yadtq
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name in ("_python.sh", "run_worker.sh"):
        (scripts / name).write_text((ROOT / "scripts" / name).read_text())
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python3").symlink_to(sys.base_prefix + "/bin/python3")

    done = subprocess.run(["bash", str(scripts / "run_worker.sh")], capture_output=True,
                          text=True, timeout=60, env={"PATH": f"{bare}:/usr/bin:/bin"})

    assert done.returncode == 1
    assert "no Python with yadtq found" in done.stderr and "make venv" in done.stderr


def test_run_client_ends_its_wait_saying_no_worker_serves_the_queue(config: Config) -> None:
    env = {**os.environ, **config.to_environment(), "PYTHON": sys.executable}

    done = subprocess.run(["bash", str(ROOT / "scripts" / "run_client.sh"), "add", "1", "2",
                           "--timeout", "1"], capture_output=True, text=True, timeout=60,
                          env=env)

    assert done.returncode != 0
    assert "no live worker serves queue" in done.stderr, done.stderr
