"""JSON API for jobs: list, detail, and the two actions the dashboard buttons use."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from service.web.auth import CsrfDep, OperatorDep, ViewerDep, audit
from service.web.deps import SessionDep
from service.web.jobs import do_process_now, do_retry, get_job, list_jobs
from service.web.schemas import (
    ErrorPublic,
    JobActionPublic,
    JobDetailPublic,
    JobsPublic,
    job_detail,
    job_public,
)
from storage.audit import AuditAction
from storage.models import JobState, utcnow

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic, "description": "No such job"}
}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorPublic, "description": "The job is not in a state that allows it"}
}


@router.get("", response_model=JobsPublic, summary="List jobs, newest first")
def read_jobs(
    session: SessionDep,
    _: ViewerDep,
    state: Annotated[JobState | None, Query(description="Only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size")] = 50,
    offset: Annotated[int, Query(ge=0, description="Jobs to skip")] = 0,
) -> JobsPublic:
    """Jobs with their study, state, per-stage durations and study-level result."""
    jobs, count = list_jobs(session, state, limit, offset)
    now = utcnow()
    return JobsPublic(data=[job_public(j, now) for j in jobs], count=count)


@router.get(
    "/{job_id}",
    response_model=JobDetailPublic,
    responses=_NOT_FOUND,
    summary="One job with its results and outputs",
)
def read_job(job_id: int, request: Request, session: SessionDep, _: ViewerDep) -> JobDetailPublic:
    """Per-image results (probabilities, lesion size, preview URLs), pipeline step timings, and
    every output with its delivery state per destination."""
    detail = job_detail(get_job(session, job_id), utcnow())
    audit(session, request, AuditAction.VIEW_JOB, f"job:{job_id}")
    return detail


@router.post(
    "/{job_id}/process-now",
    response_model=JobActionPublic,
    responses={**_NOT_FOUND, **_CONFLICT},
    summary="Queue a waiting job now",
    dependencies=[CsrfDep],
)
def post_process_now(
    job_id: int, request: Request, session: SessionDep, _: OperatorDep
) -> JobActionPublic:
    """Move a `waiting` job to `queued` without waiting for the study to be quiet.

    Instances that arrive afterwards start a new job. 409 when the job is not waiting."""
    result = do_process_now(session, job_id)
    audit(session, request, AuditAction.PROCESS_NOW, f"job:{job_id}")
    return result


@router.post(
    "/{job_id}/retry",
    response_model=JobActionPublic,
    responses={**_NOT_FOUND, **_CONFLICT},
    summary="Retry a failed or stuck job",
    dependencies=[CsrfDep],
)
def post_retry(
    job_id: int, request: Request, session: SessionDep, _: OperatorDep
) -> JobActionPublic:
    """A failed export: failed deliveries go back to pending and the job to `exporting`.
    A failed processing: the job goes back to `queued`. A job still exporting: its pending
    deliveries are tried now. 409 otherwise."""
    result = do_retry(session, job_id)
    audit(session, request, AuditAction.RETRY, f"job:{job_id}", detail=result.action)
    return result
