"""The exporter through a STOW-RS destination: a real Orthanc with its DICOMweb plugin and
HTTP basic authentication; `sent` only when Orthanc says it stored the instance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from service.config import Settings, load_settings
from service.exporter import export_once
from service.pipeline import process_study
from storage.db import session_scope
from storage.instances import ReceivedInstance, record_instance
from storage.models import Job, JobState, OutboxItem, OutboxState
from storage.outbox import add_output
from storage.queue import set_state
from tests.factories import make_us_image
from tests.integration.peers import Orthanc, orthanc
from tests.service.test_pipeline import ThresholdModel, _source

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    tmp = tmp_path_factory.mktemp("orthanc")
    with orthanc(tmp, {}, dicomweb=True, users={"wecare": "s3cret-pw"}) as server:
        yield server


def _settings(pacs: Orthanc, password: str) -> Settings:
    return load_settings(
        None,
        destinations=[
            {
                "kind": "stow-rs",
                "name": "web-pacs",
                "url": pacs.dicomweb_url,
                "auth": "basic",
                "username": "wecare",
                "password": password,
            }
        ],
        export={"timeout_seconds": 10, "max_attempts": 2, "base_backoff_seconds": 0.1},
    )


def _exporting_job(engine: Engine, tmp_path: Path) -> tuple[int, dict[str, str]]:
    """A job with the pipeline's real SEG and SR queued for `web-pacs`; (id, {uid: kind})."""
    src = make_us_image(tmp_path / "us.dcm")
    outputs = process_study([_source(src)], ThresholdModel(), tmp_path / "out").outputs
    with session_scope(engine) as s:
        record_instance(
            s,
            ReceivedInstance(
                study_instance_uid="1.2.3",
                series_instance_uid="1.2.3.4",
                sop_instance_uid="1.2.3.4.5",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=str(src),
                size_bytes=1,
            ),
        )
        job = s.scalars(select(Job)).one()
        for o in outputs:
            add_output(
                s,
                job,
                kind=o.kind,
                sop_instance_uid=o.sop_instance_uid,
                series_instance_uid=o.series_instance_uid,
                sop_class_uid=o.sop_class_uid,
                path=str(o.path),
                destinations=["web-pacs"],
            )
        set_state(s, job, JobState.EXPORTING)
        return job.id, {o.sop_instance_uid: o.kind for o in outputs}


def _held(pacs: Orthanc) -> dict[str, str]:
    """{SOP Instance UID: Modality} that Orthanc holds, from its REST API."""
    out = {}
    for instance_id in pacs.get("/instances"):
        tags = pacs.get(f"/instances/{instance_id}/simplified-tags")
        out[str(tags["SOPInstanceUID"])] = str(tags["Modality"])
    return out


def test_export_once_stow_rs_basic_auth_orthanc_stores_seg_and_sr_job_done(
    engine: Engine, tmp_path: Path, pacs: Orthanc
) -> None:
    job_id, made = _exporting_job(engine, tmp_path)
    assert export_once(_settings(pacs, "s3cret-pw"), engine) == 2
    with session_scope(engine) as s:
        rows = s.scalars(select(OutboxItem)).all()
        assert [(r.state, r.attempts, r.last_status, r.last_error) for r in rows] == [
            (OutboxState.SENT, 1, 0, None)
        ] * 2
        assert s.get(Job, job_id).state == JobState.DONE  # type: ignore[union-attr]
    held = _held(pacs)
    assert {uid: held.get(uid) for uid in made} == {u: k.upper() for u, k in made.items()}


def test_export_once_stow_rs_wrong_password_retried_then_failed_with_reason(
    engine: Engine, tmp_path: Path, pacs: Orthanc
) -> None:
    job_id, made = _exporting_job(engine, tmp_path)
    settings = _settings(pacs, "wrong-pw")
    # the error names the destination and its URL, so IT knows which server refused us
    reason = f"web-pacs ({pacs.dicomweb_url}): HTTP 401 (credentials refused): not stored"
    assert export_once(settings, engine) == 2
    with session_scope(engine) as s:
        rows = s.scalars(select(OutboxItem)).all()
        assert [(r.state, r.attempts, r.last_error) for r in rows] == [
            (OutboxState.PENDING, 1, reason)
        ] * 2
        for row in rows:
            row.next_try_at = row.created_at  # the backoff has passed
    assert export_once(settings, engine) == 2
    with session_scope(engine) as s:
        rows = s.scalars(select(OutboxItem)).all()
        assert [(r.state, r.attempts, r.last_error) for r in rows] == [
            (OutboxState.FAILED, 2, reason)
        ] * 2
        job = s.get(Job, job_id)
        assert job is not None and job.state == JobState.FAILED
        assert job.error_code == "export_failed" and f"({reason};" in (job.error or "")
    assert not set(made) & set(_held(pacs))
