"""Viewer tests: the `slow` marker; slow cases run only when asked for.

CI runs one viewer case (≈ 11 s); the other kinds of SEG (≈ 11 s each) run with
``WECARE_RUN_SLOW=1`` or ``-m slow``.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running; run with WECARE_RUN_SLOW=1 or -m slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("WECARE_RUN_SLOW") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow viewer case: run with WECARE_RUN_SLOW=1 or -m slow")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)
