"""Recording received instances; a re-sent instance (same SOP Instance UID) adds nothing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Instance, Study, utcnow
from storage.queue import ensure_waiting_job


@dataclass(frozen=True)
class ReceivedInstance:
    """The few header fields the SCP indexes; everything else stays in the file."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    calling_ae_title: str | None = None
    accession_number: str | None = None
    patient_name: str | None = None  # PN as received; shown on the dashboard, never logged
    skip_reason: str | None = None

    def __post_init__(self) -> None:
        for name in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty")


def record_instance(
    session: Session, received: ReceivedInstance, now: datetime | None = None
) -> tuple[Instance, bool]:
    """Insert or refresh the instance row; return (row, created).

    A new processable instance puts its study's job in `waiting` (one waiting job per study);
    a re-sent one only bumps `times_received` and never creates a second job.
    """
    now = now or utcnow()
    study = session.scalar(
        select(Study).where(Study.study_instance_uid == received.study_instance_uid)
    )
    if study is None:
        study = Study(
            study_instance_uid=received.study_instance_uid,
            accession_number=received.accession_number,
            patient_name=received.patient_name,
            first_received_at=now,
            last_received_at=now,
        )
        session.add(study)
        session.flush()
    elif study.patient_name is None and received.patient_name:
        study.patient_name = received.patient_name
    existing = session.scalar(
        select(Instance).where(Instance.sop_instance_uid == received.sop_instance_uid)
    )
    if existing is not None:
        existing.times_received += 1
        existing.received_at = now
        existing.path = received.path
        existing.size_bytes = received.size_bytes
        session.flush()
        return existing, False
    row = Instance(
        study_id=study.id,
        series_instance_uid=received.series_instance_uid,
        sop_instance_uid=received.sop_instance_uid,
        sop_class_uid=received.sop_class_uid,
        transfer_syntax_uid=received.transfer_syntax_uid,
        path=received.path,
        size_bytes=received.size_bytes,
        calling_ae_title=received.calling_ae_title,
        received_at=now,
        skip_reason=received.skip_reason,
    )
    session.add(row)
    study.last_received_at = now
    session.flush()
    if received.skip_reason is None:
        ensure_waiting_job(session, study, now)
    return row, True


def processable_instances(session: Session, study_id: int) -> list[Instance]:
    """The study's instances we run the models on, ordered by series then arrival."""
    return list(
        session.scalars(
            select(Instance)
            .where(Instance.study_id == study_id, Instance.skip_reason.is_(None))
            .order_by(Instance.series_instance_uid, Instance.id)
        )
    )
