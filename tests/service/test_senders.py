"""C-STORE SCU towards destinations: what counts as delivered, and what we propose."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from service.config import DicomDestination, StowRsDestination
from service.pipeline import process_study
from service.senders import send, send_files, send_stow
from tests.factories import make_us_image
from tests.integration.peers import Orthanc, free_port, orthanc, storescp
from tests.service.test_pipeline import ThresholdModel, _source
from tests.service.test_scp_security import Pki, pki  # noqa: F401 - a fixture


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


# --- STOW-RS (DICOMweb) ---------------------------------------------------------------------


def _pipeline_outputs(tmp_path: Path) -> list:  # type: ignore[type-arg]
    src = make_us_image(tmp_path / "us.dcm")
    outputs = process_study([_source(src)], ThresholdModel(), tmp_path / "out").outputs
    assert sorted(o.kind for o in outputs) == ["seg", "sr"]
    return outputs


def _orthanc_sop_uids(pacs: Orthanc) -> dict[str, str]:
    """{SOP Instance UID: Modality} of what Orthanc holds, read through its REST API."""
    found = {}
    for instance_id in pacs.get("/instances"):
        tags = pacs.get(f"/instances/{instance_id}/simplified-tags")
        found[str(tags["SOPInstanceUID"])] = str(tags["Modality"])
    return found


@pytest.mark.integration
def test_send_stow_orthanc_dicomweb_stores_pipeline_seg_and_sr(tmp_path: Path) -> None:
    outputs = _pipeline_outputs(tmp_path)
    with orthanc(tmp_path / "pacs", {}, dicomweb=True) as pacs:
        dest = StowRsDestination(kind="stow-rs", name="web-pacs", url=pacs.dicomweb_url)
        results = send(dest, [o.path for o in outputs], calling_ae_title="WECARE")
        held = _orthanc_sop_uids(pacs)
    assert [(r.delivered, r.status, r.error) for r in results] == [(True, 0, None)] * 2
    assert held == {o.sop_instance_uid: o.kind.upper() for o in outputs}


@pytest.mark.integration
def test_send_stow_nobody_listening_not_delivered_with_reason(tmp_path: Path) -> None:
    src = make_us_image(tmp_path / "us.dcm")
    dest = StowRsDestination(
        kind="stow-rs", name="down", url=f"http://127.0.0.1:{free_port()}/dicom-web"
    )
    results = send_stow(dest, [src], timeout_seconds=5)
    assert len(results) == 1 and not results[0].delivered
    assert results[0].status is None and results[0].error == "request failed: ConnectError"


class _CannedPacs(ThreadingHTTPServer):
    """A DICOMweb peer on a real socket that answers each POST with `reply(sop_uids)`."""

    def __init__(self, reply: Callable[[list[str]], tuple[int, dict | None]]) -> None:  # type: ignore[type-arg]
        super().__init__(("127.0.0.1", free_port()), _CannedHandler)
        self.reply = reply
        self.requests: list[tuple[str, dict[str, str], list[str]]] = []


class _CannedHandler(BaseHTTPRequestHandler):
    server: _CannedPacs

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        boundary = self.headers.get_param("boundary")
        parts = body.split(f"--{boundary}".encode())[1:-1]
        uids = [
            str(dcmread(BytesIO(p.split(b"\r\n\r\n", 1)[1][:-2])).SOPInstanceUID) for p in parts
        ]
        self.server.requests.append((self.path, dict(self.headers), uids))
        code, payload = self.server.reply(uids)
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _canned(reply: Callable[[list[str]], tuple[int, dict | None]]) -> Iterator[_CannedPacs]:  # type: ignore[type-arg]
    server = _CannedPacs(reply)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _item(uid: str, reason_tag: str | None = None, reason: int | None = None) -> dict:  # type: ignore[type-arg]
    item = {"00081155": {"vr": "UI", "Value": [uid]}}
    if reason_tag:
        item[reason_tag] = {"vr": "US", "Value": [reason]}
    return item


def test_send_stow_202_failed_and_warned_instances_not_delivered_with_reasons(
    tmp_path: Path,
) -> None:
    outputs = _pipeline_outputs(tmp_path)
    seg, sr = (next(o for o in outputs if o.kind == k) for k in ("seg", "sr"))

    def reply(uids: list[str]) -> tuple[int, dict]:  # type: ignore[type-arg]
        assert sorted(uids) == sorted([seg.sop_instance_uid, sr.sop_instance_uid])
        return 202, {
            "00081199": {"vr": "SQ", "Value": [_item(sr.sop_instance_uid, "00081196", 0xB000)]},
            "00081198": {"vr": "SQ", "Value": [_item(seg.sop_instance_uid, "00081197", 0xA700)]},
        }

    with _canned(reply) as pacs:
        dest = StowRsDestination(
            kind="stow-rs",
            name="picky",
            url=f"http://127.0.0.1:{pacs.server_port}/wado",
            auth="bearer",
            token="t0ken",
        )
        results = send_stow(dest, [seg.path, sr.path], timeout_seconds=5)
        ((path, headers, _),) = pacs.requests
    assert path == "/wado/studies"
    assert headers["Authorization"] == "Bearer t0ken"
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    by_path = {r.path: r for r in results}
    assert not by_path[seg.path].delivered and by_path[seg.path].status == 0xA700
    assert by_path[seg.path].error == "HTTP 202: instance not stored (0xA700)"
    assert not by_path[sr.path].delivered and by_path[sr.path].status == 0xB000
    assert by_path[sr.path].error == "HTTP 202: instance stored with warning 0xB000"


@pytest.mark.parametrize("code", [409, 503])
def test_send_stow_http_error_fails_every_instance_without_status(
    tmp_path: Path, code: int
) -> None:
    src = make_us_image(tmp_path / "us.dcm")
    with _canned(lambda uids: (code, None)) as pacs:
        dest = StowRsDestination(
            kind="stow-rs", name="busy", url=f"http://127.0.0.1:{pacs.server_port}"
        )
        results = send_stow(dest, [src], timeout_seconds=5)
    assert [(r.delivered, r.status, r.error) for r in results] == [
        (False, None, f"HTTP {code}: not stored")
    ]


def test_send_stow_200_not_listing_the_instance_not_delivered(tmp_path: Path) -> None:
    src = make_us_image(tmp_path / "us.dcm")
    with _canned(lambda uids: (200, {"00081199": {"vr": "SQ"}})) as pacs:
        dest = StowRsDestination(
            kind="stow-rs", name="vague", url=f"http://127.0.0.1:{pacs.server_port}"
        )
        results = send_stow(dest, [src], timeout_seconds=5)
    assert not results[0].delivered
    assert results[0].error == "HTTP 200: response does not list the instance"


def test_send_stow_https_verified_with_ca_file_only(tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    src = make_us_image(tmp_path / "us.dcm")
    uid = str(dcmread(src).SOPInstanceUID)
    stored = (200, {"00081199": {"vr": "SQ", "Value": [_item(uid)]}})
    with _canned(lambda uids: stored) as pacs:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        pacs.socket = context.wrap_socket(pacs.socket, server_side=True)
        url = f"https://127.0.0.1:{pacs.server_port}/dicom-web"
        trusted = StowRsDestination(kind="stow-rs", name="tls", url=url, tls_ca_file=pki.ca)
        untrusted = StowRsDestination(kind="stow-rs", name="tls", url=url)
        assert [r.delivered for r in send_stow(trusted, [src], timeout_seconds=5)] == [True]
        refused = send_stow(untrusted, [src], timeout_seconds=5)
    assert not refused[0].delivered and refused[0].error == "request failed: ConnectError"
    assert len(pacs.requests) == 1  # the unverified server never got the instance
