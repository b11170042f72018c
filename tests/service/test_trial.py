"""Try it without a PACS (issue 29 item 4): POST /api/try and the trial's workspace JSON/PNGs.

Most tests run the transparent threshold model of test_pipeline (lesion = pixels brighter than
0.6), so the expected outline is known; one runs the bundled model on a BUSI image. Real DICOM
files come from pydicom-data (tests/realfiles.py).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmread
from sqlalchemy import Engine, select

from dicom_io.polygons import Polygon, polygons_to_mask
from service.config import Settings
from service.trial import TRIAL_TTL, load_trial, trials_root
from service.web.app import create_app
from service.worker import ModelProvider
from storage.db import session_scope
from storage.files import DataDir
from storage.models import AuditEvent, Instance, Job, Role
from tests.factories import CANARY, make_us_image
from tests.realfiles import pydicom_data_file
from tests.requirements import SHARED_DIR, require_or_skip
from tests.service.test_pipeline import ThresholdModel
from tests.service.test_web import FakeRuntime, bearer, make_token

MAX_UPLOAD_MB = 2


def make_app(data_dir: DataDir, db_url: str, engine: Engine, model: object) -> FastAPI:
    settings = Settings(
        storage={"data_dir": data_dir.root, "min_free_mb": 0, "database_url": db_url},
        web={"max_upload_mb": MAX_UPLOAD_MB, "time_zone": "Europe/Paris"},
    )
    models = ModelProvider(None, "cpu", None, model=model)
    runtime = FakeRuntime(settings=settings, engine=engine, data_dir=data_dir, models=models)  # type: ignore[arg-type]
    return create_app(settings, runtime)


@pytest.fixture()
def model() -> ThresholdModel:
    return ThresholdModel()


@pytest.fixture()
def app(data_dir: DataDir, db_url: str, engine: Engine, model: ThresholdModel) -> FastAPI:
    return make_app(data_dir, db_url, engine, model)


def client_for(app: FastAPI, engine: Engine, role: Role, user: str | None = None) -> TestClient:
    return TestClient(app, headers=bearer(make_token(engine, role, user=user)))


@pytest.fixture()
def radiologist(app: FastAPI, engine: Engine) -> Iterator[TestClient]:
    with client_for(app, engine, Role.RADIOLOGIST, "rad") as c:
        yield c


def picture(kind: str = "PNG") -> tuple[bytes, np.ndarray]:
    """A 200 x 300 grey picture with a bright ellipse (the threshold model's lesion)."""
    yy, xx = np.mgrid[0:200, 0:300]
    gray = np.full((200, 300), 60, dtype=np.uint8)
    lesion = ((yy - 90) / 30) ** 2 + ((xx - 160) / 50) ** 2 <= 1
    gray[lesion] = 230
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format=kind, **({"quality": 95} if kind == "JPEG" else {}))
    return buf.getvalue(), lesion


def upload(client: TestClient, data: bytes, name: str = "x.png", mime: str = "image/png"):  # type: ignore[no-untyped-def]
    return client.post("/api/try", files={"file": (name, data, mime)})


def audit_rows(engine: Engine) -> list[AuditEvent]:
    with session_scope(engine) as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def _outline_mask(result: dict, shape: tuple[int, int]) -> np.ndarray:
    polygons = [Polygon(tuple((x, y) for x, y in lesion)) for lesion in result["lesions"]]
    return polygons_to_mask(polygons, shape).astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ---- pictures ------------------------------------------------------------------------------


