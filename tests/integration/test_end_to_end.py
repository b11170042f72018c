"""PACS → WeCare → SEG + SR → PACS with real peers: Orthanc, dcmtk, dciodvfy; WeCare as a process.

These run the real `wecare serve` command with the bundled weights and check what arrived
at the far end, validating every SEG and SR with dciodvfy.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.dciodvfy import run_dciodvfy
from tests.integration.peers import (
    WeCareProcess,
    free_port,
    orthanc,
    storescp,
    storescu,
    wait_for,
    wecare,
)
from tests.realfiles import deid_ultrasound, pydicom_data_file

pytestmark = pytest.mark.integration

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
STAMPS = ("created_at", "queued_at", "running_at", "exporting_at", "finished_at")
#: These tests carry real (kidney, unlabelled) ultrasound files through the whole chain: the
#: breast-only routing (tests/service/test_routing_scp.py) would store them, not analyse them.
NO_ROUTING = {"enabled": False}


def _referenced_sops(ds: object) -> set[str]:
    """Every ReferencedSOPInstanceUID anywhere in a dataset."""
    found: set[str] = set()

    def walk(d: object) -> None:
        for elem in d:  # type: ignore[attr-defined]
            if elem.keyword == "ReferencedSOPInstanceUID":
                found.add(str(elem.value))
            elif elem.VR == "SQ":
                for item in elem.value:
                    walk(item)

    walk(ds)
    return found


def _job_finished(service: WeCareProcess) -> bool:
    """True once the (only) job is done; fails at once, with its error, if it failed."""
    jobs = service.api("/api/jobs")["data"]
    if jobs and jobs[0]["state"] == "failed":
        raise AssertionError(f"job failed: {jobs[0].get('error_code')}: {jobs[0].get('error')}")
    return bool(jobs) and jobs[0]["state"] == "done"


def _assert_valid(path: Path) -> list[str]:
    errors, warnings = run_dciodvfy(path)
    assert errors == [], f"dciodvfy errors in {path.name}: {errors}"
    return warnings


def test_orthanc_autoforward_study_gets_seg_and_sr_back(tmp_path: Path) -> None:
    """Orthanc (the PACS) auto-forwards a stable US study; SEG and SR land back in Orthanc."""
    source = deid_ultrasound("GREYSCALE_IMAGE.dcm")
    source_ds = dcmread(source, stop_before_pixels=True)
    wecare_port = free_port()
    with orthanc(tmp_path / "o", {"wecare": ("WECARE", wecare_port)}, autoforward=True) as pacs:
        with wecare(
            tmp_path / "w",
            {"pacs": ("ORTHANC", pacs.dicom_port)},
            wecare_port,
            routing=NO_ROUTING,
        ) as service:
            t0 = time.monotonic()
            pacs.upload(source)

            def outputs_in_pacs() -> dict[str, list[str]] | None:
                by_modality = pacs.instances_by_modality()
                return by_modality if "SEG" in by_modality and "SR" in by_modality else None

            by_modality = wait_for(outputs_in_pacs, 180, interval=1, what="SEG and SR in Orthanc")
            elapsed = time.monotonic() - t0
            jobs = service.api("/api/jobs")["data"]
            assert len(jobs) == 1
            job = service.api(f"/api/jobs/{jobs[0]['id']}")
            print(
                f"\nend-to-end (upload to Orthanc → SEG+SR stored in Orthanc): {elapsed:.1f} s; "
                f"stages: {job.get('stage_seconds')}; timestamps: "
                f"{ {k: job.get(k) for k in STAMPS} }"
            )
            wait_for(lambda: _job_finished(service), 30, what="job done")
            # Orthanc sees the study change and forwards it again after StableAge: WeCare keeps
            # the instances it already holds, makes no new job and sends nothing twice.
            time.sleep(5)
            assert len(service.api("/api/jobs")["data"]) == 1
            final = pacs.instances_by_modality()
            assert (len(final["SEG"]), len(final["SR"]), len(final["US"])) == (1, 1, 1)

        seg_bytes = pacs.get_bytes(f"/instances/{by_modality['SEG'][0]}/file")
        sr_bytes = pacs.get_bytes(f"/instances/{by_modality['SR'][0]}/file")
    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    seg_path.write_bytes(seg_bytes)
    sr_path.write_bytes(sr_bytes)
    seg, sr = dcmread(seg_path), dcmread(sr_path)
    assert seg.SOPClassUID == SEG_CLASS and sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == source_ds.StudyInstanceUID
    assert source_ds.SOPInstanceUID in _referenced_sops(seg)
    assert {source_ds.SOPInstanceUID, seg.SOPInstanceUID} <= _referenced_sops(sr)
    assert seg.Manufacturer == sr.Manufacturer == "WeCare"
    _assert_valid(seg_path)
    _assert_valid(sr_path)


def test_dcmtk_storescu_to_wecare_to_storescp(tmp_path: Path) -> None:
    """storescu → WeCare → storescp: the outputs arrive and validate; the job ends done."""
    received = tmp_path / "storescp-in"
    with (
        storescp(received) as (aet, port),
        wecare(tmp_path / "w", {"peer": (aet, port)}, routing=NO_ROUTING) as service,
    ):
        result = storescu(service.dicom_port, [pydicom_data_file("US1_UNCR.dcm")], extra=())
        assert result.returncode == 0, result.stderr
        wait_for(lambda: _job_finished(service), 180, interval=1, what="job done")
    files = [dcmread(p) for p in received.rglob("*") if p.is_file()]
    classes = sorted(str(ds.SOPClassUID) for ds in files)
    assert COMPREHENSIVE_3D_SR in classes
    for path in (p for p in received.rglob("*") if p.is_file()):
        _assert_valid(path)


def test_destination_down_then_up_delivered_on_retry_never_sent_early(tmp_path: Path) -> None:
    """Outputs wait in the outbox while the destination is down and go out once it is up."""
    dest_port = free_port()
    received = tmp_path / "late-peer"
    with wecare(
        tmp_path / "w",
        {"late": ("LATE", dest_port)},
        export={"base_backoff_seconds": 1, "max_backoff_seconds": 2, "max_attempts": 50},
        routing=NO_ROUTING,
    ) as service:
        result = storescu(service.dicom_port, [pydicom_data_file("US1_UNCR.dcm")], extra=())
        assert result.returncode == 0, result.stderr

        def failed_tries() -> dict | None:
            jobs = service.api("/api/jobs")["data"]
            if not jobs:
                return None
            job = service.api(f"/api/jobs/{jobs[0]['id']}")
            rows = [row for out in job["outputs"] for row in out["outbox"]]
            return job if rows and all(r["attempts"] >= 2 for r in rows) else None

        job = wait_for(failed_tries, 180, interval=1, what="failed delivery attempts")
        rows = [row for out in job["outputs"] for row in out["outbox"]]
        assert job["state"] == "exporting"
        assert all(r["state"] == "pending" and r["sent_at"] is None for r in rows)
        assert all(r["next_try_at"] and r["last_error"] for r in rows)
        up_at = time.time()
        with storescp(received, port=dest_port, aet="LATE"):
            wait_for(
                lambda: service.api(f"/api/jobs/{job['id']}")["state"] == "done",
                60,
                interval=0.5,
                what="delivery after the destination came back",
            )
        final = service.api(f"/api/jobs/{job['id']}")
    sent_rows = [row for out in final["outputs"] for row in out["outbox"]]
    assert all(r["state"] == "sent" for r in sent_rows)
    from datetime import datetime

    assert all(datetime.fromisoformat(r["sent_at"]).timestamp() >= up_at - 1 for r in sent_rows)
    assert len([p for p in received.rglob("*") if p.is_file()]) == len(sent_rows)
