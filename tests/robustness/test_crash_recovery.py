"""kill -9 of `wecare serve` while receiving, while inferring and while exporting; restart.

After each restart on the same data directory: every instance that got Success is on disk
(readable, the bytes sent) and in the database, every job finishes exactly once, and the
destination (a real Orthanc) holds each SEG and SR exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.integration.peers import WeCareProcess, free_port, orthanc, wait_for, wecare
from tests.robustness.helpers import (
    SUCCESS,
    DelayProxy,
    SendLog,
    api_post,
    query,
    send_files,
    small_studies,
)

pytestmark = pytest.mark.integration

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _kill(service: WeCareProcess) -> None:
    os.kill(service.proc.pid, signal.SIGKILL)
    service.proc.wait(10)


def _jobs(data_dir: Path) -> list[tuple[int, str, int, str | None]]:
    return [
        (int(r[0]), str(r[1]), int(r[2]), r[3])
        for r in query(data_dir, "SELECT id, state, attempts, error_code FROM jobs ORDER BY id")
    ]


def _outputs(data_dir: Path) -> list[tuple[int, str, str]]:
    return [
        (int(r[0]), str(r[1]), str(r[2]))
        for r in query(data_dir, "SELECT job_id, kind, sop_instance_uid FROM outputs")
    ]


def _assert_received_kept(data_dir: Path, sources: dict[str, Path], succeeded: set[str]) -> None:
    """Every acknowledged instance has its row and its file, with the pixel data sent."""
    rows = {
        str(sop): Path(path)
        for sop, path in query(data_dir, "SELECT sop_instance_uid, path FROM instances")
    }
    missing = succeeded - rows.keys()
    assert not missing, f"{len(missing)} acknowledged instance(s) have no database row"
    for sop in succeeded:
        stored = dcmread(rows[sop])
        assert stored.SOPInstanceUID == sop
        assert stored.PixelData == dcmread(sources[sop]).PixelData
    # And the database points at no file that is missing or partial.
    for path in rows.values():
        dcmread(path, stop_before_pixels=True)


def _job_state(service: WeCareProcess, job_id: int) -> str:
    job = service.api(f"/api/jobs/{job_id}")
    return str(job["state"])


def test_kill_during_receive_keeps_every_acknowledged_instance(tmp_path: Path) -> None:
    """SIGKILL mid-association; restart; the SCU re-sends; one job, done once."""
    files = small_studies(tmp_path / "src", 1, 30)[0]
    sources = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
    port = free_port()
    config = {
        "auth": {"enabled": False},
        "study": {"stable_seconds": 600},  # the test queues the job itself (process-now)
        "worker": {"count": 1, "lease_seconds": 3, "explain": False},
    }
    log = SendLog()
    with wecare(tmp_path / "w", {}, port, **config) as service:
        sender = threading.Thread(
            target=send_files, args=(port, files), kwargs={"log": log, "timeout": 5}
        )
        sender.start()
        wait_for(lambda: len(log.succeeded) >= 10, 60, interval=0.01, what="10 stored")
        _kill(service)
        sender.join(60)
    data_dir = service.data_dir
    acknowledged = log.succeeded
    print(f"\nkilled after {len(acknowledged)} of {len(files)} acknowledged")
    assert len(acknowledged) < len(files), "the kill came after the whole association"
    assert all(s != SUCCESS for sop, s in log.statuses.items() if sop not in acknowledged)
    _assert_received_kept(data_dir, sources, acknowledged)

    with wecare(tmp_path / "w", {}, port, **config) as service:
        again = send_files(port, files)  # the PACS re-sends the whole study
        assert again.succeeded == set(sources)
        _assert_received_kept(data_dir, sources, set(sources))
        counts = query(data_dir, "SELECT COUNT(*), COUNT(DISTINCT sop_instance_uid) FROM instances")
        assert counts == [(len(files), len(files))]
        jobs = _jobs(data_dir)
        assert len(jobs) == 1 and jobs[0][1] == "waiting", jobs
        api_post(service, f"/api/jobs/{jobs[0][0]}/process-now")
        wait_for(lambda: _job_state(service, jobs[0][0]) == "done", 240, what="job done")
    jobs = _jobs(data_dir)
    assert [(j[1], j[2]) for j in jobs] == [("done", 1)], jobs


def _orthanc_outputs(pacs: object) -> dict[str, int]:
    """SOP Instance UID → how many instances Orthanc holds with it, for SEG and SR."""
    found: dict[str, int] = {}
    for modality in ("SEG", "SR"):
        ids = pacs.post(  # type: ignore[attr-defined]
            "/tools/find",
            json.dumps({"Level": "Instance", "Query": {"Modality": modality}, "Expand": True}),
        )
        for item in ids:
            uid = str(item["MainDicomTags"]["SOPInstanceUID"])
            found[uid] = found.get(uid, 0) + 1
    return found


def _assert_delivered_once(pacs: object, data_dir: Path) -> None:
    outputs = _outputs(data_dir)
    in_pacs = _orthanc_outputs(pacs)
    assert {o[2] for o in outputs} == set(in_pacs), (outputs, in_pacs)
    assert all(n == 1 for n in in_pacs.values()), in_pacs
    assert len(outputs) == len({o[2] for o in outputs}), "an output recorded twice"
    sent = query(data_dir, "SELECT state, COUNT(*) FROM outbox GROUP BY state")
    assert sent == [("sent", len(outputs))], sent


def test_kill_during_inference_and_during_export(tmp_path: Path) -> None:
    """SIGKILL while a job runs, restart (job re-queued, runs again); then SIGKILL while a
    C-STORE to Orthanc is on the wire, restart (outbox re-sent): each output once in Orthanc."""
    studies = small_studies(tmp_path / "src", 2, 4)
    port = free_port()
    with orthanc(tmp_path / "o", {}) as pacs:
        proxy = DelayProxy(pacs.dicom_port, delay=0.4)
        config = {
            "auth": {"enabled": False},
            "study": {"stable_seconds": 1},
            "worker": {"count": 1, "lease_seconds": 3, "explain": False},
            "export": {"timeout_seconds": 10, "base_backoff_seconds": 1},
        }
        dest = {"pacs": ("ORTHANC", proxy.port)}
        try:
            # 1. Killed during inference.
            with wecare(tmp_path / "w", dest, port, **config) as service:
                wait_for(lambda: service.api("/health")["model"]["loaded"], 120, what="model")
                assert send_files(port, studies[0]).succeeded
                wait_for(
                    lambda: any(j[1] == "running" for j in _jobs(service.data_dir)),
                    120,
                    interval=0.05,
                    what="job running",
                )
                _kill(service)
            data_dir = service.data_dir
            states = _jobs(data_dir)
            print(f"\nkilled during inference: jobs {states}, outputs {_outputs(data_dir)}")
            assert states[0][1] == "running"
            assert not _orthanc_outputs(pacs)
            with wecare(tmp_path / "w", dest, port, **config) as service:
                wait_for(lambda: _jobs(data_dir)[0][1] == "done", 240, what="job re-run, done")
            assert [(j[1], j[2]) for j in _jobs(data_dir)] == [("done", 2)]
            _assert_delivered_once(pacs, data_dir)

            # 2. Killed during export: once Orthanc holds part of the second study's outputs.
            first = set(_orthanc_outputs(pacs))
            with wecare(tmp_path / "w", dest, port, **config) as service:
                assert send_files(port, studies[1]).succeeded

                def partly_delivered() -> bool:
                    jobs = _jobs(data_dir)
                    return (
                        len(jobs) == 2
                        and jobs[1][1] == "exporting"
                        and bool(set(_orthanc_outputs(pacs)) - first)
                    )

                wait_for(partly_delivered, 240, interval=0.05, what="export under way")
                _kill(service)
            pending = query(data_dir, "SELECT state, COUNT(*) FROM outbox GROUP BY state")
            print(f"killed during export: outbox {pending}")
            assert ("pending", 1) in pending or ("pending", 2) in pending, pending
            started = time.monotonic()
            with wecare(tmp_path / "w", dest, port, **config) as service:
                wait_for(
                    lambda: [j[1] for j in _jobs(data_dir)] == ["done", "done"],
                    60,
                    what="export finished after restart",
                )
            print(f"export finished {time.monotonic() - started:.1f} s after restart")
            _assert_delivered_once(pacs, data_dir)
        finally:
            proxy.close()
