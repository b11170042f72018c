"""What each model version already analysed, so a later job of a study reuses it.

A study's first job analyses its images and records one :class:`AnalysedImage` per source
instance (with the SEG holding its lesion frames). A late image makes a new job: it analyses
only the images this model version has not analysed, makes a SEG for those, and a new SR of
the whole study that names the previous SR as its predecessor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import AnalysedImage, Job, Output


def record_analysed(
    session: Session,
    job: Job,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    model_version: str,
    seg_output_id: int | None,
    summary: dict[str, Any],
) -> AnalysedImage:
    """Record that `model_version` analysed this instance in `job` (idempotent per sop+version).

    A second record of the same instance and version (a re-run of the job) keeps the first.
    """
    row = session.scalar(
        select(AnalysedImage).where(
            AnalysedImage.sop_instance_uid == sop_instance_uid,
            AnalysedImage.model_version == model_version,
        )
    )
    if row is None:
        row = AnalysedImage(
            job_id=job.id,
            sop_instance_uid=sop_instance_uid,
            series_instance_uid=series_instance_uid,
            model_version=model_version,
            seg_output_id=seg_output_id,
            summary=summary,
        )
        session.add(row)
        session.flush()
    return row


def analysed_before(
    session: Session, sop_instance_uids: Sequence[str], model_version: str, job_id: int
) -> list[AnalysedImage]:
    """Analyses of these instances by `model_version` recorded by other jobs than `job_id`.

    The job's own rows are left out: a job run again (retry) re-creates the same outputs
    rather than treating its own earlier attempt as history.
    """
    if not sop_instance_uids:
        return []
    return list(
        session.scalars(
            select(AnalysedImage).where(
                AnalysedImage.sop_instance_uid.in_(list(sop_instance_uids)),
                AnalysedImage.model_version == model_version,
                AnalysedImage.job_id != job_id,
            )
        )
    )


def latest_report(
    session: Session, study_id: int, model_version: str, before_job_id: int
) -> tuple[Output | None, int]:
    """The newest SR of the study by `model_version` from an earlier job, and how many there are.

    The count gives the next report's Instance Number (count + 1).
    """
    query = (
        select(Output)
        .join(Job, Job.id == Output.job_id)
        .where(
            Job.study_id == study_id,
            Job.id < before_job_id,
            Output.kind == "sr",
            Output.model_version == model_version,
        )
    )
    latest = session.scalar(query.order_by(Output.id.desc()).limit(1))
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    return latest, int(count)
