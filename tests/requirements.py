"""What a test needs from its machine: skip when it is missing, FAIL when the env var CI is set.

CI installs every tool (`.ci/run`) and the test extra (pydicom-data, deid-data), so a missing
one there is a broken CI machine, not a reason to pass quietly. Use, in a test or fixture::

    require_or_skip(shutil.which("dciodvfy") is not None, "dciodvfy not installed")

or, on a test, a class or `pytestmark`::

    @skip_unless(shutil.which("chromium") is not None, "chromium not installed")

(the `requires` marker, acted on by `pytest_runtest_setup`, imported into tests/conftest.py).

The one exception: data in the team's `../shared` folder beside the checkout (the datasets,
the viewer-check tool). A fresh CI clone has no `../shared` next to it, so under CI a test
given `shared=<path under ../shared>` still skips when the whole `../shared` folder is absent
(reason says so). When `../shared` exists but the file is missing, or the path came from an
environment variable (WECARE_DATASETS, WECARE_VIEWER_CHECK), it fails under CI as any other.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

__all__ = [
    "SHARED_DIR",
    "in_ci",
    "pytest_configure",
    "pytest_runtest_setup",
    "require_file",
    "require_or_skip",
    "require_tool",
    "skip_unless",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The team's shared folder beside the checkout (datasets, tools); absent beside a CI clone.
SHARED_DIR = REPO_ROOT.parent / "shared"


def in_ci() -> bool:
    """True when the environment variable CI is set to anything but empty, 0 or false."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_or_skip(condition: object, reason: str, *, shared: Path | None = None) -> None:
    """Skip the calling test unless `condition`; under CI fail it instead.

    `shared`: the missing thing lives under `../shared`; under CI the test still skips when
    `../shared` itself is absent (a fresh clone), and says so."""
    if condition:
        return
    if in_ci():
        if shared is not None and _under_shared(shared) and not SHARED_DIR.exists():
            pytest.skip(f"{reason}; ../shared is not beside this clone (allowed under CI)")
        pytest.fail(f"{reason} (CI must provide it: see .ci/run)", pytrace=False)
    pytest.skip(reason)


def _under_shared(path: Path) -> bool:
    """True when `path` is the default location under ../shared (not set by a variable)."""
    try:
        Path(path).resolve().relative_to(SHARED_DIR.resolve())
    except ValueError:
        return False
    return True


def require_tool(binary: str) -> str:
    """The path of `binary` on PATH; skip (CI: fail) when it is not installed."""
    path = shutil.which(binary)
    require_or_skip(path is not None, f"{binary} not installed")
    assert path is not None
    return path


def require_file(path: Path, what: str, *, shared: bool = False) -> Path:
    """`path`, which must exist; skip (CI: fail) naming `what` when it does not."""
    require_or_skip(
        Path(path).exists(), f"{what} absent: {path}", shared=Path(path) if shared else None
    )
    return Path(path)


def skip_unless(
    condition: object, reason: str, *, shared: Path | None = None
) -> pytest.MarkDecorator:
    """A marker: the test skips unless `condition` (CI: fails), checked at set-up."""
    return pytest.mark.requires(bool(condition), reason, shared=shared)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(condition, reason): skip unless condition; fail under CI"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        require_or_skip(mark.args[0], mark.args[1], shared=mark.kwargs.get("shared"))
