"""Dependencies point one way (DESIGN.md, "Layout"), and optional packages stay optional."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "yadtq"

# A module is named by its dotted path under yadtq/ ("cli", "local.stack"); a package
# ("local", its __init__) stands for every module in it.
LAYERS: list[set[str]] = [
    {"errors", "status", "config", "protocol", "registry", "values", "extras", "due",
     "inputs", "schedule_times", "limits", "priority", "trace_context", "redis_urls",
     "message_signing"},  # bottom
    {"backend", "broker"},  # adapters: Redis and Kafka
    {"futures", "batch", "store", "events", "client", "waking", "worker", "plots", "shipping",
     "routing", "acceptance", "worker_table", "dependencies", "workflow", "schedules",
     "call_options", "tracing"},  # core
    {"display", "workflow_display", "local", "cli", "cli_schedules", "connection", "__init__",
     "__main__", "metrics", "cli_observe", "cli_dashboard", "dashboard"},  # top
]
LAYER_NAMES = ["bottom", "adapters", "core", "top"]


def layer_of(module: str) -> int:
    for level, members in enumerate(LAYERS):
        if module.split(".")[0] in members:
            return level
    raise KeyError(module)


def module_name(path: Path) -> str:
    """``cli`` for yadtq/cli.py, ``local.stack`` for yadtq/local/stack.py, ``local`` for its
    ``__init__.py`` (yadtq's own stays ``__init__``)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if len(parts) > 1 and parts[-1] == "__init__" else parts)


def modules() -> list[str]:
    return sorted(module_name(path) for path in PACKAGE.rglob("*.py"))


def source_path(module: str) -> Path:
    base = PACKAGE.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def module_of(parts: list[str]) -> str:
    """The module a dotted name under yadtq lives in: its longest prefix that is a module.

    ``local.LocalCluster`` is in ``local``, ``connect`` (``from yadtq import connect``)
    in ``__init__``, and ``local.apache_kafka`` is a module itself.
    """
    known = set(modules())
    while parts and ".".join(parts) not in known:
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def yadtq_imports(module: str) -> set[str]:
    """The yadtq modules ``module`` imports anywhere in its source (TYPE_CHECKING included)."""
    path = source_path(module)
    tree = ast.parse(path.read_text(), filename=str(path))
    parts = module.split(".")
    # A relative import starts from the module's package; a package's __init__ is in it.
    package = parts if path.name == "__init__.py" and module != "__init__" else parts[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(module_of(alias.name.split(".")[1:]) for alias in node.names
                         if alias.name.split(".")[0] == "yadtq")
        elif isinstance(node, ast.ImportFrom):
            named = node.module.split(".") if node.module else []
            if node.level:  # from . import x / from ..errors import y
                base = package[:len(package) - node.level + 1] + named
            elif named[:1] == ["yadtq"]:
                base = named[1:]
            else:
                continue
            found.update(module_of(base + [alias.name]) for alias in node.names)
    return found


def test_every_module_is_assigned_a_layer() -> None:
    unplaced = [m for m in modules() if not any(m.split(".")[0] in layer for layer in LAYERS)]

    assert not unplaced, f"add {unplaced} to a layer in tests/test_architecture.py"


def test_imports_are_named_by_dotted_path_inside_a_package() -> None:
    assert {"local.processes", "local.apache_kafka", "config"} <= yadtq_imports("local.stack")
    assert "local" in yadtq_imports("cli")
    assert "local.cluster" in yadtq_imports("local")


@pytest.mark.parametrize("module", modules())
def test_module_imports_only_its_own_layer_or_lower(module: str) -> None:
    level = layer_of(module)
    imported = yadtq_imports(module) - {module}

    upward = sorted(
        f"{name} ({LAYER_NAMES[layer_of(name)]})"
        for name in imported
        if layer_of(name) > level
    )

    assert not upward, (
        f"{source_path(module).relative_to(PACKAGE.parent)} ({LAYER_NAMES[level]}) imports "
        f"from a higher layer: {', '.join(upward)}"
    )


def test_errors_imports_nothing_from_yadtq() -> None:
    assert yadtq_imports("errors") == set()


def third_party_imports(module: str) -> set[str]:
    """The top-level names of the packages outside yadtq that ``module`` imports."""
    path = source_path(module)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found - {"yadtq"}


def test_only_the_kafka_adapter_imports_kafka_python() -> None:
    importers = [m for m in modules() if "kafka" in third_party_imports(m)]

    assert importers and all(m.split(".")[0] == "broker" for m in importers), importers


def test_the_worker_runtime_reaches_kafka_only_through_the_adapters_interface() -> None:
    worker = [m for m in modules() if m.split(".")[0] == "worker"]
    reaching_in = {m: sorted(n for n in yadtq_imports(m) if n.startswith("broker."))
                   for m in worker}

    assert len(worker) > 3 and not any(reaching_in.values()), reaching_in


def test_futures_and_batches_reach_redis_only_through_the_store_they_are_given() -> None:
    assert not (yadtq_imports("futures") | yadtq_imports("batch")) & {"client", "store", "backend"}


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=PACKAGE.parent)


def test_client_imports_with_pandas_and_ipywidgets_blocked() -> None:
    result = run_python(
        "import sys\n"
        "sys.modules['pandas'] = None\n"
        "sys.modules['ipywidgets'] = None\n"
        "import yadtq\n"
        "import yadtq.client\n"
        "print(yadtq.Client.__name__)\n"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Client"


def test_importing_yadtq_loads_no_dataframe_widget_or_plotting_library() -> None:
    result = run_python(
        "import sys\n"
        "import yadtq\n"
        "heavy = ['pandas', 'ipywidgets', 'matplotlib']\n"
        "print(','.join(sorted(m for m in heavy if m in sys.modules)))\n"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"import yadtq loaded {result.stdout.strip()}"
