from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select, text

from storage.db import session_scope
from storage.instances import ReceivedInstance, record_instance
from storage.models import Job, JobState, utcnow
from storage.queue import (
    claim_next_job,
    process_now,
    queue_stable_studies,
    renew_lease,
    requeue_expired,
    requeue_orphans,
    retry_job,
    set_state,
)


def _received(
    sop: str, study: str = "1.2.3", series: str = "1.2.3.4", skip: str | None = None
) -> ReceivedInstance:
    return ReceivedInstance(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"/x/{sop}.dcm",
        size_bytes=10,
        skip_reason=skip,
    )


def _job_count(any_engine: Engine) -> int:
    with session_scope(any_engine) as s:
        return s.scalar(select(func.count(Job.id))) or 0


def test_record_instance_resent_same_uid_no_second_row_or_job(any_engine: Engine) -> None:
    with session_scope(any_engine) as s:
        _, created1 = record_instance(s, _received("1.2.3.4.5"))
    with session_scope(any_engine) as s:
        row, created2 = record_instance(s, _received("1.2.3.4.5"))
        assert row.times_received == 2
    assert (created1, created2) == (True, False)
    assert _job_count(any_engine) == 1


def test_record_instance_skipped_object_creates_no_job(any_engine: Engine) -> None:
    with session_scope(any_engine) as s:
        record_instance(s, _received("1.9", skip="our own object"))
    assert _job_count(any_engine) == 0


def test_record_instance_several_instances_one_waiting_job(any_engine: Engine) -> None:
    with session_scope(any_engine) as s:
        for n in range(3):
            record_instance(s, _received(f"1.2.3.9.{n}"))
    with session_scope(any_engine) as s:
        states = list(s.scalars(select(Job.state)))
    assert states == [JobState.WAITING]


def test_queue_stable_studies_waits_for_quiet_period(any_engine: Engine) -> None:
    now = utcnow()
    with session_scope(any_engine) as s:
        record_instance(s, _received("1.5"), now=now)
    with session_scope(any_engine) as s:
        assert queue_stable_studies(s, 10, now=now + timedelta(seconds=5)) == []
    with session_scope(any_engine) as s:
        queued = queue_stable_studies(s, 10, now=now + timedelta(seconds=11))
        assert len(queued) == 1
        job = s.get(Job, queued[0])
        assert job is not None and job.state == JobState.QUEUED and job.queued_at is not None


def test_process_now_waiting_job_is_queued_and_other_states_refused(any_engine: Engine) -> None:
    with session_scope(any_engine) as s:
        record_instance(s, _received("1.6"))
        job_id = s.scalars(select(Job.id)).one()
    with session_scope(any_engine) as s:
        assert process_now(s, job_id) is True
    with session_scope(any_engine) as s:
        assert process_now(s, job_id) is False
        job = s.get(Job, job_id)
        assert job is not None and job.state == JobState.QUEUED and job.forced


def test_claim_next_job_concurrent_workers_each_job_claimed_once(any_engine: Engine) -> None:
    with session_scope(any_engine) as s:
        for n in range(6):
            record_instance(s, _received(f"2.{n}", study=f"9.{n}"))
        for job_id in s.scalars(select(Job.id)):
            process_now(s, job_id)
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            with session_scope(any_engine) as s:
                job = claim_next_job(s, name, 60)
                if job is None:
                    return
                with lock:
                    claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 6


def test_requeue_expired_lease_returns_job_to_queue(any_engine: Engine) -> None:
    with session_scope(any_engine) as s:
        record_instance(s, _received("3.1"))
        job_id = s.scalars(select(Job.id)).one()
        process_now(s, job_id)
    with session_scope(any_engine) as s:
        # A lease long enough that a loaded machine cannot outlive it between two statements.
        job = claim_next_job(s, "host:0", lease_seconds=60)
        assert job is not None and job.attempts == 1
    with session_scope(any_engine) as s:
        assert requeue_expired(s, now=utcnow()) == []
        assert requeue_expired(s, now=utcnow() + timedelta(seconds=61)) == [job_id]
    with session_scope(any_engine) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == JobState.QUEUED and job.claimed_by is None


def test_requeue_orphans_running_job_of_this_node_requeued_at_start(any_engine: Engine) -> None:
    with session_scope(any_engine) as s:
        record_instance(s, _received("4.1"))
        job_id = s.scalars(select(Job.id)).one()
        process_now(s, job_id)
        claim_next_job(s, "hostA:0", lease_seconds=3600)
    with session_scope(any_engine) as s:
        assert requeue_orphans(s, "hostB:") == []
        assert requeue_orphans(s, "hostA:") == [job_id]


def test_retry_job_failed_job_requeued_with_attempts_reset(any_engine: Engine) -> None:
    with session_scope(any_engine) as s:
        record_instance(s, _received("5.1"))
        job = s.scalars(select(Job)).one()
        set_state(s, job, JobState.FAILED, error="boom", error_code="internal_error")
        job.attempts = 3
        job_id = job.id
    with session_scope(any_engine) as s:
        assert retry_job(s, job_id) is True
        job = s.get(Job, job_id)
        assert job is not None and job.state == JobState.QUEUED and job.attempts == 0


def _queued_jobs(engine: Engine, count: int, prefix: str) -> list[int]:
    with session_scope(engine) as s:
        for n in range(count):
            record_instance(s, _received(f"{prefix}.{n}", study=f"{prefix}.9.{n}"))
        ids = list(s.scalars(select(Job.id).order_by(Job.id)))
        for job_id in ids:
            process_now(s, job_id)
    return ids


@pytest.mark.parametrize("any_db_url", ["postgres"], indirect=True)
def test_claim_next_job_postgres_locked_row_skipped_without_waiting(any_engine: Engine) -> None:
    first, second = _queued_jobs(any_engine, 2, "6")
    # Another transaction holds the oldest queued job's row (as a store taking in a late
    # instance does in ensure_waiting_job).
    with session_scope(any_engine) as holder:
        holder.scalar(select(Job).where(Job.id == first).with_for_update())
        started = time.monotonic()
        with session_scope(any_engine) as s:
            s.execute(text("SET LOCAL lock_timeout = '3s'"))  # a waiting claim fails, not hangs
            job = claim_next_job(s, "w1", 60)
            claimed = job.id if job is not None else None
        waited = time.monotonic() - started
    assert claimed == second
    assert waited < 1.0


@pytest.mark.parametrize("any_db_url", ["postgres"], indirect=True)
def test_requeue_expired_lease_renewed_meanwhile_not_requeued(any_engine: Engine) -> None:
    (job_id,) = _queued_jobs(any_engine, 1, "7")
    with session_scope(any_engine) as s:
        claim_next_job(s, "w1", lease_seconds=1)
    late = utcnow() + timedelta(seconds=5)
    requeued: list[list[int]] = []
    with session_scope(any_engine) as heartbeat:
        # The worker's heartbeat renews the lease; before it commits, a reaper sees the old,
        # expired lease and tries to re-queue the job.
        assert renew_lease(heartbeat, job_id, "w1", lease_seconds=60)

        def reap() -> None:
            with session_scope(any_engine) as s:
                requeued.append(requeue_expired(s, now=late))

        reaper = threading.Thread(target=reap)
        reaper.start()
        time.sleep(0.5)
    reaper.join(10)
    with session_scope(any_engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        state, claimed_by = job.state, job.claimed_by
    assert requeued == [[]]
    assert (state, claimed_by) == (JobState.RUNNING, "w1")
