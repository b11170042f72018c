"""The outbox: one row per (output, destination); `sent` only after the peer's Success.

The exporter claims due rows by pushing `next_try_at` forward with a compare-and-set, so two
exporters never send the same row at once; a crash mid-send just lets the claim lapse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.models import (
    ExportAttempt,
    Job,
    JobState,
    OutboxItem,
    OutboxState,
    Output,
    utcnow,
)
from storage.queue import set_state


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: base · 2^(attempt-1), capped, then `failed` after max_attempts."""

    base_seconds: float = 5.0
    max_seconds: float = 600.0
    max_attempts: int = 10

    def delay(self, attempts: int) -> float:
        return min(self.base_seconds * (2 ** max(attempts - 1, 0)), self.max_seconds)


def add_output(
    session: Session,
    job: Job,
    *,
    kind: str,
    sop_instance_uid: str,
    series_instance_uid: str,
    sop_class_uid: str,
    path: str,
    destinations: Sequence[str],
    now: datetime | None = None,
    model_version: str | None = None,
    predecessor_id: int | None = None,
) -> Output:
    """Record an output of `job` and queue it for every destination (idempotent per job+UID).

    `model_version` is the model that made it; `predecessor_id` the output (an earlier SR)
    this one replaces."""
    now = now or utcnow()
    output = session.scalar(
        select(Output).where(Output.job_id == job.id, Output.sop_instance_uid == sop_instance_uid)
    )
    if output is None:
        output = Output(
            job_id=job.id,
            kind=kind,
            sop_instance_uid=sop_instance_uid,
            series_instance_uid=series_instance_uid,
            sop_class_uid=sop_class_uid,
            path=path,
            created_at=now,
            model_version=model_version,
            predecessor_id=predecessor_id,
        )
        session.add(output)
        session.flush()
    for name in destinations:
        exists = session.scalar(
            select(OutboxItem).where(
                OutboxItem.output_id == output.id, OutboxItem.destination == name
            )
        )
        if exists is None:
            session.add(OutboxItem(output_id=output.id, destination=name, next_try_at=now))
    session.flush()
    return output


