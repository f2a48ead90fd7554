"""Notebook tests: ``pytest --nbval notebooks/`` compares outputs through ``sanitize.cfg``.

The sanitize file replaces only what differs from run to run (ids, ports, worker
names, timings); pass ``--nbval-sanitize-with`` to use another one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SANITIZE = Path(__file__).with_name("sanitize.cfg")


def pytest_configure(config: pytest.Config) -> None:
    option = config.option
    if getattr(option, "nbval", False) and getattr(option, "nbval_sanitize_with", "") is None:
        option.nbval_sanitize_with = str(SANITIZE)
