"""record_instance and the instances table's unique indexes, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
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


def _columns(row: object, names: tuple[str, ...]) -> tuple[object, ...]:
    return tuple(getattr(row, n) for n in names)


INSTANCE_COLUMNS = (
    "series_instance_uid", "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "path",
    "size_bytes", "calling_ae_title", "times_received", "skip_reason", "content_sha256",
    "conflict_of_id",
)


def test_record_new_instance_writes_what_record_instance_writes(any_engine: Engine) -> None:
    """The listener's Core fast path for a new UID: the same study, instance and job rows as
    the ORM path; a second image of the study joins the same waiting job."""
    from storage.instances import record_new_instance

    with session_scope(any_engine) as s:
        orm_row, _ = record_instance(s, replace(_received("1.9", SHA_A, study="1.2.3"),
                                                patient_name="ORM^A", accession_number="A1"))
        orm = _columns(orm_row, INSTANCE_COLUMNS)
    with any_engine.begin() as conn:
        first = record_new_instance(conn, replace(_received("1.10", SHA_A, study="1.2.8"),
                                                  patient_name="CORE^B", accession_number="B1"))
        second = record_new_instance(conn, _received("1.11", SHA_B, study="1.2.8"))
    assert first is not None and second is not None and second > first
    with session_scope(any_engine) as s:
        core_row = s.get(Instance, first)
        assert core_row is not None
        core = _columns(core_row, INSTANCE_COLUMNS)
        # Same columns, bar the UID and path that differ by construction.
        assert core[2:4] == orm[2:4] and core[5:] == orm[5:]
        study = s.scalars(select(Study).where(Study.study_instance_uid == "1.2.8")).one()
        assert (study.patient_name, study.accession_number) == ("CORE^B", "B1")
        assert study.first_received_at is not None and study.last_received_at is not None
        jobs = s.scalars(select(Job).where(Job.study_id == study.id)).all()
        assert [j.state for j in jobs] == ["waiting"]
        assert core_row.received_at is not None


def test_record_new_instance_known_uid_returns_none_and_writes_nothing(any_engine: Engine) -> None:
    """A UID a concurrent store committed first: None, so the caller rolls back and takes the
    ORM path that sorts out re-sends and conflicts."""
    from storage.instances import record_new_instance

    with session_scope(any_engine) as s:
        record_instance(s, _received("1.9", SHA_A))
    with any_engine.connect() as conn, conn.begin() as transaction:
        assert record_new_instance(conn, _received("1.9", SHA_B, study="1.2.7")) is None
        transaction.rollback()
    with session_scope(any_engine) as s:
        assert len(s.scalars(select(Instance)).all()) == 1
        assert s.scalars(select(Study).where(Study.study_instance_uid == "1.2.7")).first() is None


def test_record_new_instance_skipped_makes_no_job_and_names_a_study(any_engine: Engine) -> None:
    """A stored-not-analysed instance (routing): a row, no job; a later study row gets the
    patient name an earlier nameless instance lacked."""
    from storage.instances import record_new_instance

    with any_engine.begin() as conn:
        assert record_new_instance(
            conn, replace(_received("1.9", SHA_A), skip_reason="not_breast: x")
        ) is not None
        assert record_new_instance(
            conn, replace(_received("1.12", SHA_A), skip_reason="not_breast: x",
                          patient_name="LATE^NAME")
        ) is not None
    with session_scope(any_engine) as s:
        assert s.scalars(select(Job)).all() == []
        (study,) = s.scalars(select(Study)).all()
        assert study.patient_name == "LATE^NAME"


def test_record_new_instance_joins_a_queued_job(any_engine: Engine) -> None:
    """A late image of a queued (not yet claimed) study joins that job, as ensure_waiting_job."""
    from storage.instances import record_new_instance

    with session_scope(any_engine) as s:
        record_instance(s, _received("1.9", SHA_A))
        s.execute(update(Job).values(state="queued"))
    with any_engine.begin() as conn:
        assert record_new_instance(conn, _received("1.13", SHA_A)) is not None
    with session_scope(any_engine) as s:
        assert [j.state for j in s.scalars(select(Job)).all()] == ["queued"]