def claim_due(
    session: Session, limit: int = 50, claim_seconds: float = 120.0, now: datetime | None = None
) -> list[OutboxItem]:
    """Take up to `limit` pending rows whose time has come; each is ours for `claim_seconds`.

    PostgreSQL: the due rows are locked ``FOR UPDATE SKIP LOCKED`` and pushed forward in the
    same transaction, so concurrent exporters take disjoint rows without waiting on each
    other. SQLite (one writer at a time): a compare-and-set on ``next_try_at`` per row.
    """
    now = now or utcnow()
    due = (
        select(OutboxItem.id, OutboxItem.next_try_at)
        .where(OutboxItem.state == OutboxState.PENDING, OutboxItem.next_try_at <= now)
        .order_by(OutboxItem.next_try_at, OutboxItem.id)
        .limit(limit)
    )
    until = now + timedelta(seconds=claim_seconds)
    if session.get_bind().dialect.name == "postgresql":
        locked = due.with_only_columns(OutboxItem.id).with_for_update(skip_locked=True)
        ids = list(session.scalars(locked))
        if not ids:
            return []
        session.execute(
            update(OutboxItem)
            .where(OutboxItem.id.in_(ids))
            .values(next_try_at=until)
            .execution_options(synchronize_session=False)
        )
        items = session.scalars(
            select(OutboxItem)
            .where(OutboxItem.id.in_(ids))
            .order_by(OutboxItem.id)
            .execution_options(populate_existing=True)
        ).all()
        return sorted(items, key=lambda item: ids.index(item.id))
    rows = session.execute(due).all()
    claimed: list[OutboxItem] = []
    for row_id, due_at in rows:
        result = session.execute(
            update(OutboxItem)
            .where(
                OutboxItem.id == row_id,
                OutboxItem.state == OutboxState.PENDING,
                OutboxItem.next_try_at == due_at,
            )
            .values(next_try_at=until)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            item = session.get(OutboxItem, row_id, populate_existing=True)
            if item is not None:
                claimed.append(item)
    session.flush()
    return claimed


def release_claims(session: Session, now: datetime | None = None) -> int:
    """At start-up: pending rows become due now; returns how many were waiting.

    A process killed mid-send leaves its claimed rows with `next_try_at` pushed out by the
    claim length (minutes); without this they would wait for it to lapse. Rows only in backoff
    get one early try, which is harmless: a re-send of the same SOP Instance UID overwrites.
    """
    now = now or utcnow()
    result = session.execute(
        update(OutboxItem)
        .where(OutboxItem.state == OutboxState.PENDING, OutboxItem.next_try_at > now)
        .values(next_try_at=now)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def record_attempt(
    session: Session,
    item: OutboxItem,
    *,
    delivered: bool,
    status: int | None,
    error: str | None,
    policy: RetryPolicy,
    now: datetime | None = None,
    where: str | None = None,
) -> None:
    """Record one send; only the peer's Success (or Warning) marks it sent; settle the job.

    `where` (the destination's name and address) prefixes a failure's error, so the job list
    tells IT which PACS to look at."""
    now = now or utcnow()
    success = delivered and status is not None
    session.add(
        ExportAttempt(
            outbox_id=item.id, started_at=now, status=status, error=error, success=success
        )
    )
    item.attempts += 1
    item.last_status = status
    if success:
        item.state = OutboxState.SENT
        item.sent_at = now
        item.last_error = None
    else:
        if error is None and status is not None:
            error = f"peer answered status 0x{status:04X}"
        if where and error is not None:
            error = f"{where}: {error}"
        item.last_error = error
        if item.attempts >= policy.max_attempts:
            item.state = OutboxState.FAILED
        else:
            item.next_try_at = now + timedelta(seconds=policy.delay(item.attempts))
    session.flush()
    settle_job(session, item.output.job_id, now)


def settle_job(session: Session, job_id: int, now: datetime | None = None) -> None:
    """An exporting job is done when every row is sent, failed when any row failed for good."""
    job = session.get(Job, job_id)
    if job is None or job.state != JobState.EXPORTING:
        return
    states = list(
        session.scalars(select(OutboxItem.state).join(Output).where(Output.job_id == job_id))
    )
    if all(s == OutboxState.SENT for s in states):
        set_state(session, job, JobState.DONE, now=now)
    elif any(s == OutboxState.FAILED for s in states) and not any(
        s == OutboxState.PENDING for s in states
    ):
        failed = session.scalars(
            select(OutboxItem)
            .join(Output)
            .where(Output.job_id == job_id, OutboxItem.state == OutboxState.FAILED)
        ).all()
        detail = "; ".join(
            i.last_error
            if i.last_error and i.last_error.startswith(i.destination)
            else f"{i.destination}: {i.last_error}"
            for i in failed
        )
        set_state(
            session,
            job,
            JobState.FAILED,
            error=f"export failed ({detail})",
            error_code="export_failed",
            now=now,
        )


def retry_failed_exports(session: Session, job_id: int, now: datetime | None = None) -> int:
    """Manual retry: failed rows of the job go back to pending now; returns how many."""
    now = now or utcnow()
    items = session.scalars(
        select(OutboxItem)
        .join(Output)
        .where(Output.job_id == job_id, OutboxItem.state == OutboxState.FAILED)
    ).all()
    for item in items:
        item.state = OutboxState.PENDING
        item.attempts = 0
        item.next_try_at = now
    job = session.get(Job, job_id)
    if items and job is not None and job.state == JobState.FAILED:
        set_state(session, job, JobState.EXPORTING, now=now)
        job.error = None
        job.error_code = None
        job.finished_at = None
    session.flush()
    return len(items)


def send_now(session: Session, job_id: int, now: datetime | None = None) -> int:
    """Make the job's pending rows due immediately (the dashboard's "retry now")."""
    now = now or utcnow()
    items = session.scalars(
        select(OutboxItem)
        .join(Output)
        .where(Output.job_id == job_id, OutboxItem.state == OutboxState.PENDING)
    ).all()
    for item in items:
        item.next_try_at = now
    session.flush()
    return len(items)
