"""Optional packages (bottom layer): what the ``notebook`` extra adds, and the error without it.

``pip install yadtq`` is what a worker and a script client need. DataFrames,
plots and widgets come with ``pip install 'yadtq[notebook]'`` (pandas,
matplotlib, ipywidgets); a feature that needs one of them says so by name.
A worker's tracing needs ``pip install 'yadtq[otel]'`` (the OpenTelemetry SDK).
"""

from __future__ import annotations

import importlib
from types import ModuleType

NOTEBOOK_EXTRA = "pip install 'yadtq[notebook]'"
OTEL_EXTRA = "pip install 'yadtq[otel]'"


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise an ImportError that names the extra.

    Raises:
        ImportError: ``module`` is not installed; says which install adds it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{feature} needs {module.split('.')[0]}, which is not installed: {NOTEBOOK_EXTRA} "
            "adds it (with pandas, matplotlib and ipywidgets for DataFrames, plots and widgets)"
        ) from exc
