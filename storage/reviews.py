"""Radiologist reviews: recorded once per content, listed per job, the latest per frame.

A review is written in the transaction that records its outputs and outbox rows
(service/review.py), so a review row always has its files and deliveries. `content_key` is
unique: two requests with the same content (a double click, a retry after a lost answer)
give one review, whichever commits first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.models import Job, Review, utcnow


@dataclass(frozen=True)
class NewReview:
    """What a review row is made of (outputs are attached by id once recorded)."""

    job_id: int
    sop_instance_uid: str
    reviewer: str
    action: str
    origin: str
    outcome: str
    label: str | None
    frames: list[dict[str, Any]]
    content_key: str
    seg_output_id: int | None
    sr_output_id: int | None


def find_by_key(session: Session, content_key: str) -> Review | None:
    """The review already recorded with this content, if any."""
    return session.scalar(select(Review).where(Review.content_key == content_key))


def add_review(
    session: Session, new: NewReview, now: datetime | None = None
) -> tuple[Review, bool]:
    """Record `new`; returns (row, created). A row with the same content key wins (created False).

    The insert runs in a savepoint, so losing a race to a concurrent identical request rolls
    back only the insert, not the caller's transaction.
    """
    existing = find_by_key(session, new.content_key)
    if existing is not None:
        return existing, False
    row = Review(
        job_id=new.job_id,
        sop_instance_uid=new.sop_instance_uid,
        reviewer=new.reviewer,
        action=new.action,
        origin=new.origin,
        outcome=new.outcome,
        label=new.label,
        frames=new.frames,
        content_key=new.content_key,
        seg_output_id=new.seg_output_id,
        sr_output_id=new.sr_output_id,
        created_at=now or utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        existing = find_by_key(session, new.content_key)
        if existing is None:
            raise
        return existing, False
    return row, True


def list_reviews(session: Session, job_id: int) -> list[Review]:
    """The job's reviews, oldest first."""
    return list(
        session.scalars(
            select(Review).where(Review.job_id == job_id).order_by(Review.created_at, Review.id)
        )
    )


def reviewed_frames(review: Review) -> list[int]:
    """The 1-based source frames a review speaks for."""
    return [int(item["frame"]) for item in review.frames or [] if "frame" in item]


def latest_by_frame(reviews: Sequence[Review]) -> dict[tuple[str, int], Review]:
    """(SOP Instance UID, frame) → the newest review of that frame among `reviews`."""
    latest: dict[tuple[str, int], Review] = {}
    for review in sorted(reviews, key=lambda r: (r.created_at, r.id)):
        for frame in reviewed_frames(review):
            latest[(review.sop_instance_uid, frame)] = review
    return latest


def latest_for_job(session: Session, job_id: int) -> dict[tuple[str, int], Review]:
    """For the workspace: the newest review of each frame of the job's images.

    Reviews of the same image sent from another job of the study count too: a frame has one
    current reading, whichever job page it was made on.
    """
    job = session.get(Job, job_id)
    if job is None:
        return {}
    rows = session.scalars(
        select(Review).join(Job, Job.id == Review.job_id).where(Job.study_id == job.study_id)
    ).all()
    return latest_by_frame(rows)


def iter_all_reviews(session: Session, batch: int = 500) -> Iterator[Review]:
    """Every review, oldest first, fetched `batch` rows at a time (export of corrections)."""
    last_id = 0
    while True:
        rows = session.scalars(
            select(Review).where(Review.id > last_id).order_by(Review.id).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last_id = rows[-1].id
