from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, select, text

from storage.db import session_scope
from storage.instances import ReceivedInstance, record_instance
from storage.models import ExportAttempt, Job, JobState, OutboxItem, OutboxState, utcnow
from storage.outbox import (
    RetryPolicy,
    add_output,
    claim_due,
    record_attempt,
    retry_failed_exports,
)
from storage.queue import set_state

POLICY = RetryPolicy(base_seconds=5, max_seconds=60, max_attempts=3)


def _exporting_job(any_engine: Engine, destinations: list[str]) -> int:
    with session_scope(any_engine) as s:
        record_instance(
            s,
            ReceivedInstance(
                study_instance_uid="1.2",
                series_instance_uid="1.2.3",
                sop_instance_uid="1.2.3.4",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path="/x",
                size_bytes=1,
            ),
        )
        job = s.scalars(select(Job)).one()
        for kind, uid in (("seg", "2.25.1"), ("sr", "2.25.2")):
            add_output(
                s,
                job,
                kind=kind,
                sop_instance_uid=uid,
                series_instance_uid=uid + ".1",
                sop_class_uid="1.2",
                path=f"/out/{uid}.dcm",
                destinations=destinations,
            )
        set_state(s, job, JobState.EXPORTING)
        return job.id


def test_add_output_twice_same_uid_one_row_per_destination(any_engine: Engine) -> None:
    job_id = _exporting_job(any_engine, ["pacs", "archive"])
    with session_scope(any_engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        add_output(
            s,
            job,
            kind="seg",
            sop_instance_uid="2.25.1",
            series_instance_uid="2.25.1.1",
            sop_class_uid="1.2",
            path="/out/2.25.1.dcm",
            destinations=["pacs", "archive"],
        )
        assert len(s.scalars(select(OutboxItem)).all()) == 4


def test_claim_due_claimed_rows_not_claimed_again(any_engine: Engine) -> None:
    _exporting_job(any_engine, ["pacs"])
    with session_scope(any_engine) as s:
        first = claim_due(s)
    with session_scope(any_engine) as s:
        second = claim_due(s)
    assert len(first) == 2 and second == []


def test_record_attempt_failure_backs_off_and_never_marks_sent(any_engine: Engine) -> None:
    job_id = _exporting_job(any_engine, ["pacs"])
    now = utcnow()
    with session_scope(any_engine) as s:
        for item in claim_due(s, now=now):
            record_attempt(
                s,
                item,
                delivered=False,
                status=None,
                error="association rejected",
                policy=POLICY,
                now=now,
            )
    with session_scope(any_engine) as s:
        items = s.scalars(select(OutboxItem)).all()
        assert all(i.state == OutboxState.PENDING and i.sent_at is None for i in items)
        assert all(i.next_try_at >= now + timedelta(seconds=5) for i in items)
        assert s.get(Job, job_id).state == JobState.EXPORTING  # type: ignore[union-attr]
        assert s.scalars(select(ExportAttempt.success)).all() == [False, False]


def test_record_attempt_all_sent_job_done(any_engine: Engine) -> None:
    job_id = _exporting_job(any_engine, ["pacs"])
    with session_scope(any_engine) as s:
        for item in claim_due(s):
            record_attempt(s, item, delivered=True, status=0, error=None, policy=POLICY)
    with session_scope(any_engine) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == JobState.DONE and job.finished_at is not None


def test_record_attempt_exhausted_job_failed_then_manual_retry_pending(any_engine: Engine) -> None:
    job_id = _exporting_job(any_engine, ["pacs"])
    now = utcnow()
    for attempt in range(POLICY.max_attempts):
        t = now + timedelta(hours=attempt)
        with session_scope(any_engine) as s:
            for item in claim_due(s, now=t):
                record_attempt(
                    s, item, delivered=False, status=0xA700, error=None, policy=POLICY, now=t
                )
    with session_scope(any_engine) as s:
        job = s.get(Job, job_id)
        assert (
            job is not None and job.state == JobState.FAILED and job.error_code == "export_failed"
        )
        assert "0xA700" in (job.error or "")
    with session_scope(any_engine) as s:
        assert retry_failed_exports(s, job_id) == 2
    with session_scope(any_engine) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == JobState.EXPORTING
        assert {i.state for i in s.scalars(select(OutboxItem))} == {OutboxState.PENDING}


def test_retry_policy_delay_doubles_and_caps() -> None:
    assert [POLICY.delay(n) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 40, 60]


@pytest.mark.parametrize("any_db_url", ["postgres"], indirect=True)
def test_claim_due_postgres_rows_locked_by_another_exporter_skipped(any_engine: Engine) -> None:
    _exporting_job(any_engine, ["pacs", "archive"])
    with session_scope(any_engine) as other:
        # Another exporter is inside its claim transaction, holding two of the four rows.
        held = other.scalars(
            select(OutboxItem.id).order_by(OutboxItem.id).limit(2).with_for_update()
        ).all()
        with session_scope(any_engine) as s:
            s.execute(text("SET LOCAL lock_timeout = '3s'"))  # a waiting claim fails, not hangs
            mine = [item.id for item in claim_due(s)]
    with session_scope(any_engine) as s:
        again = claim_due(s)
    assert len(held) == 2 and len(mine) == 2
    assert not set(held) & set(mine)
    assert [item.id for item in again] == list(held)
