"""Scale-out on a real PostgreSQL: one `wecare listener` and three `wecare worker` processes
(the real CLI, the bundled model on small images, eager network) share a database and a data
directory; one worker is killed with SIGKILL in the middle of a job.

Every study must be analysed, none twice: a job runs again only when its worker died, and then
on another worker after the dead one's lease expired.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
import pytest
from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import Engine, select

from storage.db import make_engine, session_scope
from storage.models import Job, JobState, Output
from tests.conftest import REPO_ROOT
from tests.factories import make_us_image
from tests.integration.peers import wait_for, write_config

pytestmark = pytest.mark.integration

STUDIES = 40
IMAGES_PER_STUDY = 1
WORKERS = 3
LEASE_SECONDS = 5


@pytest.fixture()
def database_url(postgres_url: str) -> str:
    """A fresh, empty database on the session's PostgreSQL server (the processes migrate it)."""
    name = f"s{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def _process(command: str, config: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", command, "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _studies(directory: Path) -> list[Path]:
    """STUDIES small studies of IMAGES_PER_STUDY images, lesions in some, none in others."""
    directory.mkdir(parents=True)
    files = []
    for n in range(STUDIES):
        study, series = f"2.25.{uuid.uuid4().int}", f"2.25.{uuid.uuid4().int}"
        for i in range(IMAGES_PER_STUDY):
            files.append(
                make_us_image(
                    directory / f"{n}-{i}.dcm",
                    rows=128,
                    columns=160,
                    lesion="center" if n % 3 else None,
                    lesion_radii=(15, 20),
                    study_instance_uid=study,
                    series_instance_uid=series,
                    sop_instance_uid=f"2.25.{uuid.uuid4().int}",
                    seed=n * 10 + i,
                )
            )
    return files


