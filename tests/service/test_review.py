"""The review API end to end in process: a real pipeline job (threshold model), then
POST /api/jobs/{id}/review; the corrected SEG and review SR are read back from disk.

Each test gets a fresh data directory and migrated SQLite database (tests/conftest.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Engine, select

from dicom_io import codes
from dicom_io.measure import mask_measurements
from dicom_io.polygons import Polygon, polygons_to_mask
from dicom_io.seg import seg_frame_mask
from inference.descriptors import describe_lesion
from service.config import Settings, load_settings
from service.web.app import create_app
from service.worker import ModelProvider, work_once
from storage.db import session_scope
from storage.files import DataDir
from storage.instances import ReceivedInstance, record_instance
from storage.models import AuditEvent, Job, JobState, OutboxItem, Output, Review, Role
from storage.queue import process_now
from tests.dciodvfy import run_dciodvfy
from tests.factories import make_us_image
from tests.service.test_auth import add_user, csrf_of, log_in
from tests.service.test_pipeline import ThresholdModel
from tests.service.test_web import FakeRuntime, bearer, make_token

#: Around the synthetic lesion (ellipse at row 128, column 160, radii 30 x 45 px).
OUTLINE = [[120.0, 100.0], [200.0, 100.0], [212.0, 128.0], [200.0, 156.0], [120.0, 156.0],
           [108.0, 128.0]]
MM = 0.1  # tests.factories default calibration (mm per pixel)


def receive(engine: Engine, data_dir: DataDir, path: Path, job_ids: set[int]) -> int:
    """Store a generated file as the SCP would and queue its (new) job; returns the job id."""
    ds = dcmread(path, stop_before_pixels=True)
    stored = data_dir.incoming_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(path.read_bytes())
    with session_scope(engine) as s:
        record_instance(
            s,
            ReceivedInstance(
                study_instance_uid=ds.StudyInstanceUID,
                series_instance_uid=ds.SeriesInstanceUID,
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=str(stored),
                size_bytes=stored.stat().st_size,
            ),
        )
        job_id = next(j for j in s.scalars(select(Job.id)) if j not in job_ids)
        process_now(s, job_id)
    return job_id


def settings_for(data_dir: DataDir, db_url: str) -> Settings:
    return load_settings(
        None,
        storage={"data_dir": str(data_dir.root), "min_free_mb": 0, "database_url": db_url},
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
    )


def run_job(engine: Engine, data_dir: DataDir, settings: Settings, path: Path,
            done: bool = True) -> int:
    """The pipeline on `path` (threshold model); the job marked done as after its export."""
    with session_scope(engine) as s:
        before = set(s.scalars(select(Job.id)))
    job_id = receive(engine, data_dir, path, before)
    models = ModelProvider(None, "cpu", None, model=ThresholdModel())
    assert work_once(settings, engine, data_dir, models, "host:0") == job_id
    if done:
        with session_scope(engine) as s:
            job = s.get(Job, job_id)
            assert job is not None and job.state == JobState.EXPORTING
            job.state = JobState.DONE
    return job_id


@pytest.fixture()
def settings(data_dir: DataDir, db_url: str) -> Settings:
    return settings_for(data_dir, db_url)


@pytest.fixture()
def app(settings: Settings, engine: Engine, data_dir: DataDir) -> FastAPI:
    return create_app(settings, FakeRuntime(settings=settings, engine=engine, data_dir=data_dir))


@pytest.fixture()
def radiologist(app: FastAPI, engine: Engine) -> Iterator[TestClient]:
    """A script acting as radiologist "rhea" (bearer token: no CSRF token needed)."""
    with TestClient(app, headers=bearer(make_token(engine, Role.RADIOLOGIST, "rhea"))) as c:
        yield c


def source_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def outputs(engine: Engine, job_id: int) -> list[tuple[str, str, str]]:
    with session_scope(engine) as s:
        return [
            (o.kind, o.sop_instance_uid, o.path)
            for o in s.scalars(select(Output).where(Output.job_id == job_id).order_by(Output.id))
        ]


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sr_items(sr: Dataset) -> list[Dataset]:
    """Every content item of an SR, depth first."""
    found, stack = [], list(sr.ContentSequence)
    while stack:
        item = stack.pop(0)
        found.append(item)
        stack[0:0] = list(item.get("ContentSequence", []))
    return found


def coded(items: list[Dataset], name: Any) -> list[str]:
    return [
        str(i.ConceptCodeSequence[0].CodeValue)
        for i in items
        if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == name.value
    ]


def numbers(items: list[Dataset], name: Any) -> list[float]:
    return [
        float(i.MeasuredValueSequence[0].NumericValue)
        for i in items
        if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == name.value
    ]


@pytest.fixture()
def single(
    tmp_path: Path, engine: Engine, data_dir: DataDir, settings: Settings
) -> tuple[int, Path]:
    path = make_us_image(tmp_path / "single.dcm")
    return run_job(engine, data_dir, settings, path), path


def test_edit_makes_new_seg_and_sr_ai_outputs_unchanged(
    radiologist: TestClient, engine: Engine, single: tuple[int, Path]
) -> None:
    job_id, path = single
    uid = source_uid(path)
    ai = outputs(engine, job_id)
    ai_digests = {o[1]: digest(o[2]) for o in ai}
    (ai_seg_uid,) = [o[1] for o in ai if o[0] == "seg"]
    (ai_sr_uid,) = [o[1] for o in ai if o[0] == "sr"]
    body = {"sop_instance_uid": uid, "action": "edit", "origin": "ai", "label": "benign",
            "frames": [{"frame": 1, "lesions": [OUTLINE]}]}
    answer = radiologist.post(f"/api/jobs/{job_id}/review", json=body)
    assert answer.status_code == 202, answer.text
    data = answer.json()
    assert data["duplicate"] is False
    assert data["seg_sop_instance_uid"] and data["sr_sop_instance_uid"]
    assert {o["kind"] for o in data["outputs"]} == {"seg", "sr"}
    assert all(o["destinations"] == ["pacs"] for o in data["outputs"])
    assert {data["seg_sop_instance_uid"], data["sr_sop_instance_uid"]}.isdisjoint(ai_digests)

    after = outputs(engine, job_id)
    assert {o[1]: digest(o[2]) for o in after if o[1] in ai_digests} == ai_digests
    paths = {o[1]: o[2] for o in after}
    seg_path, sr_path = paths[data["seg_sop_instance_uid"]], paths[data["sr_sop_instance_uid"]]
    for p in (seg_path, sr_path):
        errors, _ = run_dciodvfy(p)
        assert errors == [], p

    # The SEG: a new series, SEMIAUTOMATIC, by the reviewer, the edited outline rasterised.
    seg = hd.seg.segread(seg_path)
    ai_seg = dcmread(paths[ai_seg_uid])
    assert seg.SeriesInstanceUID != ai_seg.SeriesInstanceUID
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert str(seg.ContentCreatorName) == "rhea^"
    expected = polygons_to_mask([Polygon(tuple(map(tuple, OUTLINE)))], (256, 320)).astype(bool)
    mask = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[uid], segment_numbers=[1]
    )[0, :, :, 0].astype(bool)
    assert np.array_equal(mask, expected)
    assert not np.array_equal(mask, seg_frame_mask(ai_seg, uid))  # really the edit, not the AI's
    referenced = [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence]
    assert referenced == [str(dcmread(path).SeriesInstanceUID), ai_seg.SeriesInstanceUID]
    assert ai_seg_uid in {s.ReferencedSOPInstanceUID for s in seg.SourceImageSequence}

    # The SR: reviewer as person observer, the AI SR as predecessor, sizes of the edit.
    sr = dcmread(sr_path)
    report = hd.sr.srread(sr_path)
    assert report.SeriesInstanceUID != dcmread(paths[ai_sr_uid]).SeriesInstanceUID
    assert sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[
        0].ReferencedSOPInstanceUID == ai_sr_uid
    items = sr_items(sr)
    names = [str(i.PersonName) for i in items if i.ValueType == "PNAME"]
    assert names == ["rhea^"]
    area, long_axis, short_axis = mask_measurements(expected, MM, MM)
    assert numbers(items, codes.LONG_AXIS) == [round(long_axis, 2)]
    assert numbers(items, codes.SHORT_AXIS) == [round(short_axis, 2)]
    assert numbers(items, codes.AREA) == [round(area, 2)]
    assert coded(items, codes.REVIEW) == ["WCR-RV-CORRECT"]
    assert coded(items, codes.REVIEWER_CLASS) == [codes.CLASS_CODES["benign"].value]
    # BI-RADS words recomputed on the corrected outline, as the pipeline computes them.
    pixels = dcmread(path).pixel_array.astype(np.float32) / 255.0
    box = (slice(10, 256 - 11), slice(10, 320 - 11))
    found = describe_lesion(pixels[box], expected[box], MM, MM)
    assert found.shape is not None
    assert coded(items, codes.SHAPE) == [codes.SHAPE_CODES[found.shape].value]
    assert coded(items, codes.ECHO_PATTERN) == [codes.ECHO_PATTERN_CODES[found.echo_pattern].value]

    # Outbox rows for both new objects; one audit event naming reviewer, job and image.
    with session_scope(engine) as s:
        rows = s.scalars(
            select(OutboxItem).join(Output).where(
                Output.sop_instance_uid.in_([data["seg_sop_instance_uid"],
                                              data["sr_sop_instance_uid"]])
            )
        ).all()
        assert sorted(r.destination for r in rows) == ["pacs", "pacs"]
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "review")).all()
        assert len(events) == 1
        assert events[0].actor == "rhea" and events[0].target == f"job:{job_id}"
        assert uid in (events[0].detail or "")
        assert "CANARY" not in (events[0].detail or "")


def test_same_review_twice_makes_one_seg_and_one_sr(
    radiologist: TestClient, engine: Engine, single: tuple[int, Path]
) -> None:
    job_id, path = single
    body = {"sop_instance_uid": source_uid(path), "action": "edit", "origin": "ai",
            "frames": [{"frame": 1, "lesions": [OUTLINE]}]}
    first = radiologist.post(f"/api/jobs/{job_id}/review", json=body)
    second = radiologist.post(f"/api/jobs/{job_id}/review", json=body)
    assert first.status_code == second.status_code == 202
    assert second.json()["duplicate"] is True
    assert second.json()["review_id"] == first.json()["review_id"]
    assert second.json()["seg_sop_instance_uid"] == first.json()["seg_sop_instance_uid"]
    assert len(outputs(engine, job_id)) == 4  # AI SEG + SR, corrected SEG + review SR
    with session_scope(engine) as s:
        assert len(s.scalars(select(Review)).all()) == 1
    listed = radiologist.get(f"/api/jobs/{job_id}/reviews").json()
    assert listed["count"] == 1
    assert listed["data"][0]["frames"][0]["lesions"] == [OUTLINE]
    assert listed["data"][0]["reviewer"] == "rhea"


def test_scratch_outline_is_manual(
    radiologist: TestClient, single: tuple[int, Path], engine: Engine
) -> None:
    job_id, path = single
    body = {"sop_instance_uid": source_uid(path), "action": "edit", "origin": "scratch",
            "frames": [{"frame": 1, "lesions": [OUTLINE]}]}
    data = radiologist.post(f"/api/jobs/{job_id}/review", json=body).json()
    paths = {o[1]: o[2] for o in outputs(engine, job_id)}
    seg = dcmread(paths[data["seg_sop_instance_uid"]])
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    assert "SegmentAlgorithmName" not in seg.SegmentSequence[0]
    assert run_dciodvfy(paths[data["seg_sop_instance_uid"]])[0] == []
    items = sr_items(dcmread(paths[data["sr_sop_instance_uid"]]))
    assert coded(items, codes.REVIEW) == ["WCR-RV-DRAWN"]


def test_accept_without_outlines_keeps_ai_mask(
    radiologist: TestClient, single: tuple[int, Path], engine: Engine
) -> None:
    job_id, path = single
    uid = source_uid(path)
    answer = radiologist.post(f"/api/jobs/{job_id}/review",
                              json={"sop_instance_uid": uid, "action": "accept"})
    assert answer.status_code == 202, answer.text
    data = answer.json()
    paths = {o[1]: o[2] for o in outputs(engine, job_id)}
    (ai_seg_path,) = [o[2] for o in outputs(engine, job_id)[:2] if o[0] == "seg"]
    seg = dcmread(paths[data["seg_sop_instance_uid"]])
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert np.array_equal(seg_frame_mask(seg, uid), seg_frame_mask(dcmread(ai_seg_path), uid))
    items = sr_items(dcmread(paths[data["sr_sop_instance_uid"]]))
    assert coded(items, codes.REVIEW) == ["WCR-RV-ACCEPT"]
    assert len(numbers(items, codes.LONG_AXIS)) == 1


def test_reject_records_no_lesion_in_sr_and_makes_no_seg(
    radiologist: TestClient, single: tuple[int, Path], engine: Engine
) -> None:
    job_id, path = single
    answer = radiologist.post(f"/api/jobs/{job_id}/review",
                              json={"sop_instance_uid": source_uid(path), "action": "reject"})
    assert answer.status_code == 202, answer.text
    data = answer.json()
    assert data["seg_sop_instance_uid"] is None
    assert [o["kind"] for o in data["outputs"]] == ["sr"]
    sr_path = {o[1]: o[2] for o in outputs(engine, job_id)}[data["sr_sop_instance_uid"]]
    assert run_dciodvfy(sr_path)[0] == []
    items = sr_items(dcmread(sr_path))
    assert coded(items, codes.REVIEW) == ["WCR-RV-REJECT"]
    assert coded(items, codes.LESION_SEGMENTED) == [codes.NO.value]
    assert numbers(items, codes.LONG_AXIS) == []
    bad = radiologist.post(
        f"/api/jobs/{job_id}/review",
        json={"sop_instance_uid": source_uid(path), "action": "reject",
              "frames": [{"frame": 1, "lesions": [OUTLINE]}]},
    )
    assert bad.status_code == 422 and "no outline" in bad.json()["detail"]


def test_cine_review_holds_the_sent_frames_only(
    radiologist: TestClient, engine: Engine, data_dir: DataDir, settings: Settings, tmp_path: Path
) -> None:
    path = make_us_image(tmp_path / "cine.dcm", frames=6, lesion_frames=[1, 2])
    job_id = run_job(engine, data_dir, settings, path)
    uid = source_uid(path)
    body = {"sop_instance_uid": uid, "action": "edit", "origin": "ai",
            "frames": [{"frame": 5, "lesions": [OUTLINE]}, {"frame": 2, "lesions": []}]}
    answer = radiologist.post(f"/api/jobs/{job_id}/review", json=body)
    assert answer.status_code == 202, answer.text
    data = answer.json()
    paths = {o[1]: o[2] for o in outputs(engine, job_id)}
    seg_path = paths[data["seg_sop_instance_uid"]]
    assert run_dciodvfy(seg_path)[0] == []
    assert run_dciodvfy(paths[data["sr_sop_instance_uid"]])[0] == []
    seg = dcmread(seg_path)
    assert int(seg.NumberOfFrames) == 1
    expected = polygons_to_mask([Polygon(tuple(map(tuple, OUTLINE)))], (256, 320)).astype(bool)
    assert np.array_equal(seg_frame_mask(seg, uid, 5), expected)
    for other in (1, 2, 3, 4, 6):
        assert seg_frame_mask(seg, uid, other) is None
    items = sr_items(dcmread(paths[data["sr_sop_instance_uid"]]))
    frames = [i for i in items if i.ValueType == "IMAGE" and "ReferencedFrameNumber" in
              i.ReferencedSOPSequence[0] and i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
              == uid]
    assert {int(i.ReferencedSOPSequence[0].ReferencedFrameNumber) for i in frames} == {5}


def test_refusals_name_the_problem(
    radiologist: TestClient, engine: Engine, data_dir: DataDir, settings: Settings,
    tmp_path: Path, single: tuple[int, Path],
) -> None:
    job_id, path = single
    uid = source_uid(path)
    other_path = make_us_image(tmp_path / "other.dcm")
    other_job = run_job(engine, data_dir, settings, other_path)
    edit = {"action": "edit", "origin": "ai", "frames": [{"frame": 1, "lesions": [OUTLINE]}]}

    foreign = radiologist.post(f"/api/jobs/{job_id}/review",
                               json={**edit, "sop_instance_uid": source_uid(other_path)})
    assert foreign.status_code == 404
    assert f"not an image of job {job_id}" in foreign.json()["detail"]
    assert radiologist.post("/api/jobs/9999/review",
                            json={**edit, "sop_instance_uid": uid}).status_code == 404

    two_points = {**edit, "sop_instance_uid": uid,
                  "frames": [{"frame": 1, "lesions": [[[1, 1], [5, 5]]]}]}
    malformed = radiologist.post(f"/api/jobs/{job_id}/review", json=two_points)
    assert malformed.status_code == 422
    assert malformed.json()["detail"] == "frame 1: lesion 1: needs 3 to 4000 vertices, got 2"
    outside = {**edit, "sop_instance_uid": uid,
               "frames": [{"frame": 1, "lesions": [[[1, 1], [900, 5], [5, 9]]]}]}
    answer = radiologist.post(f"/api/jobs/{job_id}/review", json=outside)
    assert answer.status_code == 422 and "outside the 320x256 frame" in answer.json()["detail"]
    bad_frame = {**edit, "sop_instance_uid": uid, "frames": [{"frame": 2, "lesions": [OUTLINE]}]}
    assert radiologist.post(f"/api/jobs/{job_id}/review", json=bad_frame).status_code == 422
    wrong_action = radiologist.post(f"/api/jobs/{job_id}/review",
                                    json={**edit, "sop_instance_uid": uid, "action": "delete"})
    assert wrong_action.status_code == 422

    with session_scope(engine) as s:
        job = s.get(Job, other_job)
        assert job is not None
        job.state = JobState.EXPORTING
    busy = radiologist.post(f"/api/jobs/{other_job}/review",
                            json={**edit, "sop_instance_uid": source_uid(other_path)})
    assert busy.status_code == 409 and "exporting" in busy.json()["detail"]
    assert len(outputs(engine, job_id)) == 2  # nothing made by any refusal
    with session_scope(engine) as s:
        refused = s.scalars(select(AuditEvent).where(AuditEvent.action == "review_refused")).all()
        assert len(refused) == 6  # every domain refusal is audited (schema 422 is not)


def test_roles_and_csrf(
    app: FastAPI, engine: Engine, single: tuple[int, Path]
) -> None:
    job_id, path = single
    body = {"sop_instance_uid": source_uid(path), "action": "accept"}
    with TestClient(app, headers=bearer(make_token(engine, Role.VIEWER, "vic"))) as viewer:
        denied = viewer.post(f"/api/jobs/{job_id}/review", json=body)
        assert denied.status_code == 403 and "radiologist" in denied.json()["detail"]
        assert viewer.get(f"/api/jobs/{job_id}/reviews").status_code == 200
    add_user(engine, "rita", Role.RADIOLOGIST)
    with TestClient(app) as browser:
        assert log_in(browser, "rita").status_code == 303
        no_token = browser.post(f"/api/jobs/{job_id}/review", json=body)
        assert no_token.status_code == 403 and "CSRF" in no_token.json()["detail"]
        token = csrf_of(browser)
        ok = browser.post(f"/api/jobs/{job_id}/review", json=body,
                          headers={"x-csrf-token": token})
        assert ok.status_code == 202, ok.text
    with session_scope(engine) as s:
        (review,) = s.scalars(select(Review)).all()
        assert review.reviewer == "rita"


def test_migration_matches_the_review_model(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from storage.db import make_engine
    from storage.models import Base

    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert [d for d in diff if "reviews" in repr(d)] == []


def test_identical_review_racing_past_the_first_check_is_recorded_once(
    engine: Engine, data_dir: DataDir, single: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.review
    import storage.reviews
    from service.review import FrameOutlines, Reviewer, ReviewRequest, submit_review

    job_id, path = single
    request = ReviewRequest(source_uid(path), "edit", "ai", None, (FrameOutlines(1, [OUTLINE]),))

    def send() -> Any:
        with session_scope(engine) as s:
            return submit_review(s, job_id, request, Reviewer("rhea"),
                                 out_root=data_dir.outputs, destinations=["pacs"])

    first = send()
    # The second request passed both look-ups before the first committed: its insert of the
    # review meets the unique content key.
    real = storage.reviews.find_by_key
    calls: list[str] = []

    def late(session: Any, key: str) -> Any:
        calls.append(key)
        return None if len(calls) == 1 else real(session, key)

    monkeypatch.setattr(service.review, "find_by_key", lambda session, key: None)
    monkeypatch.setattr(storage.reviews, "find_by_key", late)
    second = send()
    assert len(calls) == 2
    assert second.duplicate and second.review_id == first.review_id
    assert second.seg_sop_instance_uid == first.seg_sop_instance_uid
    with session_scope(engine) as s:
        assert len(s.scalars(select(Review)).all()) == 1
        assert len(s.scalars(select(Output)).all()) == 4
        assert len(s.scalars(select(OutboxItem)).all()) == 4
        assert len(s.scalars(select(AuditEvent).where(AuditEvent.action == "review")).all()) == 2
