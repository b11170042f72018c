"""Run dicom3tools' ``dciodvfy`` (IOD validator) and split its output into errors/warnings."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.requirements import skip_unless

__all__ = ["dciodvfy_available", "needs_dciodvfy", "run_dciodvfy", "validate_dataset"]


def dciodvfy_available() -> bool:
    """True when the ``dciodvfy`` binary is on PATH."""
    return shutil.which("dciodvfy") is not None


def run_dciodvfy(path: Path | str) -> tuple[list[str], list[str]]:
    """Validate a file with ``dciodvfy``.

    Returns
    -------
    tuple[list[str], list[str]]
        (error lines, warning lines), each stripped; lines that are neither (e.g. the
        IOD name dciodvfy prints first) are dropped.
    """
    result = subprocess.run(
        ["dciodvfy", "-new", str(path)],
        capture_output=True,
        text=True,
        errors="replace",  # it echoes values, which need not be UTF-8
        timeout=120,
    )
    errors, warnings = [], []
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        line = line.strip()
        if line.startswith("Error"):
            errors.append(line)
        elif line.startswith("Warning"):
            warnings.append(line)
    return errors, warnings


def validate_dataset(ds: Dataset) -> tuple[list[str], list[str]]:
    """Write ``ds`` to a temporary file and run :func:`run_dciodvfy` on it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "object.dcm"
        ds.save_as(path, enforce_file_format=True)
        return run_dciodvfy(path)


def needs_dciodvfy(test: Callable[..., None]) -> Callable[..., None]:
    """Decorate a test that runs dciodvfy: marked ``integration``; skipped when dciodvfy is
    absent, failed instead under CI."""
    test = pytest.mark.integration(test)
    marked = skip_unless(dciodvfy_available(), "dciodvfy not installed")(test)
    return marked  # type: ignore[no-any-return]
