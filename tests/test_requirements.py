"""tests/requirements.py: a missing tool or file skips a test, and fails it when CI is set."""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.requirements as requirements

pytest_plugins = ["pytester"]

CASES = """
from pathlib import Path

from tests.requirements import require_or_skip, skip_unless

SHARED = Path({shared!r})


def test_call_missing():
    require_or_skip(False, "frobnicator not installed")


@skip_unless(False, "widget not installed")
def test_marker_missing():
    pass


@skip_unless(True, "present")
def test_marker_present():
    require_or_skip(True, "present too")


def test_shared_data_missing():
    require_or_skip(False, "datasets absent", shared=SHARED / "datasets")


def test_data_elsewhere_missing():
    require_or_skip(False, "datasets absent", shared=Path("/nowhere/datasets"))
"""


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None, shared: Path
) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(requirements, "SHARED_DIR", shared)
    # As tests/conftest.py does: the hooks that act on the `requires` marker.
    pytester.makeconftest("from tests.requirements import pytest_configure, pytest_runtest_setup")
    pytester.makepyfile(test_cases=CASES.format(shared=str(shared)))
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rsf")


@pytest.mark.parametrize("ci", [None, "", "0", "false"])
def test_require_or_skip_ci_unset_skips_with_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str | None
) -> None:
    result = _run(pytester, monkeypatch, ci, tmp_path / "shared")
    result.assert_outcomes(passed=1, skipped=4)
    result.stdout.fnmatch_lines(["*frobnicator not installed*", "*widget not installed*"])


def test_require_or_skip_ci_set_fails_naming_what_is_missing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()  # ../shared is beside the clone: its data must be there too
    result = _run(pytester, monkeypatch, "true", shared)
    result.assert_outcomes(passed=1, failed=3, errors=1, skipped=0)  # marker: fails at set-up
    result.stdout.fnmatch_lines_random(
        [
            "*frobnicator not installed (CI must provide it: see .ci/run)*",
            "*widget not installed (CI must provide it*",
            "*datasets absent (CI must provide it*",
        ]
    )


def test_require_or_skip_ci_set_no_shared_folder_skips_only_shared_data(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result = _run(pytester, monkeypatch, "1", tmp_path / "absent-shared")
    # Tools fail; data from ../shared skips (a fresh clone has none); data elsewhere fails.
    result.assert_outcomes(passed=1, failed=2, errors=1, skipped=1)
    result.stdout.fnmatch_lines(["*../shared is not beside this clone (allowed under CI)*"])
