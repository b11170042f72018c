"""Worker: claim → pipeline → outputs + outbox in one transaction; failures recorded per job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from service.config import load_settings
from service.errors import JobError
from service.worker import ModelProvider, work_once
from storage.db import session_scope
from storage.files import DataDir
from storage.instances import ReceivedInstance, record_instance
from storage.models import Job, JobState, OutboxItem, Output
from storage.queue import process_now
from tests.factories import make_us_image
from tests.service.test_pipeline import ThresholdModel


def _receive(engine: Engine, data_dir: DataDir, tmp_path: Path, **kwargs: Any) -> int:
    """Store one generated image as the SCP would and queue its job; returns the job id."""
    from pydicom import dcmread

    src = make_us_image(tmp_path / "src.dcm", **kwargs)
    ds = dcmread(src, stop_before_pixels=True)
    path = data_dir.incoming_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(src.read_bytes())
    with session_scope(engine) as s:
        record_instance(
            s,
            ReceivedInstance(
                study_instance_uid=ds.StudyInstanceUID,
                series_instance_uid=ds.SeriesInstanceUID,
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=str(path),
                size_bytes=path.stat().st_size,
            ),
        )
        job_id = s.scalars(select(Job.id)).one()
        process_now(s, job_id)
    return job_id


def _settings(destinations: bool = True, **worker: Any) -> Any:
    dest = (
        [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}]
        if destinations
        else []
    )
    return load_settings(None, destinations=dest, worker={"max_attempts": 2, **worker})


def test_work_once_success_outputs_recorded_and_queued_for_export(
    engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    job_id = _receive(engine, data_dir, tmp_path)
    models = ModelProvider(None, "cpu", None, model=ThresholdModel())
    assert work_once(_settings(), engine, data_dir, models, "host:0") == job_id
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == JobState.EXPORTING
        assert job.model_version == ThresholdModel.version and job.predicted_class == "malignant"
        assert job.running_at and job.exporting_at and job.attempts == 1
        kinds = sorted(o.kind for o in s.scalars(select(Output)))
        assert kinds == ["seg", "sr"]
        assert all(Path(o.path).exists() for o in s.scalars(select(Output)))
        assert len(s.scalars(select(OutboxItem)).all()) == 2


def test_work_once_no_destinations_job_done(
    engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    job_id = _receive(engine, data_dir, tmp_path)
    models = ModelProvider(None, "cpu", None, model=ThresholdModel())
    work_once(_settings(destinations=False), engine, data_dir, models, "host:0")
    with session_scope(engine) as s:
        assert s.get(Job, job_id).state == JobState.DONE  # type: ignore[union-attr]


def test_work_once_empty_queue_returns_none(engine: Engine, data_dir: DataDir) -> None:
    models = ModelProvider(None, "cpu", None, model=ThresholdModel())
    assert work_once(_settings(), engine, data_dir, models, "host:0") is None


class _CrashingModel(ThresholdModel):
    def predict(self, images: Any, with_cam: bool = False) -> Any:
        raise RuntimeError("CUDA out of memory (simulated)")


def test_work_once_crash_retried_then_failed_after_max_attempts(
    engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    job_id = _receive(engine, data_dir, tmp_path)
    models = ModelProvider(None, "cpu", None, model=_CrashingModel())
    settings = _settings()
    work_once(settings, engine, data_dir, models, "host:0")
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert (
            job is not None and job.state == JobState.QUEUED and job.error_code == "internal_error"
        )
    work_once(settings, engine, data_dir, models, "host:0")
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == JobState.FAILED and job.attempts == 2
        assert "out of memory" in (job.error or "")


def test_work_once_undecodable_study_fails_without_retry(
    engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    job_id = _receive(engine, data_dir, tmp_path)
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        path = Path(job.study.instances[0].path)
    path.write_bytes(path.read_bytes()[:1500])
    work_once(
        _settings(),
        engine,
        data_dir,
        ModelProvider(None, "cpu", None, model=ThresholdModel()),
        "host:0",
    )
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == JobState.FAILED
        assert job.error_code == "no_processable_images" and job.attempts == 1


def test_model_provider_load_failure_is_retryable_job_error(tmp_path: Path) -> None:
    provider = ModelProvider(tmp_path / "missing.pt", "cpu", None)
    with pytest.raises(JobError) as info:
        provider.get()
    assert info.value.retryable and info.value.code == "model_unavailable"
    assert provider.error and not provider.loaded


def test_model_provider_loads_with_the_configured_precision() -> None:
    model = ModelProvider(None, "cpu", None, precision="float32").get()
    assert model.precision == "float32" and model.device == "cpu"


def test_work_once_lease_lost_result_discarded(
    engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    """A job re-queued under its worker (lease expired): the late result is not recorded."""
    job_id = _receive(engine, data_dir, tmp_path)

    class _SlowModel(ThresholdModel):
        def predict(self, images: Any, with_cam: bool = False) -> Any:
            with session_scope(engine) as s:  # another process took over meanwhile
                job = s.get(Job, job_id)
                assert job is not None
                job.state, job.claimed_by = JobState.QUEUED, None
            return super().predict(images, with_cam)

    work_once(
        _settings(),
        engine,
        data_dir,
        ModelProvider(None, "cpu", None, model=_SlowModel()),
        "host:0",
    )
    with session_scope(engine) as s:
        assert s.get(Job, job_id).state == JobState.QUEUED  # type: ignore[union-attr]
        assert s.scalars(select(Output)).all() == []


def test_work_once_nonstandard_patient_attributes_job_done_without_their_values(
    engine: Engine, data_dir: DataDir, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Patient Sex "f", a birth date of 31 February and a malformed referring physician:
    the job still ends done with a SEG and an SR; the values reach no log and no job.error.
    """
    from pydicom import dcmread

    from storage.models import Instance

    job_id = _receive(engine, data_dir, tmp_path)
    with session_scope(engine) as s:
        path = Path(s.scalars(select(Instance.path)).one())
    ds = dcmread(path)
    ds.PatientSex = "f"
    ds.PatientBirthDate = "19700231"
    ds.ReferringPhysicianName = "Quirkdoc^b^c^d^e^f"
    ds.save_as(path)
    models = ModelProvider(None, "cpu", None, model=ThresholdModel())
    with caplog.at_level("INFO"):
        work_once(_settings(destinations=False), engine, data_dir, models, "host:0")
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == JobState.DONE, (job.error_code, job.error)
        assert job.error is None and job.error_code is None
        outputs = {o.kind: dcmread(o.path) for o in s.scalars(select(Output))}
    assert sorted(outputs) == ["seg", "sr"]
    for output in outputs.values():
        assert (output.PatientSex, output.PatientBirthDate) == ("F", "")
    logged = "\n".join(r.getMessage() + str(r.exc_text or "") for r in caplog.records)
    assert "PatientBirthDate" in logged
    assert "19700231" not in logged and "Quirkdoc" not in logged


