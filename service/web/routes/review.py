"""The radiologist's review API: accept, correct or reject the AI result on one image.

The work is service/review.py's; this module turns HTTP into a ReviewRequest and back, and
records refusals in the audit trail (a refused review changes nothing else).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.review import FrameOutlines, Reviewer, ReviewError, ReviewRequest, submit_review
from service.web.auth import CsrfDep, RadiologistDep, ViewerDep, audit
from service.web.deps import DataDirDep, SessionDep, SettingsDep
from service.web.jobs import get_job
from service.web.review_schemas import (
    ReviewAnswerPublic,
    ReviewIn,
    ReviewOutputPublic,
    ReviewsPublic,
    review_public,
)
from service.web.schemas import ErrorPublic
from storage.audit import AuditAction
from storage.reviews import list_reviews

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

_REFUSALS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic, "description": "No such job, or the image is not in this job"},
    409: {"model": ErrorPublic, "description": "The job is not done"},
    422: {"model": ErrorPublic, "description": "Malformed outlines, frames or action"},
}


@router.post(
    "/{job_id}/review",
    status_code=202,
    response_model=ReviewAnswerPublic,
    responses=_REFUSALS,
    summary="Accept, correct or reject the AI result on one image",
    dependencies=[CsrfDep],
)
def post_review(
    job_id: int,
    body: ReviewIn,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    data_dir: DataDirDep,
    principal: RadiologistDep,
) -> ReviewAnswerPublic | JSONResponse:
    """Saves a **new** corrected SEG (SEMIAUTOMATIC when accepted or edited from the AI
    outline, MANUAL when drawn from scratch; the reviewer as content creator; none for a
    rejection) and a **new** review SR (the reviewer as observer, sizes and BI-RADS words
    measured on the corrected outline, the AI SR as predecessor), and queues both for every
    destination. The AI outputs are not changed. Sending the same review again returns the
    same objects (`duplicate`: true)."""
    review = ReviewRequest(
        sop_instance_uid=body.sop_instance_uid,
        action=body.action,
        origin=body.origin,
        label=body.label,
        frames=tuple(FrameOutlines(f.frame, f.lesions) for f in body.frames),
    )
    who = Reviewer(
        name=principal.name,
        client=request.client.host if request.client else None,
        token_name=principal.token_name,
    )
    try:
        result = submit_review(
            session,
            job_id,
            review,
            who,
            out_root=data_dir.outputs,
            destinations=[d.name for d in settings.destinations],
        )
    except ReviewError as exc:
        audit(
            session,
            request,
            AuditAction.REVIEW_REFUSED,
            f"job:{job_id}",
            detail=f"{exc.code}: image {body.sop_instance_uid}",
        )
        return JSONResponse({"detail": exc.message, "code": exc.code}, status_code=exc.status)
    return ReviewAnswerPublic(
        review_id=result.review_id,
        seg_sop_instance_uid=result.seg_sop_instance_uid,
        sr_sop_instance_uid=result.sr_sop_instance_uid,
        outputs=[
            ReviewOutputPublic(
                kind=o.kind, sop_instance_uid=o.sop_instance_uid, destinations=o.destinations
            )
            for o in result.outputs
        ],
        duplicate=result.duplicate,
    )


@router.get(
    "/{job_id}/reviews",
    response_model=ReviewsPublic,
    responses={404: {"model": ErrorPublic, "description": "No such job"}},
    summary="The radiologist reviews made on this job, oldest first",
)
def read_reviews(
    job_id: int, request: Request, session: SessionDep, _: ViewerDep
) -> ReviewsPublic:
    """Who reviewed which image and frames, when, with what outcome, and the objects made."""
    get_job(session, job_id)
    rows = list_reviews(session, job_id)
    audit(session, request, AuditAction.VIEW_REVIEWS, f"job:{job_id}")
    return ReviewsPublic(data=[review_public(r) for r in rows], count=len(rows))
