"""Late images and re-runs against a real Orthanc (default settings: it never overwrites).

A study is sent, processed and delivered; a late image of it arrives; the new job analyses
only that image. Orthanc, queried over its REST API, then holds one SEG per image (none twice),
two SRs with different UIDs, the second naming the first as its predecessor, each byte for
byte what WeCare stored; WeCare's job rows list exactly those outputs as sent. Before (output
UIDs from the series / study alone): the late image re-analysed the first one, the new SR came
under the old SR's UID with new content and Orthanc kept the old one while the dashboard said
"sent".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

from service.config import load_settings
from service.exporter import export_once
from service.web.schemas import job_detail
from service.worker import ModelProvider, work_once
from storage.db import session_scope
from storage.files import DataDir
from storage.instances import ReceivedInstance, record_instance
from storage.models import Job, JobState, Output, utcnow
from storage.queue import process_now
from tests.dciodvfy import run_dciodvfy
from tests.factories import make_us_image
from tests.integration.peers import orthanc
from tests.service.test_pipeline import ThresholdModel

pytestmark = pytest.mark.integration


def _receive(engine: Engine, data_dir: DataDir, path: Path) -> int:
    """Record `path` as the listener would and queue its study's waiting job."""
    ds = dcmread(path, stop_before_pixels=True)
    target = data_dir.incoming_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(path.read_bytes())
    with session_scope(engine) as s:
        record_instance(
            s,
            ReceivedInstance(
                study_instance_uid=str(ds.StudyInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                path=str(target),
                size_bytes=target.stat().st_size,
            ),
        )
        job_id = s.scalars(select(Job.id).where(Job.state == JobState.WAITING)).one()
        process_now(s, job_id)
    return job_id


def _process_and_deliver(settings: Any, engine: Engine, data_dir: DataDir, model: Any) -> None:
    models = ModelProvider(None, "cpu", None, model=model)
    assert work_once(settings, engine, data_dir, models, "host:0") is not None
    assert export_once(settings, engine) > 0


def _seg_sources(ds: Any) -> set[str]:
    return {
        str(src.ReferencedSOPInstanceUID)
        for item in ds.PerFrameFunctionalGroupsSequence
        for derivation in item.DerivationImageSequence
        for src in derivation.SourceImageSequence
    }


def test_orthanc_late_image_own_seg_new_sr_with_predecessor_dashboard_agrees(
    tmp_path: Path, engine: Engine, data_dir: DataDir
) -> None:
    study, series = generate_uid(), generate_uid()
    sops = [generate_uid(), generate_uid()]
    first, late = (
        make_us_image(
            tmp_path / f"{n}.dcm",
            study_instance_uid=study,
            series_instance_uid=series,
            sop_instance_uid=sop,
        )
        for n, sop in enumerate(sops)
    )
    model = ThresholdModel()
    with orthanc(tmp_path / "o", {}) as pacs:
        settings = load_settings(
            None,
            destinations=[
                {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
            ],
        )
        pacs.upload(first)
        job1 = _receive(engine, data_dir, first)
        _process_and_deliver(settings, engine, data_dir, model)
        pacs.upload(late)  # the late image reaches the PACS and WeCare
        job2 = _receive(engine, data_dir, late)
        _process_and_deliver(settings, engine, data_dir, model)

        by_modality = pacs.instances_by_modality()
        held = {
            modality: {
                str(dcmread(_save(pacs, tmp_path, i)).SOPInstanceUID): _save(pacs, tmp_path, i)
                for i in ids
            }
            for modality, ids in by_modality.items()
        }

    assert sorted(len(held[m]) for m in ("US", "SEG", "SR")) == [2, 2, 2]
    segs = {uid: dcmread(path) for uid, path in held["SEG"].items()}
    assert sorted(_seg_sources(ds) for ds in segs.values()) == sorted(
        [{sops[0]}, {sops[1]}]
    )  # one SEG per image: none for the first image twice
    reports = sorted((dcmread(p) for p in held["SR"].values()), key=lambda ds: ds.InstanceNumber)
    older, newer = reports
    assert older.SOPInstanceUID != newer.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in older
    (pred,) = newer.PredecessorDocumentsSequence
    assert pred.StudyInstanceUID == study
    assert pred.ReferencedSeriesSequence[0].SeriesInstanceUID == older.SeriesInstanceUID
    named = pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert named.ReferencedSOPInstanceUID == older.SOPInstanceUID
    for path in [*held["SEG"].values(), *held["SR"].values()]:
        assert run_dciodvfy(path)[0] == []

    # What WeCare says it sent is what Orthanc holds, element for element (the file meta
    # group is the receiver's own).
    with session_scope(engine) as s:
        sent: dict[str, Any] = {}
        for job_id in (job1, job2):
            job = s.get(Job, job_id)
            assert job is not None and job.state == JobState.DONE
            detail = job_detail(job, utcnow())
            for output in detail.outputs:
                assert [row.state for row in output.outbox] == ["sent"]
            for row in s.scalars(select(Output).where(Output.job_id == job_id)):
                sent[row.sop_instance_uid] = dcmread(row.path)
    assert set(sent) == set(held["SEG"]) | set(held["SR"])
    for uid, path in [*held["SEG"].items(), *held["SR"].items()]:
        assert dcmread(path) == sent[uid]


def _save(pacs: Any, tmp_path: Path, instance_id: str) -> Path:
    path = tmp_path / "from-orthanc" / f"{instance_id}.dcm"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pacs.get_bytes(f"/instances/{instance_id}/file"))
    return path
