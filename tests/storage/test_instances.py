"""record_instance and the instances table's unique indexes, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from storage.db import session_scope
from storage.instances import ReceivedInstance, record_instance
from storage.models import AuditEvent, Instance, Job, Study, utcnow
from storage.queue import queue_stable_studies

SHA_A, SHA_B = "a" * 64, "b" * 64


def _received(sop: str, sha: str, study: str = "1.2.3") -> ReceivedInstance:
    return ReceivedInstance(
        study_instance_uid=study,
        series_instance_uid=f"{study}.4",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"/x/{sop}.{sha[:4]}.dcm",
        size_bytes=10,
        content_sha256=sha,
    )


def test_record_instance_same_bytes_again_restarts_the_quiet_clock(any_engine: Engine) -> None:
    with session_scope(any_engine) as s:
        record_instance(s, _received("1.9", SHA_A))
        s.execute(update(Study).values(last_received_at=utcnow() - timedelta(minutes=2)))
    with session_scope(any_engine) as s:
        row, created = record_instance(s, _received("1.9", SHA_A))
        assert (created, row.times_received) == (False, 2)
    with session_scope(any_engine) as s:
        assert queue_stable_studies(s, 30) == []  # being re-sent: not quiet


def test_record_instance_other_bytes_copy_in_its_own_study_no_job(any_engine: Engine) -> None:
    with session_scope(any_engine) as s:
        first, _ = record_instance(s, _received("1.9", SHA_A, study="1.2.3"))
    with session_scope(any_engine) as s:
        copy, created = record_instance(s, _received("1.9", SHA_B, study="1.2.7"))
        assert created and copy.conflict_of_id == first.id and copy.path != first.path
        assert copy.study.study_instance_uid == "1.2.7"
        assert (copy.skip_reason or "").startswith("uid_conflict:")
    with session_scope(any_engine) as s:
        assert s.get(Instance, first.id).path == first.path  # type: ignore[union-attr]
        assert len(s.scalars(select(Job)).all()) == 1
        (event,) = s.scalars(select(AuditEvent)).all()
        assert event.action == "uid_conflict" and event.target and event.target.startswith("sop:")


@pytest.mark.parametrize(
    ("second_conflict_of_first", "sha"),
    [(False, SHA_B), (True, SHA_A)],
    ids=["two-originals", "same-bytes-twice"],
)
def test_instances_unique_indexes_refuse_a_second_original_or_same_bytes(
    any_engine: Engine, second_conflict_of_first: bool, sha: str
) -> None:
    with session_scope(any_engine) as s:
        first, _ = record_instance(s, _received("1.9", SHA_A))
        study_id = first.study_id
    with pytest.raises(IntegrityError), session_scope(any_engine) as s:
        s.add(
            Instance(
                study_id=study_id,
                series_instance_uid="1.2.3.4",
                sop_instance_uid="1.9",
                sop_class_uid="1.2",
                transfer_syntax_uid="1.2",
                path="/x/other.dcm",
                size_bytes=1,
                content_sha256=sha,
                conflict_of_id=first.id if second_conflict_of_first else None,
            )
        )
