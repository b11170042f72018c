"""The job queue: a state machine in one table, claimed with one compare-and-set UPDATE.

`waiting → queued → running → exporting → done | failed`. A claim sets a lease; a worker that
dies stops renewing it and the job goes back to `queued` when it expires (or at start-up).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.orm import Session

from storage.models import Job, JobState, Study, utcnow

_STAMP = {
    JobState.QUEUED: "queued_at",
    JobState.RUNNING: "running_at",
    JobState.EXPORTING: "exporting_at",
    JobState.DONE: "finished_at",
    JobState.FAILED: "finished_at",
}


_OPEN_JOB_OF_STUDY = (
    select(Job.id)
    .where(Job.study_id == bindparam("study"), Job.state.in_((JobState.WAITING, JobState.QUEUED)))
    .order_by(Job.id)
    .limit(1)
    .with_for_update()
)


def ensure_waiting_job(conn: Connection, study_id: int, now: datetime | None = None) -> int:
    """Return the id of the study's job that has not started yet, creating a waiting one when
    none (Core statements, in the caller's transaction: both recording paths use it).

    A `queued` job counts: it reads the study's instances when a worker claims it, so a late
    instance joins it. (Under load a store can wait longer than stable_seconds for the database;
    the study was queued meanwhile, and the late instance used to start a second job.) The row
    is locked so that, on PostgreSQL, a claim waits for this instance to be committed.
    """
    job_id = conn.execute(_OPEN_JOB_OF_STUDY, {"study": study_id}).scalar()
    if job_id is None:
        job_id = conn.execute(
            insert(Job)
            .values(study_id=study_id, state=JobState.WAITING, created_at=now or utcnow())
            .returning(Job.id)
        ).scalar_one()
    return int(job_id)


def queue_stable_studies(
    session: Session,
    stable_seconds: float,
    now: datetime | None = None,
    listening_since: datetime | None = None,
) -> list[int]:
    """Move waiting jobs whose study has been quiet for `stable_seconds` to `queued`.

    Quiet counts only while we listen (`listening_since`): time we were down is not quiet,
    the sender could not send. A study cut off by a crash is otherwise queued at restart,
    analysed in part, and its re-send makes a second job and a second result.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=stable_seconds)
    if listening_since is not None and listening_since > cutoff:
        return []
    ids = list(
        session.scalars(
            select(Job.id)
            .join(Study, Study.id == Job.study_id)
            .where(Job.state == JobState.WAITING, Study.last_received_at <= cutoff)
        )
    )
    for job_id in ids:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.WAITING)
            .values(state=JobState.QUEUED, queued_at=now)
        )
    return ids


def process_now(session: Session, job_id: int, now: datetime | None = None) -> bool:
    """Force a waiting job into the queue without waiting for stability."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.WAITING)
        .values(state=JobState.QUEUED, queued_at=now or utcnow(), forced=True)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def claim_next_job(
    session: Session, worker_id: str, lease_seconds: float, now: datetime | None = None
) -> Job | None:
    """Atomically take the oldest queued job, or None. Safe with many workers and processes.

    PostgreSQL: one ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING``,
    so concurrent workers each lock a different row and never wait on one another (nor on a
    queued job whose study is taking in a late instance: :func:`ensure_waiting_job` holds its
    row lock until that instance is committed). SQLite has one writer at a time: a
    compare-and-set UPDATE per candidate is enough there.
    """
    now = now or utcnow()
    claim = {
        "state": JobState.RUNNING,
        "running_at": now,
        "claimed_by": worker_id,
        "lease_until": now + timedelta(seconds=lease_seconds),
        "attempts": Job.attempts + 1,
        "error": None,
        "error_code": None,
    }
    if session.get_bind().dialect.name == "postgresql":
        oldest = (
            select(Job.id)
            .where(Job.state == JobState.QUEUED)
            .order_by(Job.queued_at, Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        claimed_id = session.scalar(
            update(Job)
            .where(Job.id == oldest, Job.state == JobState.QUEUED)
            .values(**claim)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        if claimed_id is None:
            return None
        return session.get(Job, claimed_id, populate_existing=True)
    candidates = session.scalars(
        select(Job.id).where(Job.state == JobState.QUEUED).order_by(Job.queued_at, Job.id).limit(5)
    ).all()
    for job_id in candidates:
        result = session.execute(
            update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED).values(**claim)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            session.flush()
            job = session.get(Job, job_id, populate_existing=True)
            return job
    return None


def renew_lease(session: Session, job_id: int, worker_id: str, lease_seconds: float) -> bool:
    """Extend our lease; False means the job is no longer ours (it was re-queued)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.claimed_by == worker_id, Job.state == JobState.RUNNING)
        .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def requeue_expired(session: Session, now: datetime | None = None) -> list[int]:
    """Return running jobs whose lease expired (their worker died) to the queue."""
    now = now or utcnow()
    ids = list(
        session.scalars(select(Job.id).where(Job.state == JobState.RUNNING, Job.lease_until < now))
    )
    requeued = []
    for job_id in ids:
        # The lease is checked again: a heartbeat may have renewed it since the SELECT.
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.lease_until < now)
            .values(state=JobState.QUEUED, queued_at=now, claimed_by=None, lease_until=None)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            requeued.append(job_id)
    return requeued


def requeue_orphans(session: Session, node_prefix: str, now: datetime | None = None) -> list[int]:
    """At start-up: jobs left running by an earlier process of this node go back to the queue."""
    now = now or utcnow()
    ids = list(
        session.scalars(
            select(Job.id).where(
                Job.state == JobState.RUNNING, Job.claimed_by.like(f"{node_prefix}%")
            )
        )
    )
    for job_id in ids:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING)
            .values(state=JobState.QUEUED, queued_at=now, claimed_by=None, lease_until=None)
        )
    return ids + requeue_expired(session, now)


def set_state(
    session: Session,
    job: Job,
    state: JobState,
    *,
    error: str | None = None,
    error_code: str | None = None,
    now: datetime | None = None,
) -> None:
    """Move a job to `state`, stamping that stage's time."""
    now = now or utcnow()
    job.state = state
    stamp = _STAMP.get(state)
    if stamp:
        setattr(job, stamp, now)
    if state in (JobState.DONE, JobState.FAILED, JobState.QUEUED, JobState.EXPORTING):
        job.claimed_by = None
        job.lease_until = None
    if error is not None or state == JobState.FAILED:
        job.error = error
        job.error_code = error_code
    session.flush()


def retry_job(session: Session, job_id: int, now: datetime | None = None) -> bool:
    """Put a failed job back in the queue (the dashboard's retry button)."""
    now = now or utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.FAILED)
        .values(state=JobState.QUEUED, queued_at=now, finished_at=None, attempts=0)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]
