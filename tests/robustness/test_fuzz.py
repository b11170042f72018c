"""Fuzz: seeded mutations of ultrasound files (1 100 by default; `WECARE_FUZZ_CASES=10000` for
the long run), read directly, uploaded and sent over DICOM, deflate bombs and hostile
encapsulated Pixel Data included (tests/robustness/mutators.py).

1. In-process: `read_info` + `iter_frames` (the pipeline's path) and `read_frames` on every
   case raise nothing but `DicomIOError` (a clear code), with peak memory bounded.
2. Against the real `wecare serve` (workers off, so no model on CPU): every case sent raw
   over a few associations gets a status (Success or a failure, never an abort); the listener
   stays up, its peak memory stays under LISTENER_PEAK_RSS_MB, and every acknowledged case is
   in the database with its file on disk, byte for byte as sent. Then the stored cases run
   through the real worker code in-process with a stand-in model: every job ends `done` or
   `failed` with a known error code, never `internal_error`.
Seeded (same cases every run) and time-bounded.
"""

from __future__ import annotations

import collections
import hashlib
import os
import resource
import sqlite3
import struct
import time
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_io.errors import SKIP_REASONS, DicomIOError
from dicom_io.read import MAX_DECODED_BYTES, iter_frames, read_frames, read_info
from service.config import load_settings
from service.worker import ModelProvider, work_once
from storage.db import make_engine, session_scope
from storage.files import DataDir
from storage.models import Job, JobState
from storage.queue import queue_stable_studies
from tests.factories import make_us_image
from tests.integration.peers import free_port, wecare
from tests.realfiles import deid_ultrasound, pydicom_data_file
from tests.robustness.helpers import SUCCESS, echo, rss_kb, send_files
from tests.robustness.mutators import Case, cases
from tests.service.test_pipeline import ThresholdModel

FUZZ_CASES = int(os.environ.get("WECARE_FUZZ_CASES", "1100"))
#: Ceiling of the listener process's peak RSS (VmHWM) over the whole fuzz run, model not loaded
#: (workers off): deflate bombs up to 4 GiB are among the cases.
LISTENER_PEAK_RSS_MB = 1024
#: Ceiling of the in-process peak RSS growth over the worker's streaming read path.
STREAMING_PEAK_GROWTH_MB = 1024
FUZZ_SEED = 20261123
# Statuses a bad object may get: Success (stored as received; judged by the worker later),
# 0xA900 (dataset does not match the request), 0xC000 (cannot understand).
ALLOWED_FAILURES = {0xA900, 0xC000}
# Job error codes a corrupt study may end with (the worker's catch-all `internal_error`: no).
JOB_CODES = {"no_processable_images", "images_skipped", *SKIP_REASONS}


def _data_set(part10: bytes) -> bytes:
    """The bytes after the File Meta Information (its group length is always written here)."""
    assert part10[128:132] == b"DICM" and part10[132:136] == b"\x02\x00\x00\x00"
    (group_length,) = struct.unpack("<I", part10[140:144])
    return part10[144 + group_length :]


@pytest.fixture(scope="module")
def fuzz_cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    tmp = tmp_path_factory.mktemp("fuzz-seeds")
    small = {"rows": 64, "columns": 80, "lesion_radii": (10, 14)}
    seeds = {
        "mono8": make_us_image(tmp / "mono8.dcm", **small),
        "implicit": make_us_image(tmp / "implicit.dcm", transfer_syntax="implicit", **small),
        "rgb": make_us_image(tmp / "rgb.dcm", photometric="RGB", **small),
        "cine": make_us_image(tmp / "cine.dcm", frames=3, **small),
        "mono16": make_us_image(tmp / "mono16.dcm", bits=16, **small),
        "rle": make_us_image(tmp / "rle.dcm", transfer_syntax="rle", **small),
        "us1_j2kr": pydicom_data_file("US1_J2KR.dcm"),
        "deid_greyscale": deid_ultrasound("GREYSCALE_IMAGE.dcm"),
    }
    return list(cases(seeds, FUZZ_CASES, seed=FUZZ_SEED))


