"""Instances stored but not analysed (other modalities, our own SEG/SR, unreadable headers).

IT sees why each one was skipped; the reason text comes from dicom_io.read.skip_reason and
names only the SOP class or modality, never patient data.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_io.errors import SKIP_REASONS
from service.logs import uid_hash
from storage.models import Instance, Study


class SkippedInstancePublic(BaseModel):
    sop_instance_uid: str
    series_uid_hash: str = Field(description="8 hex of sha256 of the Series Instance UID")
    study_instance_uid: str
    sop_class_uid: str
    received_at: datetime
    calling_ae_title: str | None
    times_received: int
    skip_code: str = Field(description="Stable code, e.g. not_ultrasound, our_own_object")
    skip_reason: str = Field(description="Why it is stored but not analysed, in plain words")


class SkippedInstancesPublic(BaseModel):
    data: list[SkippedInstancePublic]
    count: int


def _split(reason: str) -> tuple[str, str]:
    """`code: text` → (code, text); rows from before plain-text reasons hold a bare code."""
    code, sep, _ = reason.partition(":")
    if sep and code and " " not in code:
        return code, reason
    return reason, f"{reason}: {SKIP_REASONS.get(reason, reason)}"


def list_not_processed(session: Session, limit: int, offset: int) -> SkippedInstancesPublic:
    """Newest first."""
    query = (
        select(Instance, Study.study_instance_uid)
        .join(Study)
        .where(Instance.skip_reason.is_not(None))
    )
    count = session.scalar(select(func.count(Instance.id)).where(Instance.skip_reason.is_not(None)))
    rows = session.execute(
        query.order_by(Instance.received_at.desc(), Instance.id.desc()).limit(limit).offset(offset)
    ).all()
    data = []
    for instance, study_uid in rows:
        code, text = _split(instance.skip_reason or "")
        data.append(
            SkippedInstancePublic(
                sop_instance_uid=instance.sop_instance_uid,
                series_uid_hash=uid_hash(instance.series_instance_uid),
                study_instance_uid=study_uid,
                sop_class_uid=instance.sop_class_uid,
                received_at=instance.received_at,
                calling_ae_title=instance.calling_ae_title,
                times_received=instance.times_received,
                skip_code=code,
                skip_reason=text,
            )
        )
    return SkippedInstancesPublic(data=data, count=count or 0)
