"""The radiologist workspace's read API (issue 29 items 1-2): GET /api/jobs/{id}/workspace and
each frame at full resolution / its Grad-CAM as PNG.

The job is a cine clip processed by the real worker (threshold model: lesion = bright pixels)
with its lesion only on frame 6, past the first frames the pipeline keeps result rows for;
the workspace must still show that frame's AI outline, read from the AI SEG.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmread
from sqlalchemy import Engine, select

from dicom_io.polygons import Polygon, polygons_to_mask
from dicom_io.read import iter_frames
from service.config import Settings
from service.pipeline import PREVIEW_FRAMES
from service.web.app import create_app
from service.worker import ModelProvider, work_once
from storage.db import session_scope
from storage.files import DataDir
from storage.instances import ReceivedInstance, record_instance
from storage.models import Instance, Job, Role
from tests.factories import CANARY, lesion_mask, make_us_image
from tests.service.test_pipeline import ThresholdModel
from tests.service.test_web import bearer, make_settings, make_token
from tests.service.test_worker import _receive, _settings

FRAMES = 8
LESION_FRAME = 6  # 1-based; the pipeline keeps result rows for frames 1-4 only
CENTER = (120, 170)
RADII = (30, 45)


@dataclass
class _Runtime:
    """What the web app reads of service.runtime.Runtime, with a real ModelProvider."""

    settings: object
    engine: Engine
    data_dir: DataDir
    models: ModelProvider | None
    listener_up: bool = True


@dataclass
class Rig:
    job_id: int
    sop_instance_uid: str
    source: Path
    model: ThresholdModel
    app_settings: Settings
    runtime: _Runtime


@pytest.fixture()
def rig(engine: Engine, data_dir: DataDir, db_url: str, tmp_path: Path) -> Rig:
    """A done cine-clip job, processed by the worker, and the app's settings (Paris time)."""
    assert LESION_FRAME > PREVIEW_FRAMES
    model = ThresholdModel()
    models = ModelProvider(None, "cpu", None, model=model)
    job_id = _receive(
        engine,
        data_dir,
        tmp_path,
        frames=FRAMES,
        lesion=CENTER,
        lesion_radii=RADII,
        lesion_frames=[LESION_FRAME - 1],
    )
    work_once(_settings(destinations=False), engine, data_dir, models, "host:0")
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == "done"
        instance = s.scalars(select(Instance)).one()
        uid, source = instance.sop_instance_uid, Path(instance.path)
    settings = make_settings(data_dir, database_url=db_url).model_copy(deep=True)
    settings.web.time_zone = "Europe/Paris"
    return Rig(job_id, uid, source, model, settings, _Runtime(settings, engine, data_dir, models))


def _client(rig: Rig, engine: Engine, role: Role = Role.ADMIN, runtime: Any = "rig") -> TestClient:
    app = create_app(rig.app_settings, rig.runtime if runtime == "rig" else runtime)
    return TestClient(app, headers=bearer(make_token(engine, role)))


