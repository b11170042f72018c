"""Faults, in-process over loopback: a destination down or refusing, a disk below the free-space
floor, a locked database. Nothing is acknowledged that is not stored, nothing is `sent` that
the peer did not acknowledge, and each part recovers by itself when the fault goes away.

(The real-process version of "destination down a long time, then back" is
tests/integration/test_end_to_end.py::test_destination_down_then_up_...; kill -9 is in
test_crash_recovery.py.)
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import UltrasoundImageStorage  # type: ignore[attr-defined]
from sqlalchemy import Engine, create_engine, event

from service.config import Settings
from service.exporter import export_once, run_exporter
from service.ingest import StoreContext
from service.scp import start_scp
from service.web.app import create_app
from service.worker import ModelProvider, run_worker
from storage.db import session_scope, upgrade
from storage.files import DataDir
from storage.instances import ReceivedInstance, record_instance
from storage.models import Job, JobState, OutboxItem, OutboxState
from storage.outbox import add_output
from storage.queue import process_now, set_state
from tests.factories import make_us_image
from tests.integration.peers import free_port, wait_for
from tests.robustness.helpers import SUCCESS, echo, query, send_files
from tests.service.test_pipeline import ThresholdModel
from tests.service.test_web import FakeRuntime

OUT_OF_RESOURCES = 0xA700


def _engine(data_dir: DataDir, busy_ms: int = 1000) -> Engine:
    """The service's SQLite engine (storage.db.make_engine's pragmas) with a short busy
    timeout, so a locked database fails in a second rather than make_engine's 30 s."""
    url = f"sqlite:///{data_dir.root / 'wecare.db'}"
    upgrade(url)
    engine = create_engine(
        url, connect_args={"timeout": busy_ms / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", f"busy_timeout={busy_ms}"):
            cur.execute(f"PRAGMA {pragma}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


class RefusingPeer:
    """A tiny C-STORE SCP whose answer the test sets (0xA700 first, Success later)."""

    def __init__(self, status: int, port: int) -> None:
        self.status = status
        self.received: list[tuple[str, int]] = []
        self.port = port
        ae = AE(ae_title="PEER")
        ae.add_supported_context(UltrasoundImageStorage)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: Any) -> int:
        self.received.append((str(event.request.AffectedSOPInstanceUID), self.status))
        return self.status

    def stop(self) -> None:
        self.server.shutdown()


def _exporting_job(engine: Engine, output: Path, destination: str) -> int:
    """A processed job whose one output waits in the outbox for `destination`."""
    ds = dcmread(output, stop_before_pixels=True)
    with session_scope(engine) as session:
        instance, _ = record_instance(
            session,
            ReceivedInstance(
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                str(ds.SOPInstanceUID) + ".1",
                str(ds.SOPClassUID),
                "1.2.840.10008.1.2.1",
                str(output),
                output.stat().st_size,
            ),
        )
        job = session.get(Job, 1)
        assert job is not None
        set_state(session, job, JobState.EXPORTING)
        add_output(
            session,
            job,
            kind="seg",
            sop_instance_uid=str(ds.SOPInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            path=str(output),
            destinations=[destination],
        )
        return job.id


def test_destination_down_then_refusing_never_sent_then_manual_retry(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "data")
    data_dir.create()
    engine = _engine(data_dir)
    output = make_us_image(tmp_path / "output.dcm", rows=64, columns=80)
    peer_port = free_port()
    settings = Settings(
        storage={"data_dir": data_dir.root, "min_free_mb": 0},
        auth={"enabled": False},
        destinations=[{"name": "pacs", "ae_title": "PEER", "host": "127.0.0.1", "port": peer_port}],
        export={"base_backoff_seconds": 0.5, "max_backoff_seconds": 1, "max_attempts": 3},
    )
    job_id = _exporting_job(engine, output, "pacs")
    app = create_app(settings, FakeRuntime(settings=settings, engine=engine, data_dir=data_dir))
    with TestClient(app) as client:
        # 1. Down: nobody listens. The row waits, with its next try visible on the API.
        assert export_once(settings, engine) == 1
        job = client.get(f"/api/jobs/{job_id}").json()
        row = job["outputs"][0]["outbox"][0]
        assert job["state"] == "exporting"
        assert row["state"] == "pending" and row["sent_at"] is None and row["attempts"] == 1
        assert row["next_try_at"] and "association" in row["last_error"]
        assert export_once(settings, engine) == 0  # not due yet: backoff respected

        # 2. Up, but answering 0xA700: never `sent`; after max_attempts the row and job fail.
        peer = RefusingPeer(OUT_OF_RESOURCES, peer_port)
        try:
            for _ in range(2):
                wait_for(lambda: export_once(settings, engine), 10, interval=0.2, what="due")
            job = client.get(f"/api/jobs/{job_id}").json()
            row = job["outputs"][0]["outbox"][0]
            assert len(peer.received) == 2  # the peer got it twice and refused it twice
            assert row["state"] == "failed" and row["sent_at"] is None
            assert row["last_status"] == OUT_OF_RESOURCES and "0xA700" in row["last_error"]
            assert job["state"] == "failed" and job["error_code"] == "export_failed"

            # 3. The peer is fixed; the operator presses retry: delivered once, job done.
            peer.status = SUCCESS
            answer = client.post(f"/api/jobs/{job_id}/retry")
            assert answer.status_code == 200, answer.text
            assert answer.json()["action"] == "exports_retried"
            assert export_once(settings, engine) == 1
            job = client.get(f"/api/jobs/{job_id}").json()
        finally:
            peer.stop()
    row = job["outputs"][0]["outbox"][0]
    assert row["state"] == "sent" and row["last_status"] == SUCCESS
    assert job["state"] == "done"
    assert [status for _, status in peer.received] == [OUT_OF_RESOURCES] * 2 + [SUCCESS]
    engine.dispose()


def _listener(ctx: StoreContext) -> tuple[Any, int]:
    port = free_port()
    server = start_scp(ctx, ae_title="WECARE", host="127.0.0.1", port=port)
    return server, port


def test_disk_below_floor_refused_then_recovers(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "data", min_free_bytes=1 << 60)  # an impossible floor
    data_dir.create()
    engine = _engine(data_dir)
    files = [make_us_image(tmp_path / f"{n}.dcm", rows=64, columns=80) for n in range(3)]
    server, port = _listener(StoreContext(data_dir, engine))
    try:
        refused = send_files(port, files[:2])
        assert set(refused.statuses.values()) == {OUT_OF_RESOURCES}
        assert not list(data_dir.incoming.rglob("*.dcm"))
        assert query(data_dir.root, "SELECT COUNT(*) FROM instances") == [(0,)]
        data_dir.min_free_bytes = 1024 * 1024  # space came back (the floor is now met)
        accepted = send_files(port, files)
        assert set(accepted.statuses.values()) == {SUCCESS}
        assert len(list(data_dir.incoming.rglob("*.dcm"))) == 3
        assert query(data_dir.root, "SELECT COUNT(*) FROM instances") == [(3,)]
    finally:
        server.shutdown()
        engine.dispose()


def test_database_locked_refused_then_recovers_and_loops_survive(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "data")
    data_dir.create()
    engine = _engine(data_dir, busy_ms=500)
    settings = Settings(
        storage={"data_dir": data_dir.root, "min_free_mb": 0},
        worker={"poll_seconds": 0.1, "explain": False, "lease_seconds": 5},
        export={"poll_seconds": 0.1},
    )
    stop = threading.Event()
    models = ModelProvider(None, "cpu", None, model=ThresholdModel())
    loops = [
        threading.Thread(target=run_worker, args=(settings, engine, data_dir, models, stop, "w:0")),
        threading.Thread(target=run_exporter, args=(settings, engine, stop)),
    ]
    files = [make_us_image(tmp_path / f"{n}.dcm", rows=64, columns=80) for n in range(2)]
    server, port = _listener(StoreContext(data_dir, engine))
    locker = sqlite3.connect(data_dir.root / "wecare.db", timeout=5, isolation_level=None)
    try:
        for loop in loops:
            loop.start()
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the database
        started = time.monotonic()
        refused = send_files(port, files[:1])
        assert set(refused.statuses.values()) == {OUT_OF_RESOURCES}
        time.sleep(1.5)  # the loops poll the locked database and fail a few rounds
        assert all(loop.is_alive() for loop in loops)
        locker.execute("ROLLBACK")
        print(f"\nlocked database: refused with 0xA700 in {time.monotonic() - started:.1f} s")
        assert query(data_dir.root, "SELECT COUNT(*) FROM instances") == [(0,)]

        accepted = send_files(port, files)  # the PACS re-sends: stored now
        assert set(accepted.statuses.values()) == {SUCCESS}
        assert echo(port)
        with session_scope(engine) as session:
            for (job_id,) in session.query(Job.id).all():
                assert process_now(session, job_id)
        wait_for(
            lambda: query(data_dir.root, "SELECT DISTINCT state FROM jobs") == [("done",)],
            30,
            what="job done after the database came back",
        )
        assert all(loop.is_alive() for loop in loops)
        with session_scope(engine) as session:
            assert (
                session.query(OutboxItem).filter(OutboxItem.state != OutboxState.SENT).count() == 0
            )
    finally:
        stop.set()
        locker.close()
        server.shutdown()
        for loop in loops:
            loop.join(10)
        engine.dispose()
