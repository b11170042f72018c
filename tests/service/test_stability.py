"""Study stability across a crash: a study cut off mid-receive and re-sent is analysed once.

Issue 28 item 5: after `kill -9` mid-study, the waiting job was queued at restart (the
downtime counted as quiet), ran on the instances received before the crash, and the re-sent
study made a second job analysing them again: one study, two results.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import Engine, select, update

from service.config import load_settings
from service.ingest import StoreContext
from service.scp import start_scp
from service.stability import stability_once
from service.worker import ModelProvider, work_once
from storage.db import session_scope
from storage.files import DataDir
from storage.models import Instance, Job, JobState, Output, Study, utcnow
from storage.queue import process_now
from tests.factories import make_us_series
from tests.integration.peers import free_port
from tests.robustness.helpers import send_files
from tests.service.test_pipeline import ThresholdModel

STABLE_SECONDS = 5.0


def _listen_and_send(data_dir: DataDir, engine: Engine, paths: Sequence[Path]) -> set[str]:
    """One listener life: start it, send `paths` over one association, stop it."""
    port = free_port()
    server = start_scp(
        StoreContext(data_dir, engine), ae_title="WECARE", host="127.0.0.1", port=port
    )
    try:
        return send_files(port, paths).succeeded
    finally:
        server.shutdown()


def _work(engine: Engine, data_dir: DataDir) -> int | None:
    models = ModelProvider(None, "cpu", None, model=ThresholdModel())
    settings = load_settings(None, destinations=[], worker={"explain": False})
    return work_once(settings, engine, data_dir, models, "host:0")


def _jobs(engine: Engine) -> list[tuple[int, str, int | None]]:
    with session_scope(engine) as s:
        return [(j.id, j.state, j.image_count) for j in s.scalars(select(Job).order_by(Job.id))]


def test_stability_study_cut_by_crash_then_resent_one_job_all_images(
    engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    files = make_us_series(tmp_path / "src", 6, rows=128, columns=160)
    sops = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    # Before the crash: 3 acknowledged; the 4th written but its row never committed.
    assert _listen_and_send(data_dir, engine, files[:3]) == set(sops[:3])
    fourth = dcmread(files[3], stop_before_pixels=True)
    orphan = data_dir.incoming_path(
        fourth.StudyInstanceUID, fourth.SeriesInstanceUID, fourth.SOPInstanceUID
    )
    orphan.write_bytes(files[3].read_bytes())
    with session_scope(engine) as s:  # down for two minutes
        s.execute(update(Study).values(last_received_at=utcnow() - timedelta(minutes=2)))

    # Restart: the stability loop starts with the listener; the PACS re-sends the study.
    listening_since = utcnow()
    assert stability_once(engine, STABLE_SECONDS, listening_since)[0] == []
    assert _listen_and_send(data_dir, engine, files[:3]) == set(sops[:3])  # unchanged
    assert stability_once(engine, STABLE_SECONDS, listening_since)[0] == []
    assert _work(engine, data_dir) is None  # nothing started on half a study
    assert _listen_and_send(data_dir, engine, files[3:]) == set(sops[3:])

    ((job_id, state, _),) = _jobs(engine)
    assert state == JobState.WAITING
    with session_scope(engine) as s:
        assert process_now(s, job_id)
    assert _work(engine, data_dir) == job_id
    assert _jobs(engine) == [(job_id, JobState.DONE, 6)]
    with session_scope(engine) as s:
        rows = s.scalars(select(Instance).order_by(Instance.id)).all()
        assert [r.sop_instance_uid for r in rows] == sops
        assert [r.times_received for r in rows] == [2, 2, 2, 1, 1, 1]
        assert {o.job_id for o in s.scalars(select(Output))} == {job_id}
    assert all(dcmread(r.path).SOPInstanceUID == r.sop_instance_uid for r in rows)


def test_stability_resent_unchanged_study_after_done_no_new_job(
    engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    files = make_us_series(tmp_path / "src", 3, rows=128, columns=160)
    assert len(_listen_and_send(data_dir, engine, files)) == 3
    ((job_id, _, _),) = _jobs(engine)
    with session_scope(engine) as s:
        process_now(s, job_id)
    assert _work(engine, data_dir) == job_id

    assert len(_listen_and_send(data_dir, engine, files)) == 3  # the whole study again
    assert stability_once(engine, 0.0)[0] == []
    assert _work(engine, data_dir) is None
    assert _jobs(engine) == [(job_id, JobState.DONE, 3)]
    with session_scope(engine) as s:
        assert [r.times_received for r in s.scalars(select(Instance))] == [2, 2, 2]
        assert {o.job_id for o in s.scalars(select(Output))} == {job_id}


def test_stability_once_quiet_counts_only_while_listening(
    engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    files = make_us_series(tmp_path / "src", 1, rows=128, columns=160)
    assert len(_listen_and_send(data_dir, engine, files)) == 1
    with session_scope(engine) as s:
        s.execute(update(Study).values(last_received_at=utcnow() - timedelta(minutes=2)))
    assert stability_once(engine, STABLE_SECONDS, utcnow())[0] == []
    ten_ago = utcnow() - timedelta(seconds=10)
    assert stability_once(engine, STABLE_SECONDS, ten_ago)[0] == [_jobs(engine)[0][0]]