def _png(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def test_workspace_cine_job_every_lesion_frame_outlined_from_the_seg(
    rig: Rig, engine: Engine
) -> None:
    with _client(rig, engine) as client:
        answer = client.get(f"/api/jobs/{rig.job_id}/workspace")
    assert answer.status_code == 200, answer.text
    ws = answer.json()
    assert ws["job_id"] == rig.job_id and ws["trial"] is False
    assert ws["predicted_class"] == "malignant"
    assert ws["study"]["patient_id"] == CANARY["PatientID"]
    assert ws["study"]["study_date"] == "2026-11-23"
    assert ws["study"]["body_part"] == "BREAST"
    assert ws["study"]["manufacturer"] == "Canary Ultrasound Inc."
    assert ws["study"]["model_name"] == "Canary 1"
    assert ws["study"]["laterality"] == "L"
    (image,) = ws["images"]
    assert image["sop_instance_uid"] == rig.sop_instance_uid
    assert (image["rows"], image["columns"], image["frames"]) == (256, 320, FRAMES)
    assert image["lesion_frames"] == [LESION_FRAME]
    assert image["pixel_spacing_mm"] == [pytest.approx(0.1), pytest.approx(0.1)]
    by_frame = {r["frame"]: r for r in image["results"]}
    # Frames 1-4 have result rows (class, probabilities), without lesion; frame 6 its outline.
    assert set(by_frame) == {*range(1, PREVIEW_FRAMES + 1), LESION_FRAME}
    assert all(by_frame[f]["lesions"] == [] for f in range(1, PREVIEW_FRAMES + 1))
    assert by_frame[1]["predicted_class"] == "normal"
    # Every frame's class is recorded, the lesion frame's too (past the dashboard rows).
    scores = image["frame_probabilities"]
    assert len(scores) == FRAMES
    model = ThresholdModel()
    lesion_p = model.predict([np.ones((4, 4), dtype=np.float32)])[0].probabilities
    plain_p = model.predict([np.zeros((4, 4), dtype=np.float32)])[0].probabilities
    for frame, triple in enumerate(scores, start=1):
        expected = lesion_p if frame == LESION_FRAME else plain_p
        assert triple == [expected["normal"], expected["benign"], expected["malignant"]]
    assert by_frame[LESION_FRAME]["predicted_class"] == "malignant"
    assert by_frame[LESION_FRAME]["probabilities"]["malignant"] == lesion_p["malignant"]
    assert f"deciding frame (image 1, frame {LESION_FRAME})" in ws["class_rule"]
    (outline,) = by_frame[LESION_FRAME]["lesions"]
    drawn = polygons_to_mask([Polygon(tuple((x, y) for x, y in outline))], (256, 320)).astype(bool)
    truth = lesion_mask(256, 320, CENTER, RADII)
    iou = (drawn & truth).sum() / (drawn | truth).sum()
    assert iou > 0.95, iou
    assert image["frame_url"] == (
        f"/api/jobs/{rig.job_id}/images/{rig.sop_instance_uid}/frames/{{frame}}.png"
    )
    assert image["cam_url"].endswith("/cam/{frame}.png")
    assert "most suspicious frame" in ws["class_rule"]
    assert f"{FRAMES} frames in 1 image" in ws["class_rule"]
    assert "classed malignant" in ws["class_rule"]
    # Times in the site's zone (Europe/Paris: CET in November, CEST in summer).
    assert ws["time_zone"] == "Europe/Paris"
    assert ws["times"]["received"].endswith((" CET", " CEST"))
    assert set(ws["times"]) >= {"received", "finished"}
    assert ws["can_edit"] is True and ws["review_url"] == f"/api/jobs/{rig.job_id}/review"
    assert ws["csrf_token"] is None  # a bearer token needs none; a session gets its own


def test_workspace_roles_viewer_reads_without_edit_radiologist_edits(
    rig: Rig, engine: Engine
) -> None:
    with _client(rig, engine, Role.VIEWER) as client:
        viewer = client.get(f"/api/jobs/{rig.job_id}/workspace").json()
    with _client(rig, engine, Role.RADIOLOGIST) as client:
        radiologist = client.get(f"/api/jobs/{rig.job_id}/workspace").json()
    assert viewer["can_edit"] is False and viewer["images"][0]["lesion_frames"] == [LESION_FRAME]
    assert radiologist["can_edit"] is True
    app = create_app(rig.app_settings, rig.runtime)
    with TestClient(app) as anonymous:
        assert anonymous.get(f"/api/jobs/{rig.job_id}/workspace").status_code == 401
        frame_url = f"/api/jobs/{rig.job_id}/images/{rig.sop_instance_uid}/frames/1.png"
        assert anonymous.get(frame_url).status_code == 401


def test_workspace_job_not_done_cannot_be_edited(rig: Rig, engine: Engine) -> None:
    with session_scope(engine) as s:
        job = s.get(Job, rig.job_id)
        assert job is not None
        job.state = "exporting"
    with _client(rig, engine, Role.RADIOLOGIST) as client:
        ws = client.get(f"/api/jobs/{rig.job_id}/workspace").json()
    assert ws["can_edit"] is False and ws["images"]


def test_workspace_missing_job_is_404(rig: Rig, engine: Engine) -> None:
    with _client(rig, engine) as client:
        answer = client.get(f"/api/jobs/{rig.job_id + 99}/workspace")
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"


def test_frame_png_full_resolution_equals_decoded_frame_and_is_cached(
    rig: Rig, engine: Engine, data_dir: DataDir
) -> None:
    url = f"/api/jobs/{rig.job_id}/images/{rig.sop_instance_uid}/frames/{LESION_FRAME}.png"
    with _client(rig, engine, Role.VIEWER) as client:
        answer = client.get(url)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        pixels = _png(answer.content)
        again = client.get(url)
    assert pixels.shape == (256, 320) and pixels.dtype == np.uint8  # full size, grey
    decoded = {
        n: p
        for numbers, batch in iter_frames(rig.source)
        for n, p in zip(numbers, batch, strict=True)
    }
    expected = np.clip(decoded[LESION_FRAME] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(pixels, expected)
    assert pixels[CENTER] > 200 and _png(client_frame(rig, engine, 1))[CENTER] < 120
    cache = data_dir.outputs / str(rig.job_id) / "preview"
    # The whole decoded batch is cached at once: scrubbing the clip reads files.
    assert {p.name for p in cache.glob("full_*.png")} == {
        f"full_001_{n:05d}.png" for n in range(1, FRAMES + 1)
    }
    assert again.content == answer.content


def client_frame(rig: Rig, engine: Engine, frame: int) -> bytes:
    with _client(rig, engine, Role.VIEWER) as client:
        answer = client.get(
            f"/api/jobs/{rig.job_id}/images/{rig.sop_instance_uid}/frames/{frame}.png"
        )
    assert answer.status_code == 200
    return answer.content


def test_frame_png_other_jobs_image_bad_uid_or_frame_is_404(
    rig: Rig, engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    # A second study with its own job and image: its UID is not an image of the first job.
    other = make_us_image(tmp_path / "other.dcm")
    other_job = store_study(engine, data_dir, [other])
    other_uid = str(dcmread(other, stop_before_pixels=True).SOPInstanceUID)
    assert other_job != rig.job_id
    base = f"/api/jobs/{rig.job_id}/images"
    with _client(rig, engine) as client:
        for url, reason in (
            (f"{base}/{other_uid}/frames/1.png", "no such image in this job"),
            (f"{base}/{other_uid}/cam/1.png", "no such image in this job"),
            (f"{base}/1.2.3.4/frames/1.png", "no such image in this job"),
            (f"{base}/..%2F..%2Fetc/frames/1.png", None),
            (f"{base}/{rig.sop_instance_uid}/frames/{FRAMES + 1}.png", "no such frame"),
            (f"/api/jobs/{rig.job_id + 99}/images/{rig.sop_instance_uid}/frames/1.png", None),
        ):
            answer = client.get(url)
            assert answer.status_code == 404, (url, answer.status_code)
            if reason:
                assert reason in answer.json()["detail"]
        assert client.get(f"{base}/{rig.sop_instance_uid}/frames/0.png").status_code == 422


def test_cam_png_made_once_with_model_and_404_without(
    rig: Rig, engine: Engine, data_dir: DataDir
) -> None:
    url = f"/api/jobs/{rig.job_id}/images/{rig.sop_instance_uid}/cam/{LESION_FRAME}.png"
    calls = rig.model.cam_calls
    with _client(rig, engine, Role.VIEWER) as client:
        first = client.get(url)
        second = client.get(url)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert rig.model.cam_calls == calls + 1  # the second answer came from the cache
    assert second.content == first.content
    rgb = _png(first.content)
    assert rgb.shape[:2] == (256, 320)
    # The threshold model's "CAM" is the image itself: hot (red) over the bright lesion.
    assert rgb[CENTER][0] > rgb[CENTER][2] + 60
    without = _Runtime(rig.app_settings, engine, data_dir, None)
    with _client(rig, engine, Role.VIEWER, runtime=without) as client:
        ws = client.get(f"/api/jobs/{rig.job_id}/workspace").json()
        missing = client.get(url.replace(f"/{LESION_FRAME}.png", "/2.png"))
    assert ws["images"][0]["cam_url"] is None and missing.status_code == 404


def test_workspace_lists_other_jobs_of_the_same_study(rig: Rig, engine: Engine) -> None:
    with session_scope(engine) as s:
        job = s.get(Job, rig.job_id)
        assert job is not None
        s.add(Job(study_id=job.study_id, state="waiting"))
    with _client(rig, engine) as client:
        ws = client.get(f"/api/jobs/{rig.job_id}/workspace").json()
    (related,) = ws["related_jobs"]
    assert related["id"] != rig.job_id and related["state"] == "waiting"
    assert related["url"] == f"/jobs/{related['id']}"
    assert related["created"].endswith((" CET", " CEST"))


def test_time_zone_unknown_name_refused_with_message() -> None:
    from service.config import load_settings

    with pytest.raises(Exception, match="not an IANA time zone name"):
        load_settings(None, web={"time_zone": "Mars/Olympus_Mons"})
    assert load_settings(None).web.time_zone == "UTC"


def test_seg_read_for_outlines_is_the_ai_seg(rig: Rig, engine: Engine) -> None:
    """The outlines come from the job's AI SEG (AUTOMATIC), whose frame 6 holds the lesion."""
    from storage.models import Output

    with session_scope(engine) as s:
        (path,) = s.scalars(
            select(Output.path).where(Output.job_id == rig.job_id, Output.kind == "seg")
        ).all()
    seg = dcmread(path)
    assert {str(i.SegmentAlgorithmType) for i in seg.SegmentSequence} == {"AUTOMATIC"}
    assert int(seg.NumberOfFrames) == 1


def test_class_rule_states_when_the_class_followed_the_outlines_or_none_was_given() -> None:
    from service.web.workspace import class_rule

    probabilities = {"normal": 0.55, "benign": 0.30, "malignant": 0.15}
    followed = Job(state="done", predicted_class="benign", probabilities=probabilities)
    text = class_rule(followed, [])
    assert "most probably normal (55.0 %)" in text and "class given is benign" in text
    plain = Job(state="done", predicted_class="normal", probabilities=probabilities)
    assert "is classed normal." in class_rule(plain, [])
    outside = Job(state="done", predicted_class=None, probabilities=None)
    assert "within the model's scope" in class_rule(outside, [])
    running = Job(state="running", predicted_class=None, probabilities=None)
    assert class_rule(running, []).startswith("The study class is the class of its most")


def store_study(engine: Engine, data_dir: DataDir, sources: list[Path]) -> int:
    """Store files of one study as the SCP does and queue its job; returns the job id."""
    from storage.queue import process_now

    with session_scope(engine) as s:
        for src in sources:
            ds = dcmread(src, stop_before_pixels=True)
            study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
            path = data_dir.incoming_path(study, series, ds.SOPInstanceUID)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(src.read_bytes())
            record_instance(
                s,
                ReceivedInstance(
                    study_instance_uid=study,
                    series_instance_uid=series,
                    sop_instance_uid=ds.SOPInstanceUID,
                    sop_class_uid=ds.SOPClassUID,
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    path=str(path),
                    size_bytes=path.stat().st_size,
                ),
            )
        job_id = s.scalars(select(Job.id).order_by(Job.id.desc())).first()
        assert job_id is not None
        process_now(s, job_id)
    return job_id


def two_image_study(folder: Path) -> list[Path]:
    """A single-frame image (left) and a 5-frame clip (right, lesion on frames 2-3)."""
    study, series = "1.2.826.0.1.3680043.8.498.77", "1.2.826.0.1.3680043.8.498.78"
    folder.mkdir(parents=True, exist_ok=True)
    return [
        make_us_image(folder / "a.dcm", study_instance_uid=study, series_instance_uid=series),
        make_us_image(
            folder / "b.dcm",
            study_instance_uid=study,
            series_instance_uid=series,
            frames=5,
            lesion_frames=[1, 2],
            laterality="R",
        ),
    ]


def test_workspace_two_images_of_one_study_single_frame_and_clip(
    engine: Engine, data_dir: DataDir, db_url: str, tmp_path: Path
) -> None:
    job_id = store_study(engine, data_dir, two_image_study(tmp_path))
    models = ModelProvider(None, "cpu", None, model=ThresholdModel())
    work_once(_settings(destinations=False), engine, data_dir, models, "host:0")
    app = create_app(make_settings(data_dir, database_url=db_url))
    with TestClient(app, headers=bearer(make_token(engine))) as client:
        ws = client.get(f"/api/jobs/{job_id}/workspace").json()
        images = ws["images"]
        assert [i["index"] for i in images] == [1, 2]
        by_frames = {i["frames"]: i for i in images}
        assert set(by_frames) == {1, 5}
        assert by_frames[1]["lesion_frames"] == [1]
        assert by_frames[5]["lesion_frames"] == [2, 3]  # 0-based [1, 2] in the factory
        assert ws["study"]["laterality"] == "B"  # one left image, one right
        assert "6 frames in 2 images" in ws["class_rule"]
        for image in images:
            url = image["frame_url"].replace("{frame}", str(image["frames"]))
            assert client.get(url).status_code == 200


def test_workspace_outlines_cached_for_their_segs_and_remade_when_broken(
    rig: Rig, engine: Engine, data_dir: DataDir
) -> None:
    cache = data_dir.outputs / str(rig.job_id) / "preview" / "outlines.json"
    with _client(rig, engine) as client:
        first = client.get(f"/api/jobs/{rig.job_id}/workspace").json()
        assert cache.is_file() and oct(cache.stat().st_mode & 0o777) == "0o600"
        stored = json.loads(cache.read_text())
        assert list(stored["outlines"]) == [f"{rig.sop_instance_uid}/{LESION_FRAME}"]
        # A cache for other SEGs (or a broken file) is not believed: the outlines are traced.
        cache.write_text(
            json.dumps(
                {
                    "segs": "1.2.3",
                    "outlines": {
                        f"{rig.sop_instance_uid}/{LESION_FRAME}": [[[0, 0], [1, 0], [1, 1]]]
                    },
                }
            )
        )
        second = client.get(f"/api/jobs/{rig.job_id}/workspace").json()
        cache.write_text("{not json")
        third = client.get(f"/api/jobs/{rig.job_id}/workspace").json()
    for later in (second, third):
        assert later["images"][0]["results"] == first["images"][0]["results"]
    assert json.loads(cache.read_text()) == stored