def test_png_upload_shows_outline_in_pixels_not_sent_anywhere(
    radiologist: TestClient, engine: Engine, data_dir: DataDir
) -> None:
    data, lesion = picture()

    response = upload(radiologist, data, name="SMITH_JANE_1950.png")

    assert response.status_code == 201, response.text
    body = response.json()
    trial_id = body["trial_id"]
    assert body["analysed"] is True and body["url"] == f"/try/{trial_id}"
    assert len(trial_id) == 32  # secrets.token_urlsafe(24): 192 random bits
    ws = radiologist.get(body["workspace_url"]).json()
    assert ws["trial"] is True and ws["job_id"] is None
    assert ws["review_url"] is None and ws["can_edit"] is False and ws["csrf_token"] is None
    assert ws["predicted_class"] == "malignant"  # the threshold model's class for a lesion
    assert ws["time_zone"] == "Europe/Paris" and ws["times"]["uploaded"].endswith(("CET", "CEST"))
    assert "pixels only" in ws["caution"]
    (image,) = ws["images"]
    assert (image["rows"], image["columns"], image["frames"]) == (200, 300, 1)
    assert image["pixel_spacing_mm"] is None and image["sop_instance_uid"] is None
    assert image["lesion_frames"] == [1]
    (result,) = image["results"]
    assert result["long_axis_mm"] is None  # no calibration: no mm
    assert result["descriptors"]["long_axis_px"] == pytest.approx(100, abs=3)
    assert _iou(_outline_mask(result, (200, 300)), lesion) > 0.95
    # Full-resolution frame: the upload's own grey values; Grad-CAM over it.
    frame = radiologist.get(image["frame_url"].format(frame=1))
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/png"
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(frame.content))), np.asarray(Image.open(io.BytesIO(data)))
    )
    cam = radiologist.get(image["cam_url"].format(frame=1))
    assert cam.status_code == 200
    assert Image.open(io.BytesIO(cam.content)).size == (300, 200)
    assert radiologist.get(image["frame_url"].format(frame=2)).status_code == 404
    # Nothing stored as an instance, no job; audited without the file's name.
    with session_scope(engine) as session:
        assert session.scalars(select(Instance)).first() is None
        assert session.scalars(select(Job)).first() is None
    events = audit_rows(engine)
    upload_event = next(e for e in events if e.action == "upload")
    assert (upload_event.actor, upload_event.detail) == ("rad", "trial png")
    assert upload_event.target.startswith("trial:") and trial_id not in upload_event.target
    assert not any("SMITH" in f"{e.target} {e.detail}" for e in events)
    viewed = {e.detail for e in events if e.action == "view_image"}
    assert {"trial frame 1", "trial frame 1 cam"} <= viewed
    assert (trials_root(data_dir) / trial_id / "trial.json").is_file()


def test_jpeg_raw_body_is_analysed(radiologist: TestClient) -> None:
    data, lesion = picture("JPEG")

    response = radiologist.post("/api/try", content=data, headers={"content-type": "image/jpeg"})

    assert response.status_code == 201, response.text
    ws = radiologist.get(response.json()["workspace_url"]).json()
    (result,) = ws["images"][0]["results"]
    assert _iou(_outline_mask(result, (200, 300)), lesion) > 0.9


def test_16_bit_and_transparent_pngs_are_read_as_their_grey_values(radiologist: TestClient) -> None:
    data, lesion = picture()
    gray = np.asarray(Image.open(io.BytesIO(data)))
    deep = io.BytesIO()
    Image.fromarray(gray.astype(np.uint16) * 257).save(deep, format="PNG")  # I;16
    rgba = io.BytesIO()
    alpha = np.full(gray.shape, 255, dtype=np.uint8)
    Image.fromarray(np.dstack([gray, gray, gray, alpha])).save(rgba, format="PNG")

    for encoded in (deep.getvalue(), rgba.getvalue()):
        response = upload(radiologist, encoded)
        assert response.status_code == 201, response.text
        ws = radiologist.get(response.json()["workspace_url"]).json()
        (result,) = ws["images"][0]["results"]
        assert _iou(_outline_mask(result, (200, 300)), lesion) > 0.95
        frame = radiologist.get(ws["images"][0]["frame_url"].format(frame=1))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(frame.content))), gray)


def test_picture_over_the_pixel_limit_is_refused_413(radiologist: TestClient) -> None:
    buf = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buf, format="PNG")  # 48 Mpx in about 50 kB

    response = upload(radiologist, buf.getvalue())

    assert response.status_code == 413
    assert "at most 40 million pixels" in response.json()["detail"]


def test_page_needs_radiologist_and_shows_drop_zone(app: FastAPI, engine: Engine) -> None:
    with (
        client_for(app, engine, Role.RADIOLOGIST) as rad,
        client_for(app, engine, Role.VIEWER) as v,
    ):
        page = rad.get("/try")
        assert page.status_code == 200
        assert 'id="drop-zone"' in page.text and "Not sent to any PACS" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert v.get("/try").status_code == 403
        # The nav link: for those who may use it.
        assert 'href="/try"' in page.text and 'href="/try"' not in v.get("/").text