@pytest.mark.filterwarnings("ignore")
def test_fuzz_read_paths_raise_only_clear_errors(fuzz_cases: list[Case], tmp_path: Path) -> None:
    """The worker's streaming path first (its peak memory bounded by the frame budget), then
    `read_frames`, which decodes a whole object up to MAX_DECODED_BYTES by design."""
    outcomes: collections.Counter[str] = collections.Counter()
    crashes: list[str] = []
    started = time.monotonic()
    peak_growth_mb: dict[str, float] = {}
    for name, read in (
        ("stream", lambda p: [f for f in iter_frames(p)] and read_info(p)),
        ("whole", read_frames),
    ):
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for case in fuzz_cases:
            path = case.write(tmp_path)
            try:
                read(path)
                outcomes[f"{name}: ok"] += 1
            except DicomIOError as exc:
                outcomes[f"{name}: {exc.code}"] += 1
            except Exception as exc:  # noqa: BLE001 - what the test is looking for
                crashes.append(f"{case.index} {case.seed_name} {case.mutation} {name}: {exc!r}")
            path.unlink()
        peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_growth_mb[name] = (peak_after - peak_before) / 1024
    print(
        f"\nfuzz read: {len(fuzz_cases)} cases in {time.monotonic() - started:.1f} s, peak RSS "
        f"growth streaming {peak_growth_mb['stream']:.0f} MB, then whole "
        f"{peak_growth_mb['whole']:.0f} MB more; outcomes {dict(sorted(outcomes.items()))}"
    )
    assert not crashes, "\n".join(crashes[:20])
    # Streaming: bounded per case by a deflated object up to the inflate limit (pydicom holds
    # it twice) or one frame of up to MAX_FRAME_BYTES with its decoder's buffers. Measured
    # over 10 000 cases: largest single-case step +208 MB (a J2K header declaring a larger
    # frame), +420 MB in all when the cases are made one at a time, +770 MB with all 10 000
    # held in memory as here (allocator fragmentation; flat from case 1 535 to 10 000).
    assert peak_growth_mb["stream"] < STREAMING_PEAK_GROWTH_MB
    assert peak_growth_mb["stream"] + peak_growth_mb["whole"] < MAX_DECODED_BYTES / 2**20 + 256
    assert all(c in SKIP_REASONS for k in outcomes for c in [k.split(": ")[1]] if c != "ok")


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore")
def test_fuzz_over_dicom_then_worker(fuzz_cases: list[Case], tmp_path: Path) -> None:
    files_dir = tmp_path / "cases"
    files_dir.mkdir()
    paths = [c.write(files_dir) for c in fuzz_cases]
    uids = [(c.sop_class_uid, c.sop_instance_uid, c.transfer_syntax_uid) for c in fuzz_cases]
    port = free_port()
    statuses: dict[str, int | None] = {}
    unsent: dict[str, str] = {}
    with wecare(
        tmp_path / "w",
        {},
        port,
        auth={"enabled": False},
        worker={"count": 0},
        study={"stable_seconds": 600},
        log={"level": "WARNING"},
    ) as service:
        assert echo(port)
        rss_before = rss_kb(service.proc.pid)
        started = time.monotonic()
        step = 275  # a few associations, each carrying many cases
        for start in range(0, len(paths), step):
            log = send_files(port, paths[start : start + step], uids=uids[start : start + step])
            assert log.established, log.error
            statuses.update(log.statuses)
            unsent.update(log.errors)
        send_seconds = time.monotonic() - started
        assert echo(port), "the listener went down during the fuzz"
        assert service.proc.poll() is None
        rss_after = rss_kb(service.proc.pid)
        rss_peak = rss_kb(service.proc.pid, "VmHWM")
    by_status = collections.Counter(
        f"0x{s:04X}" if s is not None else "none" for s in statuses.values()
    )
    growth_mb = (rss_after - rss_before) / 1024
    print(
        f"\nfuzz over DICOM: {len(paths)} cases in {send_seconds:.1f} s, statuses "
        f"{dict(by_status)}; listener RSS {rss_before // 1024} → {rss_after // 1024} MB, "
        f"peak {rss_peak // 1024} MB"
    )
    assert len(statuses) == len(paths)
    index = {c.sop_instance_uid: c for c in fuzz_cases}
    for sop, error in list(unsent.items())[:5]:
        print(f"  no status: case {index[sop].index} {index[sop].mutation}: {error}")
    # No status only where the file claims a transfer syntax nobody knows (our SCP refuses the
    # presentation context, pynetdicom's SCU refuses the UID): it could not even be sent.
    assert all("transfer syntax" in e or "presentation context" in e for e in unsent.values()), set(
        unsent.values()
    )
    answered = [s for sop, s in statuses.items() if sop not in unsent]
    assert all(s == SUCCESS or s in ALLOWED_FAILURES for s in answered), by_status
    assert growth_mb < 150
    assert rss_peak / 1024 < LISTENER_PEAK_RSS_MB

    # Every acknowledged case is recorded, and its file holds exactly the data set sent (the
    # listener writes its own File Meta Information, as PS3.10 has the receiver do).
    acknowledged = {sop for sop, status in statuses.items() if status == SUCCESS}
    with closing(sqlite3.connect(service.data_dir / "wecare.db")) as db:
        rows = dict(db.execute("SELECT sop_instance_uid, path FROM instances").fetchall())
    missing = acknowledged - rows.keys()
    assert not missing, f"{len(missing)} acknowledged cases have no row"
    sent = {c.sop_instance_uid: hashlib.sha256(_data_set(c.data)).digest() for c in fuzz_cases}
    changed = [
        sop
        for sop in acknowledged
        if hashlib.sha256(_data_set(Path(rows[sop]).read_bytes())).digest() != sent[sop]
    ]
    assert not changed, f"{len(changed)} acknowledged files differ from what was sent"
    print(f"fuzz over DICOM: {len(acknowledged)} acknowledged, all recorded and intact")

    # The worker's side, in-process with a stand-in model: every job ends with a clear code.
    data_dir = DataDir(service.data_dir)
    engine = make_engine(f"sqlite:///{service.data_dir / 'wecare.db'}")
    settings = load_settings(None, worker={"max_attempts": 1, "explain": False})
    models = ModelProvider(None, "cpu", None, model=ThresholdModel())
    with session_scope(engine) as session:
        queue_stable_studies(session, 0)
    started = time.monotonic()
    processed = 0
    while work_once(settings, engine, data_dir, models, "fuzz:0") is not None:
        processed += 1
        assert time.monotonic() - started < 240 * max(1, FUZZ_CASES / 1100), "worker too slow"
    with session_scope(engine) as session:
        jobs = session.execute(select(Job.state, Job.error_code)).all()
    engine.dispose()
    ends = collections.Counter(f"{state}:{code}" for state, code in jobs)
    print(f"fuzz worker pass: {processed} jobs in {time.monotonic() - started:.1f} s: {dict(ends)}")
    assert all(state in (JobState.DONE, JobState.FAILED) for state, _ in jobs), ends
    assert all(code is None or code in JOB_CODES for _, code in jobs), ends


