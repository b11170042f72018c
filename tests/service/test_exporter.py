"""The exporter drains the outbox and leaves an audit event for every delivery attempt."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from service.config import load_settings
from service.exporter import export_once
from storage.db import session_scope
from storage.instances import ReceivedInstance, record_instance
from storage.models import AuditEvent, Job, JobState, OutboxItem, OutboxState
from storage.outbox import add_output
from storage.queue import set_state
from tests.factories import make_us_image
from tests.integration.peers import free_port, storescp


def _job_with_output(engine: Engine, tmp_path: Path) -> int:
    path = make_us_image(tmp_path / "out.dcm")  # any DICOM file stands in for a SEG here
    with session_scope(engine) as s:
        record_instance(
            s,
            ReceivedInstance(
                study_instance_uid="1.2.3",
                series_instance_uid="1.2.3.4",
                sop_instance_uid="1.2.3.4.5",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path="/x",
                size_bytes=1,
            ),
        )
        job = s.scalars(select(Job)).one()
        add_output(
            s,
            job,
            kind="seg",
            sop_instance_uid="2.25.7",
            series_instance_uid="2.25.8",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
            path=str(path),
            destinations=["pacs"],
        )
        set_state(s, job, JobState.EXPORTING)
        return job.id


def _settings(port: int) -> object:
    return load_settings(
        None,
        destinations=[{"name": "pacs", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port}],
        export={"timeout_seconds": 5},
    )


@pytest.mark.integration
def test_export_once_down_then_up_audited_each_attempt(engine: Engine, tmp_path: Path) -> None:
    job_id = _job_with_output(engine, tmp_path)
    port = free_port()
    assert export_once(_settings(port), engine) == 1  # type: ignore[arg-type]
    with session_scope(engine) as s:
        item = s.scalars(select(OutboxItem)).one()
        assert item.state == OutboxState.PENDING and item.attempts == 1
        item.next_try_at = item.created_at  # due again now
    with storescp(tmp_path / "peer", port=port):
        assert export_once(_settings(port), engine) == 1  # type: ignore[arg-type]
    with session_scope(engine) as s:
        events = s.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        assert [(e.action, e.actor, e.target) for e in events] == [
            ("export", "exporter", f"job:{job_id}")
        ] * 2
        assert "not delivered" in (events[0].detail or "")
        assert events[1].detail == "seg to pacs: delivered"
        assert s.get(Job, job_id).state == JobState.DONE  # type: ignore[union-attr]


@pytest.mark.integration
def test_woken_exporter_sends_at_once_and_stops_promptly(engine: Engine, tmp_path: Path) -> None:
    """A worker in the same process wakes the exporter once a job's outputs are in the outbox
    (issue 31): it sends them at once instead of at its next poll (30 s here), and an idle
    exporter still notices `stop` within a fraction of a second."""
    import threading
    import time

    from service.exporter import run_exporter, wake_exporter

    port = free_port()
    settings = load_settings(
        None,
        destinations=[{"name": "pacs", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port}],
        export={"timeout_seconds": 5, "poll_seconds": 30},
    )
    stop = threading.Event()
    with storescp(tmp_path / "peer", port=port):
        exporter = threading.Thread(target=run_exporter, args=(settings, engine, stop))
        exporter.start()
        try:
            time.sleep(0.5)  # its first round found nothing: now it sleeps for 30 s
            job_id = _job_with_output(engine, tmp_path)
            woken = time.monotonic()
            wake_exporter()
            while time.monotonic() - woken < 10:
                with session_scope(engine) as s:
                    if s.get(Job, job_id).state == JobState.DONE:  # type: ignore[union-attr]
                        break
                time.sleep(0.05)
            sent_after = time.monotonic() - woken
        finally:
            stopped = time.monotonic()
            stop.set()
            exporter.join(5)
        assert not exporter.is_alive() and time.monotonic() - stopped < 2
    assert sent_after < 10  # not the 30 s poll
