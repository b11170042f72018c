"""One SOP Instance UID, two contents: over real associations, nothing acknowledged is lost.

A (patient Alpha) then B (patient Bravo) under the same SOP Instance UID: both Success, both
files kept byte for byte, B recorded in its own study as a conflicting copy, never processed,
audited, shown on the not-processed page and on the jobs; A's job analyses only A's file.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select, update

from service.config import load_settings
from service.ingest import StoreContext, StoreStatus, store_encoded
from service.logs import uid_hash
from service.scp import start_scp
from service.web.not_processed import list_not_processed
from service.worker import ModelProvider, work_once
from storage.db import session_scope
from storage.files import DataDir
from storage.models import AuditEvent, Instance, Job, JobState, Output, Study
from storage.queue import process_now
from tests.factories import make_us_dataset, write_dataset
from tests.integration.peers import free_port
from tests.service.test_pipeline import ThresholdModel
from tests.service.test_scp import _send

ALPHA, BRAVO = "ALPHA^Anna", "BRAVO^Bert"


@pytest.fixture()
def scp(data_dir: DataDir, engine: Engine) -> Iterator[int]:
    port = free_port()
    ctx = StoreContext(data_dir, engine)
    server = start_scp(ctx, ae_title="WECARE", host="127.0.0.1", port=port)
    yield port
    server.shutdown()


def _image(patient: str, study: str, series: str, sop: str, seed: int = 0) -> Dataset:
    ds = make_us_dataset(
        rows=128,
        columns=160,
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        seed=seed,
    )
    ds.PatientName = patient
    ds.PatientID = f"{patient[:5]}-ID"
    return ds


def _rows(engine: Engine, sop: str) -> list[Instance]:
    with session_scope(engine) as s:
        return list(
            s.scalars(
                select(Instance).where(Instance.sop_instance_uid == sop).order_by(Instance.id)
            )
        )


def _study_uid(engine: Engine, study_id: int) -> str:
    with session_scope(engine) as s:
        study = s.get(Study, study_id)
        assert study is not None
        return study.study_instance_uid


def _run_job(engine: Engine, data_dir: DataDir, job_id: int) -> Job:
    """Queue and run one job in process with the stand-in model, no destinations."""
    with session_scope(engine) as s:
        process_now(s, job_id)
    models = ModelProvider(None, "cpu", None, model=ThresholdModel())
    settings = load_settings(None, destinations=[], worker={"explain": False})
    assert work_once(settings, engine, data_dir, models, "host:0") == job_id
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_store_same_uid_other_patient_both_kept_copy_flagged_not_processed(
    scp: int, engine: Engine, data_dir: DataDir
) -> None:
    sop, study_a, study_b = generate_uid(), generate_uid(), generate_uid()
    a = _image(ALPHA, study_a, generate_uid(), sop, seed=1)
    b = _image(BRAVO, study_b, generate_uid(), sop, seed=2)
    assert _send(scp, a) == StoreStatus.SUCCESS
    (row_a,) = _rows(engine, sop)
    bytes_a = Path(row_a.path).read_bytes()
    assert row_a.content_sha256 == hashlib.sha256(bytes_a).hexdigest()

    assert _send(scp, b) == StoreStatus.SUCCESS

    first, copy = _rows(engine, sop)
    assert first.id == row_a.id and first.path == row_a.path and first.conflict_of_id is None
    assert Path(first.path).read_bytes() == bytes_a  # A's acknowledged file untouched
    assert str(dcmread(first.path).PatientName) == ALPHA
    assert copy.conflict_of_id == first.id and copy.path != first.path
    assert copy.content_sha256 == _sha(copy.path) != first.content_sha256
    assert str(dcmread(copy.path).PatientName) == BRAVO
    assert _study_uid(engine, first.study_id) == study_a
    assert _study_uid(engine, copy.study_id) == study_b  # B belongs to its own study
    assert copy.skip_reason and copy.skip_reason.startswith("uid_conflict:")
    assert uid_hash(sop) in copy.skip_reason
    with session_scope(engine) as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "uid_conflict")).all()
        assert [e.target for e in events] == [f"sop:{uid_hash(sop)}"]
        assert events[0].detail and ALPHA[:5] not in events[0].detail.upper()
        assert BRAVO[:5] not in events[0].detail.upper() and sop not in events[0].detail
        jobs = s.scalars(select(Job)).all()
        assert [j.study_id for j in jobs] == [first.study_id]  # none for B's study
        listing = list_not_processed(s, 10, 0)
    assert [(r.skip_code, r.study_instance_uid) for r in listing.data] == [
        ("uid_conflict", study_b)
    ]

    job = _run_job(engine, data_dir, jobs[0].id)
    assert job.state == JobState.DONE and job.image_count == 1
    assert [r["sop_instance_uid"] for r in job.results or []] == [sop]
    assert job.error_code == "uid_conflict"
    assert job.error and uid_hash(sop) in job.error and "not processed" in job.error
    with session_scope(engine) as s:
        sr_path = s.scalars(select(Output.path).where(Output.kind == "sr")).one()
    assert str(dcmread(sr_path).PatientName) == ALPHA  # never Bravo's name on Alpha's result


def test_store_same_uid_same_series_first_file_not_overwritten(
    scp: int, engine: Engine, data_dir: DataDir
) -> None:
    sop, study, series = generate_uid(), generate_uid(), generate_uid()
    assert _send(scp, _image(ALPHA, study, series, sop, seed=1)) == StoreStatus.SUCCESS
    canonical = data_dir.incoming_path(study, series, sop)
    before = canonical.read_bytes()
    assert _send(scp, _image(BRAVO, study, series, sop, seed=2)) == StoreStatus.SUCCESS
    first, copy = _rows(engine, sop)
    assert first.path == str(canonical) and canonical.read_bytes() == before
    assert Path(copy.path).parent == canonical.parent and Path(copy.path).exists()
    assert str(dcmread(copy.path).PatientName) == BRAVO
    assert copy.conflict_of_id == first.id and copy.study_id == first.study_id
    with session_scope(engine) as s:
        job = s.scalars(select(Job)).one()
    job = _run_job(engine, data_dir, job.id)
    assert job.image_count == 1 and job.error_code == "uid_conflict"
    assert "in this study" in (job.error or "")


def test_store_same_bytes_again_no_write_no_row_no_job(scp: int, engine: Engine) -> None:
    sop = generate_uid()
    ds = _image(ALPHA, generate_uid(), generate_uid(), sop)
    assert _send(scp, ds) == StoreStatus.SUCCESS
    (row,) = _rows(engine, sop)
    stat = os.stat(row.path)
    assert _send(scp, ds) == StoreStatus.SUCCESS
    (again,) = _rows(engine, sop)
    assert again.times_received == 2 and again.path == row.path
    after = os.stat(row.path)
    assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)  # not rewritten
    assert len(list(Path(row.path).parent.iterdir())) == 1
    with session_scope(engine) as s:
        assert len(s.scalars(select(Job)).all()) == 1
        assert not s.scalars(select(AuditEvent)).all()


def test_store_conflicting_copy_resent_counted_once_audited_once(scp: int, engine: Engine) -> None:
    sop = generate_uid()
    b = _image(BRAVO, generate_uid(), generate_uid(), sop, seed=2)
    assert _send(scp, _image(ALPHA, generate_uid(), generate_uid(), sop, seed=1)) == 0
    assert _send(scp, b) == StoreStatus.SUCCESS
    assert _send(scp, b) == StoreStatus.SUCCESS
    first, copy = _rows(engine, sop)
    assert (first.times_received, copy.times_received) == (1, 2)
    with session_scope(engine) as s:
        assert len(s.scalars(select(AuditEvent)).all()) == 1


def test_store_conflict_after_job_done_notes_the_finished_job(
    scp: int, engine: Engine, data_dir: DataDir
) -> None:
    sop = generate_uid()
    assert _send(scp, _image(ALPHA, generate_uid(), generate_uid(), sop, seed=1)) == 0
    with session_scope(engine) as s:
        job_id = s.scalars(select(Job.id)).one()
    job = _run_job(engine, data_dir, job_id)
    assert job.state == JobState.DONE and job.error_code is None
    assert _send(scp, _image(BRAVO, generate_uid(), generate_uid(), sop, seed=2)) == 0
    with session_scope(engine) as s:
        job = s.get(Job, job_id)  # type: ignore[assignment]
        assert job.state == JobState.DONE and job.error_code == "uid_conflict"
        assert uid_hash(sop) in (job.error or "")
        assert len(s.scalars(select(Job)).all()) == 1


def test_store_row_without_hash_compared_by_its_file(scp: int, engine: Engine) -> None:
    """Rows recorded before content hashes (migration 0003) are hashed from their file."""
    sop = generate_uid()
    a = _image(ALPHA, generate_uid(), generate_uid(), sop, seed=1)
    assert _send(scp, a) == StoreStatus.SUCCESS
    with session_scope(engine) as s:
        s.execute(update(Instance).values(content_sha256=None))
    assert _send(scp, a) == StoreStatus.SUCCESS
    (row,) = _rows(engine, sop)
    assert row.times_received == 2 and row.content_sha256 == _sha(row.path)
    assert _send(scp, _image(BRAVO, generate_uid(), generate_uid(), sop, seed=2)) == 0
    assert [r.conflict_of_id for r in _rows(engine, sop)] == [None, row.id]


def _race(ctx: StoreContext, contents: list[bytes]) -> list[StoreStatus]:
    """Store each content from its own thread, released together."""
    barrier = threading.Barrier(len(contents))
    statuses: list[StoreStatus] = []

    def store(data: bytes) -> None:
        barrier.wait()
        statuses.append(store_encoded(ctx, data).status)

    threads = [threading.Thread(target=store, args=(c,)) for c in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return statuses


@pytest.mark.parametrize("same_bytes", [False, True], ids=["different", "identical"])
def test_store_racing_same_uid_one_original_nothing_lost(
    any_engine: Engine, data_dir: DataDir, tmp_path: Path, same_bytes: bool
) -> None:
    """Two stores of one SOP UID at once, several rounds: exactly one original each time
    (SQLite and PostgreSQL)."""
    engine = any_engine
    ctx = StoreContext(data_dir, engine)
    for round_ in range(4):
        sop, study, series = generate_uid(), generate_uid(), generate_uid()
        contents = []
        for n, patient in enumerate((ALPHA, ALPHA if same_bytes else BRAVO)):
            path = write_dataset(
                _image(patient, study, series, sop, seed=1 if same_bytes else n + 1),
                tmp_path / f"{round_}-{n}.dcm",
            )
            contents.append(path.read_bytes())
        assert _race(ctx, contents) == [StoreStatus.SUCCESS] * 2
        rows = _rows(engine, sop)
        assert [r.conflict_of_id is None for r in rows].count(True) == 1
        # One file per row, nothing left over (staged copies, a loser's duplicate).
        assert len(list(Path(rows[0].path).parent.iterdir())) == len(rows)
        if same_bytes:
            assert len(rows) == 1 and rows[0].times_received == 2
        else:
            assert len(rows) == 2
            stored = {_sha(r.path) for r in rows}
            assert stored == {hashlib.sha256(c).hexdigest() for c in contents}
            assert {r.content_sha256 for r in rows} == stored