@pytest.mark.filterwarnings("ignore")
def test_fuzz_upload_api_every_case_gets_a_clear_answer(
    fuzz_cases: list[Case], tmp_path: Path
) -> None:
    """The same cases through POST /api/instances (operator token, auth on)."""
    from fastapi.testclient import TestClient

    from service.web.app import create_app
    from storage.db import upgrade
    from tests.service.test_web import FakeRuntime, bearer, make_settings, make_token

    data_dir = DataDir(tmp_path / "data")
    data_dir.create()
    url = f"sqlite:///{data_dir.root / 'wecare.db'}"
    upgrade(url)
    engine = make_engine(url)
    settings = make_settings(data_dir, database_url=url)
    app = create_app(settings, FakeRuntime(settings=settings, engine=engine, data_dir=data_dir))
    answers: collections.Counter[int] = collections.Counter()
    stored: set[str] = set()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with TestClient(app, headers=bearer(make_token(engine, "operator"))) as client:
        for case in fuzz_cases:
            rsp = client.post(
                "/api/instances",
                content=case.data,
                headers={"content-type": "application/dicom"},
            )
            answers[rsp.status_code] += 1
            assert rsp.status_code in (200, 201, 400, 413), (
                case.mutation,
                rsp.status_code,
                rsp.text,
            )
            body = rsp.json()
            if rsp.status_code in (400, 413):
                assert body.get("detail"), case.mutation  # a reason, not an empty refusal
            else:
                stored.add(body["sop_instance_uid"])
        assert client.get("/health").status_code == 200
    peak_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    print(
        f"\nupload fuzz: {len(fuzz_cases)} cases, answers {dict(answers)}, "
        f"peak RSS growth {peak_growth_mb:.0f} MB"
    )
    assert sum(answers.values()) == len(fuzz_cases)
    assert answers[400] > 0 and answers[201] > 0
    with session_scope(engine) as session:
        from storage.models import Instance

        rows = set(session.scalars(select(Instance.sop_instance_uid)))
    assert rows == stored  # every acknowledged upload is in the database, nothing else
    assert peak_growth_mb < 300
    engine.dispose()
