"""C-STORE SCU towards destinations: what counts as delivered, and what we propose."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from service.config import DicomDestination
from service.pipeline import process_study
from service.senders import send_files
from tests.factories import make_us_image
from tests.integration.peers import free_port, storescp
from tests.service.test_pipeline import ThresholdModel, _source


@pytest.mark.integration
def test_send_files_peer_accepting_implicit_vr_only_receives_seg_and_sr(tmp_path: Path) -> None:
    src = make_us_image(tmp_path / "us.dcm")
    outputs = process_study([_source(src)], ThresholdModel(), tmp_path / "out").outputs
    with storescp(tmp_path / "peer", syntax_option="+xi") as (aet, port):
        dest = DicomDestination(name="old-pacs", ae_title=aet, host="127.0.0.1", port=port)
        results = send_files(dest, [o.path for o in outputs], calling_ae_title="WECARE")
    assert [r.delivered for r in results] == [True] * len(outputs)
    received = [dcmread(p) for p in (tmp_path / "peer").iterdir()]
    assert sorted(str(d.SOPInstanceUID) for d in received) == sorted(
        o.sop_instance_uid for o in outputs
    )
    assert {str(d.file_meta.TransferSyntaxUID) for d in received} == {"1.2.840.10008.1.2"}


def test_send_files_nobody_listening_not_delivered_with_reason(tmp_path: Path) -> None:
    src = make_us_image(tmp_path / "us.dcm")
    dest = DicomDestination(name="down", ae_title="DOWN", host="127.0.0.1", port=free_port())
    results = send_files(dest, [src], calling_ae_title="WECARE", timeout_seconds=5)
    assert len(results) == 1 and not results[0].delivered
    assert results[0].status is None and "association" in (results[0].error or "")


def test_send_files_unreadable_output_fails_its_row_only(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"junk")
    dest = DicomDestination(name="down", ae_title="DOWN", host="127.0.0.1", port=free_port())
    results = send_files(dest, [bad], calling_ae_title="WECARE", timeout_seconds=5)
    assert results[0].error and "cannot read" in results[0].error
