"""SQLAlchemy 2 models: what IT sees on the dashboard and what the queue and outbox claim.

One row per received instance, one job per processing of a study, one output per object we
create, one outbox row per (output, destination) and one export attempt row per try.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Aware UTC now; every timestamp in the database is UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware UTC datetimes and gives them back aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobState(StrEnum):
    WAITING = "waiting"  # instances still arriving
    QUEUED = "queued"
    RUNNING = "running"
    EXPORTING = "exporting"
    DONE = "done"
    FAILED = "failed"


class OutboxState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64))
    # PatientName (PN) as received, shown on the dashboard only; never logged.
    patient_name: Mapped[str | None] = mapped_column(String(324))
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    instances: Mapped[list[Instance]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study")


class Instance(Base):
    """One received content of a SOP Instance UID.

    The first content received for a UID is its original (``conflict_of_id`` None); the same
    UID arriving later with other bytes is kept beside it as a conflicting copy, never
    processed, so one patient's pixels are never attributed to another's study.
    """

    __tablename__ = "instances"
    __table_args__ = (
        # One original per SOP Instance UID: of two racing stores, one wins, one is a copy.
        Index(
            "uq_instances_sop_original",
            "sop_instance_uid",
            unique=True,
            sqlite_where=text("conflict_of_id IS NULL"),
            postgresql_where=text("conflict_of_id IS NULL"),
        ),
        # The same bytes are recorded once (rows from before 0003 hold NULL until compared).
        UniqueConstraint("sop_instance_uid", "content_sha256", name="uq_instances_sop_content"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    # sha256 hex of the bytes as received; None for rows recorded before it was kept.
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    # Set on a conflicting copy: the original row of the same SOP Instance UID.
    conflict_of_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    times_received: Mapped[int] = mapped_column(Integer, default=1)
    # None: we process it; otherwise the reason we store it but do not process it.
    skip_reason: Mapped[str | None] = mapped_column(Text)

    study: Mapped[Study] = relationship(back_populates="instances")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True, default=JobState.WAITING)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    running_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exporting_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(128))
    model_status: Mapped[str | None] = mapped_column(String(128))
    image_count: Mapped[int | None] = mapped_column(Integer)
    predicted_class: Mapped[str | None] = mapped_column(String(16))
    probabilities: Mapped[dict[str, float] | None] = mapped_column(JSON)
    # Seconds spent in each pipeline step, e.g. {"decode": 0.1, "inference": 0.8}.
    stage_seconds: Mapped[dict[str, float] | None] = mapped_column(JSON)
    # Per image results for the dashboard: [{sop_instance_uid, frame, class, probabilities,
    # area_px, area_mm2, overlay}]
    results: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)

    study: Mapped[Study] = relationship(back_populates="jobs")
    outputs: Mapped[list[Output]] = relationship(back_populates="job")


class Output(Base):
    """A DICOM object we created (SEG or SR).

    Its UID derives from what it holds (model version and source images), so a re-run of
    the same job reuses it and a changed SR is a new instance naming its predecessor.
    """

    __tablename__ = "outputs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "seg" | "sr"
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The model version that made it (None: rows from before 0004).
    model_version: Mapped[str | None] = mapped_column(String(128))
    # An SR: the earlier SR of the study it replaces (its Predecessor Documents Sequence).
    predecessor_id: Mapped[int | None] = mapped_column(ForeignKey("outputs.id"))

    job: Mapped[Job] = relationship(back_populates="outputs")
    outbox: Mapped[list[OutboxItem]] = relationship(back_populates="output")
    predecessor: Mapped[Output | None] = relationship(remote_side="Output.id")


class AnalysedImage(Base):
    """One source instance analysed by one model version: what a later job of the study reuses.

    A late image makes a new job; the images this model version already analysed are not
    analysed (or segmented, or sent) again: their frames stay in the SEG named here and their
    summary (best class probabilities, findings) goes into the study's new SR.
    """

    __tablename__ = "analysed_images"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "model_version", name="uq_analysed_images_sop_model"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(128))
    # The SEG holding its lesion frames; None when the model found no lesion on it.
    seg_output_id: Mapped[int | None] = mapped_column(ForeignKey("outputs.id"))
    # {"probabilities": {...}, "frames": n, "findings": [LesionFinding fields, ...]}
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    seg_output: Mapped[Output | None] = relationship()


class OutboxItem(Base):
    """One output to one destination: the only way anything leaves WeCare."""

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("output_id", "destination", name="uq_outbox_output_dest"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    output_id: Mapped[int] = mapped_column(ForeignKey("outputs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True, default=OutboxState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    output: Mapped[Output] = relationship(back_populates="outbox")
    attempts_log: Mapped[list[ExportAttempt]] = relationship(back_populates="outbox_item")


class ExportAttempt(Base):
    """One C-STORE try of one outbox item: the history IT reads when a PACS refuses us."""

    __tablename__ = "export_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status: Mapped[int | None] = mapped_column(Integer)  # peer's DIMSE status, None if none
    error: Mapped[str | None] = mapped_column(Text)
    success: Mapped[bool] = mapped_column(Boolean, default=False)

    outbox_item: Mapped[OutboxItem] = relationship(back_populates="attempts_log")


# ---- access control and audit (dashboard and API) ---------------------------------------------


class Role(StrEnum):
    """Dashboard and API roles, each including the ones before it."""

    VIEWER = "viewer"  # sees jobs and images
    RADIOLOGIST = "radiologist"  # + accept, correct or reject a mask and send the result
    OPERATOR = "operator"  # + retry, process now, upload
    ADMIN = "admin"  # + users, tokens, audit trail, configuration

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role | str) -> bool:
        """True when this role may do what `needed` may do."""
        return self.rank >= Role(needed).rank


class User(Base):
    """A person (or a script's owner) who may use the dashboard and API."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(Text)  # argon2id, PHC string
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user")


class ApiToken(Base):
    """A bearer token for scripts, acting as its user; only its sha256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(back_populates="tokens")


class WebSession(Base):
    """A dashboard log-in: the cookie holds the (signed) id, the table its sha256 and CSRF token.

    Server-side, so log-out and disabling a user end the session at once."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)

    user: Mapped[User] = relationship()


class AuditEvent(Base):
    """Who did or saw what, when, from where; written in the transaction of the action."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str | None] = mapped_column(String(64))  # user name; None: unknown
    token_name: Mapped[str | None] = mapped_column(String(64))  # set when via an API token
    action: Mapped[str] = mapped_column(String(32), index=True)
    target: Mapped[str | None] = mapped_column(String(128))  # job id, user name, uid hash
    client: Mapped[str | None] = mapped_column(String(64))  # client IP address
    detail: Mapped[str | None] = mapped_column(Text)  # never PHI


# ---- radiologist reviews (issue 29) -----------------------------------------------------------


class Review(Base):
    """A radiologist's accept, edit or reject of the AI result on one image of a done job.

    Each review that changes anything makes a corrected SEG (none for a rejection or an empty
    outline) and a review SR, both sent through the outbox; the AI outputs stay as they were.
    `content_key` is unique: the same review sent twice (a double click) is one review.
    """

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    reviewer: Mapped[str] = mapped_column(String(64))  # user name
    action: Mapped[str] = mapped_column(String(16))  # accept | edit | reject
    origin: Mapped[str] = mapped_column(String(16))  # ai | scratch
    outcome: Mapped[str] = mapped_column(String(16))  # accepted | corrected | drawn | rejected
    label: Mapped[str | None] = mapped_column(String(16))  # radiologist's class, None: AI's
    # [{"frame": n, "lesions": [[[x, y], ...], ...], "measurements": [...]}] per reviewed frame
    frames: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    content_key: Mapped[str] = mapped_column(String(64), unique=True)
    seg_output_id: Mapped[int | None] = mapped_column(ForeignKey("outputs.id"))
    sr_output_id: Mapped[int | None] = mapped_column(ForeignKey("outputs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    job: Mapped[Job] = relationship()
    seg_output: Mapped[Output | None] = relationship(foreign_keys=[seg_output_id])
    sr_output: Mapped[Output | None] = relationship(foreign_keys=[sr_output_id])
