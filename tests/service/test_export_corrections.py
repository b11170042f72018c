"""`wecare export-corrections OUT`: reviews of real pipeline jobs (threshold model) written as
a BUSI-layout folder that inference.data.discover reads."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from dicom_io.polygons import Polygon, polygons_to_mask
from inference.data import CLASSES, discover
from service.cli import app as cli_app
from service.config import Settings
from service.export_corrections import MANIFEST_COLUMNS, export_corrections
from service.review import FrameOutlines, Reviewer, ReviewRequest, submit_review
from storage.db import session_scope
from storage.files import DataDir
from storage.models import AuditEvent
from tests.factories import CANARY, make_us_dataset, write_dataset
from tests.service.test_review import OUTLINE, run_job, settings_for

SMALL = [[140.0, 115.0], [180.0, 115.0], [180.0, 140.0], [140.0, 140.0]]
OTHER_PATIENT = "OTHER-PID-7731"


def review(engine: Engine, data_dir: DataDir, job_id: int, uid: str, action: str,
           frames: list[tuple[int, list[list[list[float]]]]] = (), label: str | None = None,
           reviewer: str = "rhea") -> int:
    with session_scope(engine) as s:
        result = submit_review(
            s,
            job_id,
            ReviewRequest(uid, action, "ai", label,
                          tuple(FrameOutlines(n, lesions) for n, lesions in frames)),
            Reviewer(reviewer),
            out_root=data_dir.outputs,
            destinations=["pacs"],
        )
    return result.review_id


def outline_mask(outline: list[list[float]]) -> np.ndarray:
    return polygons_to_mask([Polygon(tuple(map(tuple, outline)))], (256, 320)).astype(bool)


@pytest.fixture()
def settings(data_dir: DataDir, db_url: str) -> Settings:
    return settings_for(data_dir, db_url)


@pytest.fixture()
def reviewed(engine: Engine, data_dir: DataDir, settings: Settings, tmp_path: Path) -> dict:
    """Three reviewed images: A edited twice (benign, then malignant smaller), B (another
    patient, cine) rejected, C accepted without a class (the AI's: malignant)."""
    a = write_dataset(make_us_dataset(), tmp_path / "a.dcm")
    cine = make_us_dataset(frames=4, lesion_frames=[1, 2])
    cine.PatientID = OTHER_PATIENT
    b = write_dataset(cine, tmp_path / "b.dcm")
    c = write_dataset(make_us_dataset(seed=3), tmp_path / "c.dcm")
    uids = {k: str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for k, p in (("a", a), ("b", b), ("c", c))}
    jobs = {k: run_job(engine, data_dir, settings, p) for k, p in (("a", a), ("b", b), ("c", c))}
    review(engine, data_dir, jobs["a"], uids["a"], "edit", [(1, [OUTLINE])], "benign")
    review(engine, data_dir, jobs["a"], uids["a"], "edit", [(1, [SMALL])], "malignant",
           reviewer="remy")
    review(engine, data_dir, jobs["b"], uids["b"], "reject")
    review(engine, data_dir, jobs["c"], uids["c"], "accept")
    return {"paths": {"a": a, "b": b, "c": c}, "uids": uids, "jobs": jobs}


def read_manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_export_writes_busi_layout_latest_review_wins(
    engine: Engine, reviewed: dict, tmp_path: Path
) -> None:
    out = tmp_path / "corrections"
    seen: list[tuple[int, int]] = []
    with session_scope(engine) as s:
        summary = export_corrections(s, out, progress=lambda d, t: seen.append((d, t)))
    assert summary.skipped == []
    rows = read_manifest(out)
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    # A: one row (the second review won), B: the two AI lesion frames, now normal, C: one.
    assert len(rows) == 4
    assert seen[-1] == (4, 4)
    by_label = {label: [r for r in rows if r["label"] == label] for label in CLASSES}
    assert len(by_label["malignant"]) == 2 and len(by_label["normal"]) == 2
    assert by_label["benign"] == []
    for row in rows:
        assert row["image"] == f"{row['label']}/{Path(row['image']).name}"
        assert row["mask"] == row["image"].removesuffix(".png") + "_mask.png"
        assert row["source"] == "corrections"
        image = np.asarray(Image.open(out / row["image"]))
        mask = np.asarray(Image.open(out / row["mask"]))
        assert image.dtype == np.uint8 and image.shape == (256, 320)
        assert set(np.unique(mask)) <= {0, 255}
        if row["label"] == "normal":
            assert not mask.any()
    # The edited image's mask is its latest outline; its pixels the decoded frame.
    a = dcmread(reviewed["paths"]["a"])
    edited = [r for r in by_label["malignant"]
              if np.array_equal(np.asarray(Image.open(out / r["mask"])) > 0, outline_mask(SMALL))]
    assert len(edited) == 1
    assert np.array_equal(np.asarray(Image.open(out / edited[0]["image"])), a.pixel_array)
    # Groups: integers, one per patient (A and C share the canary patient, B is another).
    groups = {r["group"] for r in rows}
    assert all(g.isdigit() for g in groups) and len(groups) == 2
    assert len({r["group"] for r in by_label["normal"]}) == 1
    # No patient name or ID in any file name or content.
    for path in out.rglob("*"):
        assert "CANARY" not in path.name
        if path.is_file():
            data = path.read_bytes()
            for secret in (CANARY["PatientID"], OTHER_PATIENT, "CANARY", "Wilhelmina"):
                assert secret.encode() not in data, path
    # What `wecare train --data-dir OUT` reads.
    samples = discover(out)
    assert len(samples) == 4
    assert sorted(CLASSES[s.label] for s in samples) == ["malignant", "malignant", "normal",
                                                         "normal"]
    assert {s.source for s in samples} == {"corrections"}
    assert all(Path(s.image).is_file() and Path(s.mask).is_file() for s in samples)
    assert len({s.group for s in samples}) == 2


def test_cli_export_corrections_shows_progress_and_audits(
    engine: Engine, reviewed: dict, settings: Settings, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WECARE_STORAGE__DATA_DIR", str(settings.storage.data_dir))
    monkeypatch.setenv("WECARE_STORAGE__DATABASE_URL", settings.storage.resolved_database_url())
    out = tmp_path / "out"
    result = CliRunner().invoke(cli_app, ["export-corrections", str(out)])
    assert result.exit_code == 0, result.output
    assert "exported 4/4 reviewed frames" in result.output
    assert "4 frames written" in result.output and "malignant 2, normal 2" in result.output
    assert len(read_manifest(out)) == 4
    with session_scope(engine) as s:
        events = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "export_corrections")
        ).all()
        assert len(events) == 1 and events[0].detail == "4 frames written, 0 skipped"


def test_lesion_without_any_class_is_left_out_with_a_reason(
    engine: Engine, data_dir: DataDir, settings: Settings, tmp_path: Path
) -> None:
    # The threshold model sees nothing in a dark image (class normal); the radiologist draws
    # a lesion but gives no class: not exported, and the summary says why.
    dark = make_us_dataset(lesion=None)
    path = write_dataset(dark, tmp_path / "dark.dcm")
    job_id = run_job(engine, data_dir, settings, path)
    review(engine, data_dir, job_id, str(dark.SOPInstanceUID), "edit", [(1, [OUTLINE])])
    with session_scope(engine) as s:
        summary = export_corrections(s, tmp_path / "out")
    assert summary.written == []
    assert len(summary.skipped) == 1 and "without a class" in summary.skipped[0]
    assert read_manifest(tmp_path / "out") == []
