"""The review API's bodies: POST /api/jobs/{id}/review and GET /api/jobs/{id}/reviews.

`ReviewPublic` is also what the workspace shows as a frame's latest review
(`FrameResultPublic.review`): build it with :func:`review_public`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from storage.models import Review


class ReviewFrameIn(BaseModel):
    """One frame's outlines. `lesions` is checked by dicom_io.polygons.parse_polygons (its
    message names what is wrong), not by the schema."""

    frame: int = Field(ge=1, description="1-based source frame")
    lesions: Any = Field(
        default_factory=list,
        description="Outlines [[[x, y], ...], ...] in pixel-centre coordinates of the frame",
    )


class ReviewIn(BaseModel):
    """A radiologist's review of one image of the job."""

    sop_instance_uid: str = Field(max_length=64, description="Source image of this job")
    action: Literal["accept", "edit", "reject"]
    origin: Literal["ai", "scratch"] = Field(
        "ai", description="ai: edited from the AI outline (SEMIAUTOMATIC); scratch: MANUAL"
    )
    label: Literal["benign", "malignant"] | None = Field(
        None, description="The radiologist's class; null keeps the AI class"
    )
    frames: list[ReviewFrameIn] = Field(
        default_factory=list,
        max_length=5000,
        description="edit: the outlines per frame; accept: empty uses the AI mask; "
        "reject: no outline",
    )


class ReviewOutputPublic(BaseModel):
    kind: str
    sop_instance_uid: str
    destinations: list[str]


class ReviewAnswerPublic(BaseModel):
    """202: the review is recorded and its objects are queued for every destination."""

    review_id: int
    seg_sop_instance_uid: str | None
    sr_sop_instance_uid: str
    outputs: list[ReviewOutputPublic]
    duplicate: bool = Field(
        False, description="True: the same review was already made; nothing new was sent"
    )


class ReviewFramePublic(BaseModel):
    frame: int
    lesions: list[list[list[float]]]
    measurements: list[dict[str, Any]]


class ReviewPublic(BaseModel):
    """One review: who, when (UTC, ISO 8601), what, and the objects it made."""

    id: int
    job_id: int
    sop_instance_uid: str
    reviewer: str
    action: str
    origin: str
    outcome: str
    label: str | None
    created: str
    frames: list[ReviewFramePublic]
    seg_sop_instance_uid: str | None
    sr_sop_instance_uid: str | None


class ReviewsPublic(BaseModel):
    data: list[ReviewPublic]
    count: int


def review_public(review: Review) -> ReviewPublic:
    """The API form of a review row."""
    return ReviewPublic(
        id=review.id,
        job_id=review.job_id,
        sop_instance_uid=review.sop_instance_uid,
        reviewer=review.reviewer,
        action=review.action,
        origin=review.origin,
        outcome=review.outcome,
        label=review.label,
        created=review.created_at.isoformat(),
        frames=[
            ReviewFramePublic(
                frame=int(item["frame"]),
                lesions=item.get("lesions") or [],
                measurements=item.get("measurements") or [],
            )
            for item in review.frames or []
        ],
        seg_sop_instance_uid=review.seg_output.sop_instance_uid if review.seg_output else None,
        sr_sop_instance_uid=review.sr_output.sop_instance_uid if review.sr_output else None,
    )
