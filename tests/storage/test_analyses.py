"""What each model version analysed, and a study's latest report (storage/analyses.py)."""

from __future__ import annotations

from sqlalchemy import Engine, select

from storage.analyses import analysed_before, latest_report, record_analysed
from storage.db import session_scope
from storage.models import AnalysedImage, Job, JobState, Study
from storage.outbox import add_output

V1, V2 = "model-a 2026-12-01 00000001", "model-b 2026-12-02 00000002"


def _two_jobs(engine: Engine) -> tuple[int, int, int]:
    """A study with two finished jobs, each with one SR (job 1 also a SEG); returns ids."""
    with session_scope(engine) as s:
        study = Study(study_instance_uid="1.2.9")
        s.add(study)
        s.flush()
        jobs = [Job(study_id=study.id, state=JobState.DONE) for _ in range(2)]
        s.add_all(jobs)
        s.flush()
        for n, job in enumerate(jobs, start=1):
            for kind in ("seg", "sr") if n == 1 else ("sr",):
                add_output(
                    s,
                    job,
                    kind=kind,
                    sop_instance_uid=f"2.25.{n}{len(kind)}",
                    series_instance_uid=f"2.25.9{len(kind)}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                    path=f"/out/{n}/{kind}.dcm",
                    destinations=["pacs"],
                    model_version=V1,
                )
        return study.id, jobs[0].id, jobs[1].id


def test_record_analysed_same_instance_and_version_kept_once(any_engine: Engine) -> None:
    _, job1, job2 = _two_jobs(any_engine)
    with session_scope(any_engine) as s:
        for job_id in (job1, job2):
            job = s.get(Job, job_id)
            assert job is not None
            record_analysed(
                s,
                job,
                sop_instance_uid="1.2.9.1.1",
                series_instance_uid="1.2.9.1",
                model_version=V1,
                seg_output_id=None,
                summary={"probabilities": {"normal": 1.0}, "frames": 1, "findings": []},
            )
        rows = s.scalars(select(AnalysedImage)).all()
    assert [(r.job_id, r.sop_instance_uid) for r in rows] == [(job1, "1.2.9.1.1")]


def test_analysed_before_other_jobs_same_version_only(any_engine: Engine) -> None:
    _, job1, job2 = _two_jobs(any_engine)
    with session_scope(any_engine) as s:
        job = s.get(Job, job1)
        assert job is not None
        for sop, version in (("1.2.9.1.1", V1), ("1.2.9.1.2", V2)):
            record_analysed(
                s,
                job,
                sop_instance_uid=sop,
                series_instance_uid="1.2.9.1",
                model_version=version,
                seg_output_id=None,
                summary={},
            )
    with session_scope(any_engine) as s:
        uids = ["1.2.9.1.1", "1.2.9.1.2", "1.2.9.1.3"]
        assert [r.sop_instance_uid for r in analysed_before(s, uids, V1, job2)] == ["1.2.9.1.1"]
        assert analysed_before(s, uids, V1, job1) == []  # a job's own rows are not history
        assert analysed_before(s, [], V1, job2) == []


def test_latest_report_newest_earlier_sr_and_count(any_engine: Engine) -> None:
    study_id, job1, job2 = _two_jobs(any_engine)
    with session_scope(any_engine) as s:
        latest, count = latest_report(s, study_id, V1, job2 + 1)
        assert latest is not None and latest.job_id == job2 and count == 2
        latest, count = latest_report(s, study_id, V1, job2)
        assert latest is not None and latest.job_id == job1 and count == 1
        assert latest_report(s, study_id, V1, job1) == (None, 0)
        assert latest_report(s, study_id, V2, job2 + 1) == (None, 0)
