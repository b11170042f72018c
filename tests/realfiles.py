"""Real ultrasound files shipped by the pydicom-data and deid-data packages (no download)."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest


def _package_dir(name: str) -> Path | None:
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def pydicom_data_file(name: str) -> Path:
    """A file of pydicom-data's `data_store/data` folder (pydicom's test files, offline)."""
    base = _package_dir("data_store")
    path = base / "data" / name if base else None
    if path is None or not path.exists():
        pytest.fail(f"pydicom-data file {name} missing: install the test extra")
    return path


def deid_ultrasound(name: str) -> Path:
    """A file of deid-data's `data/ultrasounds` folder."""
    base = _package_dir("deid_data")
    path = base / "data" / "ultrasounds" / name if base else None
    if path is None or not path.exists():
        pytest.fail(f"deid-data file {name} missing: install the test extra")
    return path