def test_page_form_redirects_to_the_trial_page_or_says_not_analysed(
    radiologist: TestClient,
) -> None:
    data, _ = picture()

    sent = radiologist.post(
        "/try", files={"file": ("x.png", data, "image/png")}, follow_redirects=False
    )
    assert sent.status_code == 303 and sent.headers["location"].startswith("/try/")
    page = radiologist.get(sent.headers["location"])
    assert page.status_code == 200 and "Not sent to any PACS" in page.text
    assert f'data-src="/api/try/{sent.headers["location"][5:]}/workspace"' in page.text

    dicom = pydicom_data_file("US1_UNCR.dcm").read_bytes()
    refused = radiologist.post("/try", files={"file": ("us.dcm", dicom, "application/dicom")})
    assert refused.status_code == 200
    assert "Not analysed." in refused.text and "no_body_part:" in refused.text
    bad = radiologist.post("/try", files={"file": ("x.txt", b"hello", "text/plain")})
    assert bad.status_code == 415 and "not a PNG, JPEG or DICOM file" in bad.text


# ---- DICOM ---------------------------------------------------------------------------------


def test_real_non_breast_dicom_is_not_analysed_with_reason(
    radiologist: TestClient, data_dir: DataDir
) -> None:
    data = pydicom_data_file("US1_UNCR.dcm").read_bytes()

    response = upload(radiologist, data, "us.dcm", "application/dicom")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["analysed"] is False and body["trial_id"] is None
    assert body["not_analysed_reason"].startswith("no_body_part:")
    assert not any(trials_root(data_dir).iterdir())  # nothing kept


def test_real_dicom_labelled_breast_is_analysed_every_frame(
    radiologist: TestClient, tmp_path: Path
) -> None:
    ds = dcmread(pydicom_data_file("OBXXXX1A_2frame.dcm"))
    ds.BodyPartExamined = "BREAST"
    path = tmp_path / "breast.dcm"
    ds.save_as(path)

    response = upload(radiologist, path.read_bytes(), "breast.dcm", "application/dicom")

    assert response.status_code == 201, response.text
    ws = radiologist.get(response.json()["workspace_url"]).json()
    (image,) = ws["images"]
    assert image["frames"] == 2 and [r["frame"] for r in image["results"]] == [1, 2]
    assert image["sop_instance_uid"] == str(ds.SOPInstanceUID)
    assert ws["study"]["body_part"] == "BREAST"
    for number in (2, 1):  # the clip's last frame first: decoded and cached on the way
        frame = radiologist.get(image["frame_url"].format(frame=number))
        assert frame.status_code == 200
        assert Image.open(io.BytesIO(frame.content)).size == (ds.Columns, ds.Rows)


def test_calibrated_cine_clip_lesion_frames_and_mm(radiologist: TestClient, tmp_path: Path) -> None:
    path = make_us_image(tmp_path / "clip.dcm", frames=5, lesion_frames=[2, 3])  # 0-based

    response = upload(radiologist, path.read_bytes(), "clip.dcm", "application/dicom")

    assert response.status_code == 201, response.text
    ws = radiologist.get(response.json()["workspace_url"]).json()
    (image,) = ws["images"]
    assert image["lesion_frames"] == [3, 4]
    assert image["pixel_spacing_mm"] == pytest.approx([0.1, 0.1])
    results = {r["frame"]: r for r in image["results"]}
    assert sorted(results) == [1, 2, 3, 4, 5]
    assert results[1]["lesions"] == [] and results[3]["lesions"]
    # The factory's lesion: radii 30 x 45 px at 0.1 mm per pixel.
    assert results[3]["long_axis_mm"] == pytest.approx(9.0, abs=0.5)
    assert ws["study"]["patient_id"] == CANARY["PatientID"]  # the uploader's own file
    assert "frame 3" in ws["class_rule"]  # the first of the most suspicious frames decides
    strip = image["frame_probabilities"]  # the viewer's per-frame class strip
    assert len(strip) == 5 and strip[2][2] > strip[0][2]  # [normal, benign, malignant]


@dataclass(frozen=True)
class _ScopedPrediction:
    mask: np.ndarray
    probabilities: dict[str, float]
    predicted_class: str
    cam: np.ndarray | None
    in_scope: bool


class LesionOnlyInScope(ThresholdModel):
    """The threshold model with an in-distribution check that turns down every crop without
    a bright lesion (as inference.model empties their mask)."""

    def predict(  # type: ignore[override]
        self, images: Sequence[np.ndarray], with_cam: bool = False
    ) -> list[_ScopedPrediction]:
        out = []
        for p in super().predict(images, with_cam):
            in_scope = bool(p.mask.any())
            out.append(
                _ScopedPrediction(p.mask, p.probabilities, p.predicted_class, p.cam, in_scope)
            )
        return out


