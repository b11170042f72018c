"""The audit trail: who viewed, changed, uploaded or exported what, when, from where.

`record` adds a row to the caller's Session, so the event commits or rolls back together with
the action it describes. Targets are job ids, user or token names, or UID hashes: never PHI.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import AuditEvent, utcnow


class AuditAction(StrEnum):
    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGOUT = "logout"
    VIEW_JOB = "view_job"
    VIEW_IMAGE = "view_image"
    RETRY = "retry"
    PROCESS_NOW = "process_now"
    UPLOAD = "upload"
    UPLOAD_REFUSED = "upload_refused"
    USER_CREATED = "user_created"
    USER_DISABLED = "user_disabled"
    PASSWORD_CHANGED = "password_changed"
    TOKEN_CREATED = "token_created"
    TOKEN_REVOKED = "token_revoked"
    VIEW_AUDIT = "view_audit"
    EXPORT = "export"
    UID_CONFLICT = "uid_conflict"  # a SOP Instance UID received again with other content
    REVIEW = "review"  # a radiologist accepted, corrected or rejected an AI result
    REVIEW_REFUSED = "review_refused"  # a review that was not accepted (why, in detail)
    VIEW_REVIEWS = "view_reviews"
    EXPORT_CORRECTIONS = "export_corrections"  # reviewed images written as training data


def record(
    session: Session,
    action: AuditAction | str,
    *,
    actor: str | None,
    target: str | None = None,
    client: str | None = None,
    token_name: str | None = None,
    detail: str | None = None,
    at: datetime | None = None,
) -> AuditEvent:
    """Add one event to `session` (flushed, not committed)."""
    event = AuditEvent(
        at=at or utcnow(),
        actor=actor[:64] if actor else None,
        token_name=token_name,
        action=AuditAction(action).value,
        target=target[:128] if target else None,
        client=client[:64] if client else None,
        detail=detail,
    )
    session.add(event)
    session.flush()
    return event


def recent(
    session: Session,
    *,
    limit: int = 100,
    offset: int = 0,
    action: str | None = None,
    actor: str | None = None,
) -> tuple[Sequence[AuditEvent], int]:
    """A page of events, newest first, and how many match."""
    query = select(AuditEvent)
    count = select(func.count(AuditEvent.id))
    if action:
        query = query.where(AuditEvent.action == action)
        count = count.where(AuditEvent.action == action)
    if actor:
        query = query.where(AuditEvent.actor == actor)
        count = count.where(AuditEvent.actor == actor)
    rows = session.scalars(
        query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit).offset(offset)
    ).all()
    return rows, session.scalar(count) or 0
