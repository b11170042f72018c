"""Device caution end to end: the pipeline's SR carries it, the job page shows the SR's text."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy import Engine

from dicom_io.routing import DEVICE_CAUTION
from dicom_io.sr import sr_caution
from service.pipeline import process_study
from service.web.app import create_app
from service.worker import _LockedModel
from storage.db import session_scope
from storage.files import DataDir
from storage.models import JobState, Output
from tests.dciodvfy import needs_dciodvfy, run_dciodvfy
from tests.factories import make_us_image
from tests.service.test_pipeline import ThresholdModel, _outputs, _source
from tests.service.test_web import HTML, FakeRuntime, add_job, bearer, make_settings, make_token

GE_ONLY: list[dict[str, Any]] = [{"manufacturer": "GE", "models": ["LOGIQ E9"]}]


class ModelWithDevices(ThresholdModel):
    """The test model with metadata, as inference.model.WeCareModel has (model.json)."""

    def __init__(self, validated: list[dict[str, Any]]) -> None:
        super().__init__()
        self.meta = {"validated_devices": validated}


def _sr(tmp_path: Path, model: ThresholdModel, **image: Any) -> Path:
    path = make_us_image(tmp_path / "a.dcm", rows=128, columns=160, **image)
    (sr_path,) = _outputs(process_study([_source(path)], model, tmp_path / "out"), "sr")
    return sr_path


@needs_dciodvfy
def test_process_study_other_device_sr_cautioned_and_valid(tmp_path: Path) -> None:
    sr_path = _sr(tmp_path, ModelWithDevices(GE_ONLY))  # factory: "Canary Ultrasound Inc."
    errors, _ = run_dciodvfy(sr_path)
    assert errors == []
    assert sr_caution(dcmread(sr_path)) == DEVICE_CAUTION


@pytest.mark.parametrize(
    "model",
    [ModelWithDevices([{"manufacturer": "Canary", "models": ["canary-1"]}]), ThresholdModel()],
    ids=["validated-device", "no-device-list"],
)
def test_process_study_validated_or_unlisted_no_caution(
    tmp_path: Path, model: ThresholdModel
) -> None:
    assert sr_caution(dcmread(_sr(tmp_path, model))) is None


def test_job_page_shows_caution_of_its_sr(
    engine: Engine, data_dir: DataDir, db_url: str, tmp_path: Path
) -> None:
    sr_path = _sr(tmp_path, ModelWithDevices(GE_ONLY))
    cautioned = add_job(engine, state=JobState.DONE)
    plain = add_job(engine, state=JobState.DONE, study_uid="1.2.826.0.1.3680043.8.498.6789")
    with session_scope(engine) as session:
        session.add(
            Output(
                job_id=cautioned,
                kind="sr",
                sop_instance_uid="2.25.4242",
                series_instance_uid="2.25.4243",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                path=str(sr_path),
            )
        )
    settings = make_settings(data_dir, database_url=db_url)
    app = create_app(settings, FakeRuntime(settings=settings, engine=engine, data_dir=data_dir))
    with TestClient(app, headers=bearer(make_token(engine))) as client:
        page = client.get(f"/jobs/{cautioned}", headers=HTML).text
        other = client.get(f"/jobs/{plain}", headers=HTML).text
    assert 'id="device-caution"' in page and DEVICE_CAUTION in page
    assert 'id="device-caution"' not in other


def test_process_study_worker_locked_model_keeps_device_list(tmp_path: Path) -> None:
    # The worker wraps the shared model (one predict at a time): the list must come through.
    model = _LockedModel(ModelWithDevices(GE_ONLY), threading.Lock())
    assert sr_caution(dcmread(_sr(tmp_path, model))) == DEVICE_CAUTION  # type: ignore[arg-type]