_PLANTED = "Quirk^Canary"  # the stack's source lines show the name, not the value


class _QuotingCrashModel(ThresholdModel):
    def predict(self, images: Any, with_cam: bool = False) -> Any:
        raise ValueError(f"{_PLANTED!r} is not a valid PatientSexValues")


def test_work_once_crash_quoting_a_value_error_and_log_without_it(
    engine: Engine, data_dir: DataDir, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = _receive(engine, data_dir, tmp_path)
    models = ModelProvider(None, "cpu", None, model=_QuotingCrashModel())
    with caplog.at_level("INFO"):
        work_once(_settings(), engine, data_dir, models, "host:0")
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.error_code == "internal_error"
        assert job.error == "ValueError: '<redacted>' is not a valid PatientSexValues"
    logged = "\n".join(r.getMessage() + str(r.exc_text or "") for r in caplog.records)
    assert "job crashed: ValueError" in logged and "predict" in logged
    assert _PLANTED not in logged


# --- late images and re-runs: versioned outputs ------------------------------------------

_STUDY = "1.2.826.0.1.3680043.10.77"
_SERIES = "1.2.826.0.1.3680043.10.77.1"


def _receive_into_study(engine: Engine, data_dir: DataDir, tmp_path: Path, sop: str) -> int:
    """Store one image of the shared study as the SCP would; queue and return its new job."""
    from pydicom import dcmread

    src = make_us_image(
        tmp_path / f"{sop}.dcm",
        study_instance_uid=_STUDY,
        series_instance_uid=_SERIES,
        sop_instance_uid=sop,
    )
    ds = dcmread(src, stop_before_pixels=True)
    path = data_dir.incoming_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(src.read_bytes())
    with session_scope(engine) as s:
        record_instance(
            s,
            ReceivedInstance(
                study_instance_uid=_STUDY,
                series_instance_uid=_SERIES,
                sop_instance_uid=sop,
                sop_class_uid=ds.SOPClassUID,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=str(path),
                size_bytes=path.stat().st_size,
            ),
        )
        job_id = s.scalars(select(Job.id).where(Job.state == JobState.WAITING)).one()
        process_now(s, job_id)
    return job_id


def _outputs_of(engine: Engine, job_id: int) -> dict[str, list[Output]]:
    with session_scope(engine) as s:
        rows = s.scalars(select(Output).where(Output.job_id == job_id).order_by(Output.id))
        out: dict[str, list[Output]] = {}
        for row in rows:
            s.expunge(row)
            out.setdefault(row.kind, []).append(row)
        return out


def _seg_sources(path: str) -> set[str]:
    from pydicom import dcmread

    seg = dcmread(path)
    return {
        str(src.ReferencedSOPInstanceUID)
        for item in seg.PerFrameFunctionalGroupsSequence
        for derivation in item.DerivationImageSequence
        for src in derivation.SourceImageSequence
    }


def test_work_once_late_image_gets_own_seg_and_new_sr_naming_predecessor(
    engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    from pydicom import dcmread

    from storage.models import AnalysedImage
    from tests.dciodvfy import run_dciodvfy

    first_sop, late_sop = f"{_SERIES}.1", f"{_SERIES}.2"
    model = ThresholdModel()
    models = ModelProvider(None, "cpu", None, model=model)
    job1 = _receive_into_study(engine, data_dir, tmp_path, first_sop)
    work_once(_settings(), engine, data_dir, models, "host:0")
    calls_first = sum(model.calls)
    job2 = _receive_into_study(engine, data_dir, tmp_path, late_sop)
    assert job2 != job1
    work_once(_settings(), engine, data_dir, models, "host:0")

    assert sum(model.calls) - calls_first == calls_first  # only the late image analysed
    one, two = _outputs_of(engine, job1), _outputs_of(engine, job2)
    assert len(one["seg"]) == len(two["seg"]) == 1
    assert _seg_sources(one["seg"][0].path) == {first_sop}
    assert _seg_sources(two["seg"][0].path) == {late_sop}  # no second SEG of the first image
    (sr1,), (sr2,) = one["sr"], two["sr"]
    assert sr1.sop_instance_uid != sr2.sop_instance_uid
    assert sr2.predecessor_id == sr1.id and sr2.model_version == ThresholdModel.version
    report = dcmread(sr2.path)
    (predecessor,) = report.PredecessorDocumentsSequence
    assert predecessor.StudyInstanceUID == _STUDY
    assert predecessor.ReferencedSeriesSequence[0].SeriesInstanceUID == sr1.series_instance_uid
    item = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert item.ReferencedSOPInstanceUID == sr1.sop_instance_uid
    assert report.InstanceNumber == 2 and report.SeriesInstanceUID == sr1.series_instance_uid
    # The new SR reports both images: the first one's finding read from its own SEG.
    groups = [
        str(g.ReferencedSOPInstanceUID)
        for g in _walk(report)
        if "ReferencedSOPInstanceUID" in g and "ReferencedSOPClassUID" in g
    ]
    assert {one["seg"][0].sop_instance_uid, two["seg"][0].sop_instance_uid} <= set(groups)
    assert {first_sop, late_sop} <= set(groups)
    errors, _ = run_dciodvfy(Path(sr2.path))
    assert errors == []
    with session_scope(engine) as s:
        analysed = {(a.sop_instance_uid, a.job_id) for a in s.scalars(select(AnalysedImage))}
    assert analysed == {(first_sop, job1), (late_sop, job2)}


def _walk(ds: Any) -> list[Any]:
    found = [ds]
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                found.extend(_walk(item))
    return found


def test_work_once_job_run_again_same_uids_files_untouched(
    engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    """A job run again (crash after writing, a retry): same UIDs, the written files kept."""
    models = ModelProvider(None, "cpu", None, model=ThresholdModel())
    _receive_into_study(engine, data_dir, tmp_path, f"{_SERIES}.1")
    work_once(_settings(), engine, data_dir, models, "host:0")
    job2 = _receive_into_study(engine, data_dir, tmp_path, f"{_SERIES}.2")
    work_once(_settings(), engine, data_dir, models, "host:0")
    before = _outputs_of(engine, job2)
    files = {o.sop_instance_uid: Path(o.path).read_bytes() for v in before.values() for o in v}
    stamps = {
        uid: Path(o.path).stat().st_mtime_ns
        for v in before.values()
        for o in v
        for uid in [o.sop_instance_uid]
    }
    with session_scope(engine) as s:
        job = s.get(Job, job2)
        assert job is not None
        job.state, job.claimed_by = JobState.QUEUED, None
    work_once(_settings(), engine, data_dir, models, "host:0")
    after = _outputs_of(engine, job2)
    assert {k: [o.sop_instance_uid for o in v] for k, v in after.items()} == {
        k: [o.sop_instance_uid for o in v] for k, v in before.items()
    }
    for outputs in after.values():
        for o in outputs:
            assert Path(o.path).read_bytes() == files[o.sop_instance_uid]
            assert Path(o.path).stat().st_mtime_ns == stamps[o.sop_instance_uid]
    assert after["sr"][0].predecessor_id is not None  # still names job 1's SR, not itself


def test_work_once_study_with_running_job_late_job_waits_its_turn(
    engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    """Two workers: the late image's job is not run beside the study's running job (it would
    not see that job's analyses and segment its images again); it runs once that one ended."""
    model = ThresholdModel()
    models = ModelProvider(None, "cpu", None, model=model)
    job1 = _receive_into_study(engine, data_dir, tmp_path, f"{_SERIES}.1")
    with session_scope(engine) as s:
        job = s.get(Job, job1)
        assert job is not None
        job.state, job.claimed_by = JobState.RUNNING, "other-host:0"  # another worker has it
    job2 = _receive_into_study(engine, data_dir, tmp_path, f"{_SERIES}.2")
    assert work_once(_settings(), engine, data_dir, models, "host:0") is None
    with session_scope(engine) as s:
        job = s.get(Job, job2)
        assert job is not None
        assert (job.state, job.attempts, job.claimed_by) == (JobState.QUEUED, 0, None)
    assert model.calls == []
    with session_scope(engine) as s:
        job = s.get(Job, job1)
        assert job is not None
        job.state, job.claimed_by = JobState.DONE, None
    assert work_once(_settings(), engine, data_dir, models, "host:0") == job2
    with session_scope(engine) as s:
        assert s.get(Job, job2).state == JobState.EXPORTING  # type: ignore[union-attr]