def test_frames_unlike_training_images_get_no_class(
    data_dir: DataDir, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    app = make_app(data_dir, db_url, engine, LesionOnlyInScope())
    clip = make_us_image(tmp_path / "clip.dcm", frames=5, lesion_frames=[2, 3])  # 0-based
    plain = make_us_image(tmp_path / "plain.dcm", lesion=None)
    with client_for(app, engine, Role.RADIOLOGIST) as rad:
        partly = upload(rad, clip.read_bytes(), "clip.dcm", "application/dicom")
        wholly = upload(rad, plain.read_bytes(), "plain.dcm", "application/dicom")
        assert partly.status_code == 201, partly.text
        ws = rad.get(partly.json()["workspace_url"]).json()

    results = {r["frame"]: r for r in ws["images"][0]["results"]}
    assert [f for f, r in results.items() if r["predicted_class"] is None] == [1, 2, 5]
    assert results[3]["predicted_class"] == "malignant" and results[3]["lesions"]
    assert "3 of 5 frames are unlike the images the model was trained on" in ws["caution"]
    assert ws["images"][0]["frame_probabilities"] is None  # a gap: no strip, as for a job
    assert wholly.status_code == 200
    assert wholly.json()["analysed"] is False
    assert wholly.json()["not_analysed_reason"].startswith("outside_scope:")


class AlwaysSuspicious(ThresholdModel):
    """The threshold model whose classifier calls every crop malignant, outline or not."""

    def predict(  # type: ignore[override]
        self, images: Sequence[np.ndarray], with_cam: bool = False
    ) -> list[Any]:
        calls = {"normal": 0.1, "benign": 0.2, "malignant": 0.7}
        return [
            replace(p, probabilities=calls, predicted_class="malignant")
            for p in super().predict(images, with_cam)
        ]


def test_class_follows_the_outlines_as_in_a_job(
    data_dir: DataDir, db_url: str, engine: Engine
) -> None:
    app = make_app(data_dir, db_url, engine, AlwaysSuspicious())
    plain = io.BytesIO()
    Image.fromarray(np.full((200, 300), 60, dtype=np.uint8)).save(plain, format="PNG")
    with client_for(app, engine, Role.RADIOLOGIST) as rad:
        response = upload(rad, plain.getvalue())
        ws = rad.get(response.json()["workspace_url"]).json()

    assert ws["predicted_class"] == "normal"  # no outline: normal (inference.study)
    assert ws["probabilities"]["malignant"] == pytest.approx(0.7)  # reported unchanged
    assert "the class follows the lesion outlines" in ws["class_rule"]
    assert "no lesion could be outlined" in ws["caution"]


def test_deflate_bomb_is_refused_413(radiologist: TestClient, engine: Engine) -> None:
    from tests.deflate_bombs import CHUNK, ct_bomb

    bomb = ct_bomb(300 * CHUNK)  # 300 MiB inflated, under the upload limit as sent

    response = upload(radiologist, bomb, "bomb.dcm", "application/dicom")

    assert response.status_code == 413
    assert "inflates beyond 256 MiB" in response.json()["detail"]
    assert audit_rows(engine)[-1].action == "upload_refused"


# ---- refusals ------------------------------------------------------------------------------


def test_non_image_file_is_refused_415_with_message(radiologist: TestClient) -> None:
    response = upload(radiologist, b"%PDF-1.7 a report, not an image", "report.pdf", "image/png")

    assert response.status_code == 415
    assert "not a PNG, JPEG or DICOM file" in response.json()["detail"]
    wrong_type = radiologist.post("/api/try", content=b"x", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415


def test_damaged_png_is_refused_422(radiologist: TestClient, data_dir: DataDir) -> None:
    data, _ = picture()

    response = upload(radiologist, data[: len(data) // 3])

    assert response.status_code == 422
    assert "could not be decoded" in response.json()["detail"]
    assert not any(trials_root(data_dir).iterdir())


def test_oversize_file_is_refused_413(radiologist: TestClient) -> None:
    body = b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_UPLOAD_MB * 1024 * 1024)

    multipart = upload(radiologist, body)
    raw = radiologist.post("/api/try", content=body, headers={"content-type": "image/png"})

    assert multipart.status_code == 413 and raw.status_code == 413
    assert raw.json()["detail"] == f"file larger than {MAX_UPLOAD_MB} MiB"


def test_viewer_role_is_refused_403(app: FastAPI, engine: Engine, radiologist: TestClient) -> None:
    data, _ = picture()
    ws_url = upload(radiologist, data).json()["workspace_url"]

    with client_for(app, engine, Role.VIEWER) as viewer:
        assert upload(viewer, data).status_code == 403
        assert viewer.get(ws_url).status_code == 403


def test_session_upload_needs_the_csrf_token(app: FastAPI, engine: Engine) -> None:
    from tests.service.test_auth import HTML, add_user, csrf_of, log_in

    add_user(engine, "rosa", Role.RADIOLOGIST)
    data, _ = picture()
    with TestClient(app) as browser:
        assert log_in(browser, "rosa").status_code == 303
        token = csrf_of(browser, "/try")
        files = {"file": ("x.png", data, "image/png")}
        forged = browser.post("/api/try", files=files, headers={"x-csrf-token": "forged"})
        bare_form = browser.post("/try", files=files, headers=HTML, follow_redirects=False)
        sent = browser.post(
            "/try", data={"csrf_token": token}, files=files, headers=HTML, follow_redirects=False
        )

    assert forged.status_code == 403 and bare_form.status_code == 403
    assert sent.status_code == 303 and sent.headers["location"].startswith("/try/")


def test_trial_readable_only_by_the_uploaders_role_or_above(app: FastAPI, engine: Engine) -> None:
    data, _ = picture()
    with (
        client_for(app, engine, Role.ADMIN, "boss") as admin,
        client_for(app, engine, Role.RADIOLOGIST, "rad2") as rad,
    ):
        by_admin = upload(admin, data).json()["workspace_url"]
        by_rad = upload(rad, data).json()["workspace_url"]
        assert rad.get(by_admin).status_code == 404  # not even told it exists
        assert admin.get(by_rad).status_code == 200
        assert rad.get("/api/try/" + "A" * 32 + "/workspace").status_code == 404


def _backdate(directory: Path) -> None:
    record = directory / "trial.json"
    stored = json.loads(record.read_text())
    stored["created"] = (datetime.now(UTC) - TRIAL_TTL - timedelta(minutes=1)).isoformat()
    record.write_text(json.dumps(stored))


def test_trial_expires_after_24_h_and_is_removed_on_access(
    radiologist: TestClient, data_dir: DataDir
) -> None:
    data, _ = picture()
    body = upload(radiologist, data).json()
    directory = trials_root(data_dir) / body["trial_id"]
    created = datetime.fromisoformat(json.loads((directory / "trial.json").read_text())["created"])
    assert load_trial(data_dir, body["trial_id"], now=created + TRIAL_TTL / 2) is not None
    assert load_trial(data_dir, body["trial_id"], now=created + TRIAL_TTL / 2) is not None

    _backdate(directory)
    response = radiologist.get(body["workspace_url"])
    frame = radiologist.get(body["workspace_url"].replace("workspace", "images/1/frames/1.png"))

    assert response.status_code == 404 and frame.status_code == 404
    assert "expired" in response.json()["detail"]
    assert not directory.exists()


def test_upload_sweeps_other_expired_trials(radiologist: TestClient, data_dir: DataDir) -> None:
    data, _ = picture()
    old = trials_root(data_dir) / upload(radiologist, data).json()["trial_id"]
    _backdate(old)

    fresh = trials_root(data_dir) / upload(radiologist, data).json()["trial_id"]

    assert not old.exists() and fresh.is_dir()


# ---- the bundled model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled_model() -> object:
    return ModelProvider(None, "cpu", None, compile_mode="off").get()


def test_bundled_model_on_busi_malignant_picture_finds_the_lesion(
    data_dir: DataDir, db_url: str, engine: Engine, bundled_model: object
) -> None:
    busi = SHARED_DIR / "datasets" / "busi" / "malignant"
    require_or_skip((busi / "malignant_1.png").is_file(), "BUSI dataset absent", shared=busi)
    image = busi / "malignant_1.png"
    truth = np.asarray(Image.open(busi / "malignant_1_mask.png")) > 0
    app = make_app(data_dir, db_url, engine, bundled_model)
    with client_for(app, engine, Role.RADIOLOGIST) as rad:
        response = upload(rad, image.read_bytes())
        assert response.status_code == 201, response.text
        ws = rad.get(response.json()["workspace_url"]).json()
    (result,) = ws["images"][0]["results"]
    assert ws["predicted_class"] in ("normal", "benign", "malignant")
    assert result["lesions"], "the bundled model found no lesion on a BUSI malignant image"
    assert _iou(_outline_mask(result, truth.shape), truth) > 0.5
