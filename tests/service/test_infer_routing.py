"""`wecare infer` says "not analysed" for non-breast files, as the service does (issue 32)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from service.cli import app
from tests.dicom_io.test_routing import non_breast_files
from tests.factories import make_us_image


def test_infer_non_breast_real_files_not_analysed_breast_analysed(tmp_path: Path) -> None:
    breast = make_us_image(tmp_path / "breast.dcm", rows=96, columns=128)
    files = [*non_breast_files(), breast]
    args = ["infer", *map(str, files), "--out", str(tmp_path / "out"), "--no-explain"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    by_file: dict[str, list[dict]] = {}
    for line in lines:
        if "file" in line:  # the study lines; a last line sums up
            by_file.setdefault(line["file"], []).append(line)
    for path in files[:-1]:
        (line,) = by_file[path.name][:1]
        assert "predicted_class" not in line, path.name
        assert line["not_analysed"].split(":")[0] in ("not_breast", "no_body_part"), line
    assert by_file["breast.dcm"][0]["predicted_class"] in ("normal", "benign", "malignant")


def test_infer_any_body_part_flag_analyses_echo(tmp_path: Path) -> None:
    echo = next(p for p in non_breast_files() if p.name == "US1_UNCR.dcm")
    args = ["infer", str(echo), "--out", str(tmp_path / "out"), "--no-explain", "--any-body-part"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(x) for x in result.output.splitlines() if x.startswith("{")][:1]
    assert "not_analysed" not in line and "predicted_class" in line
