"""Reading jobs and the two dashboard actions, shared by the JSON API and the HTML pages.

Routes own the transaction (SessionDep); nothing here commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from fastapi import HTTPException, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from service.web.schemas import JobActionPublic, job_detail
from storage.models import Job, JobState, OutboxItem, OutboxState, Output, utcnow
from storage.outbox import retry_failed_exports, send_now
from storage.queue import process_now, retry_job


def list_jobs(
    session: Session, state: JobState | None, limit: int, offset: int
) -> tuple[Sequence[Job], int]:
    """A page of jobs, newest first, and how many match `state`."""
    query = select(Job).options(selectinload(Job.study))
    count_query = select(func.count(Job.id))
    if state is not None:
        query = query.where(Job.state == state)
        count_query = count_query.where(Job.state == state)
    jobs = session.scalars(
        query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    ).all()
    return jobs, session.scalar(count_query) or 0


@dataclass
class Delivery:
    """One destination's share of a job's outputs: how many sent, pending, failed, and why not."""

    destination: str
    sent: int = 0
    pending: int = 0
    failed: int = 0
    last_error: str | None = None

    @property
    def state(self) -> str:
        """failed when any output failed for good, pending while any waits, else sent."""
        if self.failed:
            return OutboxState.FAILED
        return OutboxState.PENDING if self.pending else OutboxState.SENT


def deliveries(session: Session, job_ids: Sequence[int]) -> dict[int, list[Delivery]]:
    """Per job, one Delivery per destination (by name), from the outbox in one query.

    The job list shows these: a job stuck exporting has no job error yet, but its pending
    rows carry the last failure (which names the destination and its address)."""
    found: dict[int, dict[str, Delivery]] = {}
    if not job_ids:
        return {}
    rows = session.execute(
        select(Output.job_id, OutboxItem.destination, OutboxItem.state, OutboxItem.last_error)
        .join(Output, OutboxItem.output_id == Output.id)
        .where(Output.job_id.in_(job_ids))
        .order_by(OutboxItem.id)
    )
    for job_id, destination, state, last_error in rows:
        d = found.setdefault(job_id, {}).setdefault(destination, Delivery(destination))
        if state == OutboxState.SENT:
            d.sent += 1
        elif state == OutboxState.FAILED:
            d.failed += 1
        else:
            d.pending += 1
        if last_error and state != OutboxState.SENT:
            d.last_error = last_error
    return {
        job_id: sorted(ds.values(), key=lambda d: d.destination) for job_id, ds in found.items()
    }


def count_by_state(session: Session) -> dict[str, int]:
    """Jobs per state, every state present (zero when none)."""
    counts = {s.value: 0 for s in JobState}
    for state, n in session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)):
        counts[state] = n
    return counts


def get_job(session: Session, job_id: int) -> Job:
    """The job with its study, outputs and outbox rows, or 404."""
    job = session.scalar(
        select(Job)
        .where(Job.id == job_id)
        .options(
            selectinload(Job.study),
            selectinload(Job.outputs).selectinload(Output.outbox),
        )
        .execution_options(populate_existing=True)
    )
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


def _outbox_states(session: Session, job_id: int) -> list[str]:
    return list(
        session.scalars(select(OutboxItem.state).join(Output).where(Output.job_id == job_id))
    )


def do_process_now(session: Session, job_id: int, now: datetime | None = None) -> JobActionPublic:
    """Queue a waiting job without waiting for the study to be quiet; 409 unless waiting."""
    now = now or utcnow()
    job = get_job(session, job_id)
    if not process_now(session, job_id, now):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"job {job_id} is {job.state}; only a waiting job can be queued",
        )
    session.flush()
    return JobActionPublic(
        action="queued", affected=1, job=job_detail(get_job(session, job_id), now)
    )


def do_retry(session: Session, job_id: int, now: datetime | None = None) -> JobActionPublic:
    """The retry button.

    failed with failed outbox rows → those rows back to pending, job to exporting;
    failed otherwise (processing failed) → back to the queue;
    exporting → failed rows back to pending and pending rows due now;
    done with failed rows (a radiologist's corrected outputs) → those rows back to pending;
    anything else → 409.
    """
    now = now or utcnow()
    job = get_job(session, job_id)
    states = _outbox_states(session, job_id)
    action: str | None = None
    affected = 0
    if job.state == JobState.FAILED and OutboxState.FAILED in states:
        affected = retry_failed_exports(session, job_id, now)
        action = "exports_retried"
    elif job.state == JobState.FAILED:
        affected = int(retry_job(session, job_id, now))
        action = "requeued"
    elif job.state == JobState.EXPORTING and (
        OutboxState.PENDING in states or OutboxState.FAILED in states
    ):
        affected = retry_failed_exports(session, job_id, now) + send_now(session, job_id, now)
        action = "sent_now"
    elif job.state == JobState.DONE and OutboxState.FAILED in states:
        # A radiologist's corrected SEG/SR belongs to a done job: its failed delivery is
        # retried without touching the job or its AI outputs (already sent).
        affected = retry_failed_exports(session, job_id, now)
        action = "exports_retried"
    if action is None or affected == 0:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"job {job_id} is {job.state}; only a failed job, one still exporting or a done job "
            "with failed deliveries can be retried",
        )
    session.flush()
    return JobActionPublic(
        action=action,  # type: ignore[arg-type]
        affected=affected,
        job=job_detail(get_job(session, job_id), now),
    )
