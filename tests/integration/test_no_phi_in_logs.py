"""No patient data in any log line: a canary study through the real service at DEBUG level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE

from tests.factories import CANARY, make_us_image
from tests.integration.peers import storescp, storescu, wait_for, wecare

pytestmark = pytest.mark.integration


def _send(port: int, ds: Dataset) -> int | None:
    ae = AE(ae_title="CANARYSCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="WECARE")
    assert assoc.is_established
    rsp = assoc.send_c_store(ds)
    assoc.release()
    return int(rsp.Status) if "Status" in rsp else None


def _canary_strings() -> list[str]:
    values = [str(v) for v in CANARY.values()]
    name_parts = [p for p in str(CANARY["PatientName"]).split("^") if len(p) > 3]
    birth = str(CANARY["PatientBirthDate"])
    return values + name_parts + [f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"]


def test_canary_study_processed_and_failed_paths_leave_no_phi_in_logs(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    good = make_us_image(tmp_path / "in" / "good.dcm")
    # Same canary patient, another study, pixel data cut in half: stored, then a job error.
    broken = dcmread(
        make_us_image(tmp_path / "in" / "b.dcm", sop_instance_uid="1.2.826.0.1.3680043.10.9.9")
    )
    broken.StudyInstanceUID = "1.2.826.0.1.3680043.10.9"
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 2]
    # Same patient, a third study with a malformed birth date (pydicom quotes such values in
    # its warnings; service.logs redacts them, tested in tests/service/test_logs.py): done.
    odd = dcmread(
        make_us_image(tmp_path / "in" / "o.dcm", sop_instance_uid="1.2.826.0.1.3680043.10.9.8")
    )
    odd.StudyInstanceUID = "1.2.826.0.1.3680043.10.8"
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):
        odd.PatientBirthDate = f"{CANARY['PatientBirthDate']}X"
    with storescp(tmp_path / "peer") as (aet, port):
        with wecare(tmp_path / "w", {"peer": (aet, port)}, log={"level": "DEBUG"}) as service:
            result = storescu(service.dicom_port, [good], extra=())
            assert result.returncode == 0, result.stderr
            assert _send(service.dicom_port, broken) == 0x0000
            assert _send(service.dicom_port, odd) == 0x0000
            wait_for(
                lambda: (
                    (jobs := service.api("/api/jobs")["data"])
                    and all(j["state"] in ("done", "failed") for j in jobs)
                ),
                180,
                interval=1,
                what="jobs finished",
            )
            jobs = service.api("/api/jobs")["data"]
            assert sorted(j["state"] for j in jobs) == ["done", "done", "failed"]
            for job in jobs:
                detail = service.api(f"/api/jobs/{job['id']}")
                leaked = [
                    c for c in _canary_strings() if c.lower() in str(detail.get("error")).lower()
                ]
                assert leaked == []
        text = service.log_text()
        files = sorted((tmp_path / "w" / "wecare-data" / "logs").glob("*.log*"))
        assert files, "the service wrote no log file"
        text += "".join(f.read_text(errors="replace") for f in files)
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) > 10
    leaks = [(s, line) for line in lines for s in _canary_strings() if s.lower() in line.lower()]
    assert leaks == [], f"patient data in logs: {leaks[:3]}"
    not_json = [line for line in lines if not line.startswith("{")]
    assert not_json == [], f"non-JSON log lines: {not_json[:3]}"
    assert all("msg" in json.loads(line) for line in lines)
