"""Dependencies point one way (DESIGN.md, "Layout"), and optional packages stay optional."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "yadtq"

LAYERS: list[set[str]] = [
    {"errors", "status", "config", "protocol", "registry", "values", "extras"},  # bottom
    {"backend", "broker", "keys", "records", "redis_errors", "scripts"},  # adapters
    {"futures", "batch", "store", "events", "client", "worker", "plots", "execution",
     "stealing", "shipping", "routing"},  # core
    {"display", "local", "apache_kafka", "processes", "cli", "connection", "__init__",
     "__main__"},  # top
]
LAYER_NAMES = ["bottom", "adapters", "core", "top"]


def layer_of(module: str) -> int:
    for level, members in enumerate(LAYERS):
        if module in members:
            return level
    raise KeyError(module)


def modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py"))


def yadtq_imports(module: str) -> set[str]:
    """The yadtq modules ``module`` imports anywhere in its source (TYPE_CHECKING included)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(), filename=f"{module}.py")
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "yadtq":
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                target = node.module.split(".")[0] if node.module else None
                found.update([target] if target else [a.name for a in node.names])
            elif node.module == "yadtq":
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("yadtq."):
                found.add(node.module.split(".")[1])
    # ``from yadtq import X`` may name a re-exported object rather than a module
    return {name if (PACKAGE / f"{name}.py").exists() else "__init__" for name in found}


def test_every_module_is_assigned_a_layer() -> None:
    unplaced = [m for m in modules() if not any(m in layer for layer in LAYERS)]

    assert not unplaced, f"add {unplaced} to a layer in tests/test_architecture.py"


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
        f"yadtq/{module}.py ({LAYER_NAMES[level]}) imports from a higher layer: "
        f"{', '.join(upward)}"
    )


def test_errors_imports_nothing_from_yadtq() -> None:
    assert yadtq_imports("errors") == set()


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