def _send(port: int, files: list[Path]) -> list[int]:
    """C-STORE every file over one association; the statuses in order."""
    datasets = [dcmread(f) for f in files]
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="WECARE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _log_events(path: Path, message_start: str) -> list[int]:
    """job_id of each JSON log line whose message starts with `message_start`."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if str(entry.get("msg", "")).startswith(message_start) and "job_id" in entry:
            found.append(int(entry["job_id"]))
    return found


def _running_on(engine: Engine, prefix: str) -> int | None:
    with session_scope(engine) as s:
        return s.scalar(
            select(Job.id).where(Job.state == JobState.RUNNING, Job.claimed_by.startswith(prefix))
        )


def test_workers_three_processes_one_killed_mid_job_every_study_once(
    tmp_path: Path, database_url: str
) -> None:
    config, dicom_port, _ = write_config(
        tmp_path,
        {},
        storage={"database_url": database_url},
        study={"stable_seconds": 0.5},
        worker={
            "count": 1,
            "poll_seconds": 0.1,
            "lease_seconds": LEASE_SECONDS,
            "torch_threads": 1,
            "device": "cpu",
            "compile": "off",
            "explain": False,
        },
        log={"to_file": False, "json_format": True},
        web={"enabled": False},
    )
    files = _studies(tmp_path / "in")
    logs = {name: tmp_path / f"{name}.log" for name in ["listener", "w0", "w1", "w2"]}
    engine = make_engine(database_url)
    started = time.monotonic()
    with ExitStack() as stack:
        listener = stack.enter_context(_process("listener", config, logs["listener"]))
        workers = {
            f"w{n}": stack.enter_context(_process("worker", config, logs[f"w{n}"]))
            for n in range(WORKERS)
        }

        def listening() -> bool:
            assert listener.poll() is None, logs["listener"].read_text()[-3000:]
            return "DICOM listener" in logs["listener"].read_text(errors="replace")

        wait_for(listening, 90, what="the listener")
        statuses = _send(dicom_port, files)
        assert statuses == [0] * len(files)

        # Kill w0 -9 while it holds a job (its claims carry its pid).
        victim = workers["w0"]
        prefix = f"worker-{victim.pid}-"
        host_prefix = f"{os.uname().nodename}:{prefix}"
        killed_job = wait_for(lambda: _running_on(engine, host_prefix), 120, 0.02, "w0's job")
        victim.kill()
        victim.wait(10)
        with session_scope(engine) as s:
            job = s.get(Job, killed_job)
            assert job is not None
            mid_job = (job.state, job.claimed_by is not None and prefix in job.claimed_by)
        assert mid_job == (JobState.RUNNING, True), "w0 finished its job before the kill"

        def all_done() -> bool:
            for name, proc in workers.items():
                assert name == "w0" or proc.poll() is None, logs[name].read_text()[-3000:]
            with session_scope(engine) as s:
                states = list(s.scalars(select(Job.state)))
            return len(states) == STUDIES and all(st == JobState.DONE for st in states)

        wait_for(all_done, 240, what="every job done")
        elapsed = time.monotonic() - started
    with session_scope(engine) as s:
        jobs = {j.id: (j.attempts, j.error_code) for j in s.scalars(select(Job))}
        outputs = Counter((o.job_id, o.kind, o.sop_instance_uid) for o in s.scalars(select(Output)))
    engine.dispose()

    started_by = {name: _log_events(path, "job started") for name, path in logs.items()}
    finished_by = {name: _log_events(path, "job processed") for name, path in logs.items()}
    starts = Counter(j for ids in started_by.values() for j in ids)
    finishes = Counter(j for ids in finished_by.values() for j in ids)
    print(
        f"\n{STUDIES} studies x {IMAGES_PER_STUDY} images, {WORKERS} worker processes, "
        f"job {killed_job} killed mid-run: {elapsed:.1f} s; jobs finished per worker "
        f"{ {n: len(ids) for n, ids in finished_by.items() if n != 'listener'} }; "
        f"starts > 1: { {j: c for j, c in starts.items() if c > 1} }"
    )
    # None lost: every study became one job, every job done exactly once.
    assert len(jobs) == STUDIES
    assert set(finishes) == set(jobs) and set(finishes.values()) == {1}
    # None run twice, except the killed one: once on w0 (cut off), once on a survivor.
    assert {j: a for j, (a, _) in jobs.items() if a != 1} == {killed_job: 2}
    assert {j: c for j, c in starts.items() if c != 1} == {killed_job: 2}
    assert killed_job in started_by["w0"] and killed_job not in finished_by["w0"]
    assert any(killed_job in finished_by[n] for n in ("w1", "w2"))
    # Each job recorded its outputs once: an SR, plus a SEG where a lesion was found.
    assert set(outputs.values()) == {1}
    kinds = Counter((job_id, kind) for job_id, kind, _ in outputs)
    assert set(kinds.values()) == {1}
    assert {job_id for job_id, kind in kinds if kind == "sr"} == set(jobs)
    # The work was shared: both survivors analysed studies.
    assert finished_by["w1"] and finished_by["w2"]


def test_web_and_exporter_processes_alone_serve_and_stop_on_sigterm(
    tmp_path: Path, database_url: str
) -> None:
    config, _, web_port = write_config(
        tmp_path,
        {},
        storage={"database_url": database_url},
        log={"to_file": False, "json_format": True},
    )
    logs = {name: tmp_path / f"{name}.log" for name in ("web", "exporter")}
    with ExitStack() as stack:
        procs = {n: stack.enter_context(_process(n, config, logs[n])) for n in logs}

        def health() -> dict[str, object] | None:
            for name, proc in procs.items():
                assert proc.poll() is None, logs[name].read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/health", timeout=5) as r:
                    return dict(json.loads(r.read()))
            except OSError:
                return None

        body = wait_for(health, 60, what="the web process")
        wait_for(lambda: "running as exporter" in logs["exporter"].read_text(), 30, what="exporter")
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        codes = {name: proc.wait(30) for name, proc in procs.items()}
    # Alone, the web app reports no model or listener of its own; the database is up.
    assert body["status"] == "ok" and body["database"] == "ok"
    assert codes == {"web": 0, "exporter": 0}
    for path in logs.values():
        assert '"stopped"' in path.read_text()
