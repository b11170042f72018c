"""Who may talk to the listener: calling-AE allow-list (with addresses) and DICOM over TLS.

TLS is checked with dcmtk's storescu as a real peer and certificates made with openssl.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import Engine, func, select

from service.config import AllowedPeer, DicomDestination
from service.ingest import StoreContext
from service.scp import peer_allowed, start_scp
from service.senders import send_files
from service.tls import server_context
from storage.db import session_scope
from storage.files import DataDir
from storage.models import Instance
from tests.integration.peers import free_port, require
from tests.realfiles import pydicom_data_file

US_FILE = "US1_UNCR.dcm"


def _associate(port: int, calling: str) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="WECARE")
    established = assoc.is_established
    if established:
        assoc.release()
    return established


@pytest.mark.parametrize(
    ("peers", "calling", "address", "allowed"),
    [
        ([], "ANYONE", "10.1.2.3", True),
        ([AllowedPeer(ae_title="PACS")], "PACS", "10.1.2.3", True),
        ([AllowedPeer(ae_title="PACS")], "OTHER", "10.1.2.3", False),
        ([AllowedPeer(ae_title="PACS", hosts=["10.1.0.0/16"])], "PACS", "10.1.2.3", True),
        ([AllowedPeer(ae_title="PACS", hosts=["10.1.0.0/16"])], "PACS", "10.2.2.3", False),
        ([AllowedPeer(ae_title="PACS", hosts=["::1"])], "PACS", "::1", True),
    ],
)
def test_peer_allowed_rules(
    peers: list[AllowedPeer], calling: str, address: str, allowed: bool
) -> None:
    assert peer_allowed(peers, calling, address) is allowed


@pytest.fixture()
def ctx(data_dir: DataDir, engine: Engine) -> StoreContext:
    return StoreContext(data_dir, engine)


def test_allow_list_unknown_calling_ae_rejected_known_accepted(ctx: StoreContext) -> None:
    port = free_port()
    server = start_scp(
        ctx,
        ae_title="WECARE",
        host="127.0.0.1",
        port=port,
        allowed_peers=[AllowedPeer(ae_title="ORTHANC", hosts=["127.0.0.0/8"])],
    )
    try:
        assert _associate(port, "ORTHANC") is True
        assert _associate(port, "INTRUDER") is False
    finally:
        server.shutdown()


def test_allow_list_known_ae_from_wrong_address_rejected(ctx: StoreContext) -> None:
    port = free_port()
    server = start_scp(
        ctx,
        ae_title="WECARE",
        host="127.0.0.1",
        port=port,
        allowed_peers=[AllowedPeer(ae_title="ORTHANC", hosts=["192.0.2.0/24"])],
    )
    try:
        assert _associate(port, "ORTHANC") is False
    finally:
        server.shutdown()


@pytest.mark.integration
def test_allow_list_dcmtk_storescu_unknown_ae_refused_nothing_stored(
    ctx: StoreContext, engine: Engine
) -> None:
    from tests.integration.peers import storescu

    port = free_port()
    server = start_scp(
        ctx,
        ae_title="WECARE",
        host="127.0.0.1",
        port=port,
        allowed_peers=[AllowedPeer(ae_title="ORTHANC")],
    )
    try:
        refused = storescu(port, [pydicom_data_file(US_FILE)], calling_aet="STRANGER", extra=())
        accepted = storescu(port, [pydicom_data_file(US_FILE)], calling_aet="ORTHANC", extra=())
    finally:
        server.shutdown()
    assert refused.returncode != 0 and "Rejected" in (refused.stderr + refused.stdout)
    assert accepted.returncode == 0, accepted.stderr
    with session_scope(engine) as s:
        assert s.scalar(select(func.count(Instance.id))) == 1


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str) -> None:
    subprocess.run([require("openssl"), *args], check=True, capture_output=True)


def _issue(tmp: Path, name: str, ca: Path, ca_key: Path, san: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (
        tmp / f"{name}.key",
        tmp / f"{name}.csr",
        tmp / f"{name}.crt",
        tmp / f"{name}.ext",
    )
    ext.write_text(f"subjectAltName={san}\n")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={name}",
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return cert, key


def _make_ca(tmp: Path, name: str) -> tuple[Path, Path]:
    key, cert = tmp / f"{name}.key", tmp / f"{name}.crt"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca, ca_key = _make_ca(tmp, "wecare-test-ca")
    rogue_ca, rogue_ca_key = _make_ca(tmp, "rogue-ca")
    server_cert, server_key = _issue(tmp, "wecare", ca, ca_key, "IP:127.0.0.1,DNS:localhost")
    client_cert, client_key = _issue(tmp, "pacs", ca, ca_key, "DNS:pacs")
    rogue_cert, rogue_key = _issue(tmp, "rogue", rogue_ca, rogue_ca_key, "DNS:rogue")
    return Pki(ca, server_cert, server_key, client_cert, client_key, rogue_cert, rogue_key)


@pytest.fixture()
def tls_scp(ctx: StoreContext, pki: Pki) -> Iterator[int]:
    port = free_port()
    server = start_scp(
        ctx,
        ae_title="WECARE",
        host="127.0.0.1",
        port=port,
        ssl_context=server_context(pki.server_cert, pki.server_key, pki.ca, True),
    )
    yield port
    server.shutdown()


def _storescu_tls(
    port: int, key: Path | None, cert: Path | None, ca: Path
) -> subprocess.CompletedProcess[str]:
    tls = ["+tls", str(key), str(cert)] if key and cert else ["+tla"]
    return subprocess.run(
        [
            require("storescu"),
            *tls,
            "+cf",
            str(ca),
            "-aec",
            "WECARE",
            "-aet",
            "PACS",
            "127.0.0.1",
            str(port),
            str(pydicom_data_file(US_FILE)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _stored(engine: Engine) -> int:
    with session_scope(engine) as s:
        return s.scalar(select(func.count(Instance.id))) or 0


@pytest.mark.integration
def test_tls_dcmtk_client_with_trusted_cert_stores(tls_scp: int, pki: Pki, engine: Engine) -> None:
    result = _storescu_tls(tls_scp, pki.client_key, pki.client_cert, pki.ca)
    assert result.returncode == 0, result.stderr
    assert _stored(engine) == 1


@pytest.mark.integration
def test_tls_plain_text_peer_refused(tls_scp: int, engine: Engine) -> None:
    from tests.integration.peers import storescu

    result = storescu(tls_scp, [pydicom_data_file(US_FILE)], calling_aet="PACS", extra=())
    assert result.returncode != 0
    assert _stored(engine) == 0


@pytest.mark.integration
def test_tls_client_cert_from_unknown_ca_refused(tls_scp: int, pki: Pki, engine: Engine) -> None:
    result = _storescu_tls(tls_scp, pki.rogue_key, pki.rogue_cert, pki.ca)
    assert result.returncode != 0
    assert _stored(engine) == 0


@pytest.mark.integration
def test_tls_client_without_certificate_refused_when_required(
    tls_scp: int, pki: Pki, engine: Engine
) -> None:
    result = _storescu_tls(tls_scp, None, None, pki.ca)
    assert result.returncode != 0
    assert _stored(engine) == 0


def test_tls_sender_delivers_to_tls_listener_and_verifies_server(
    tls_scp: int, pki: Pki, engine: Engine, tmp_path: Path
) -> None:
    source = pydicom_data_file(US_FILE)
    good = DicomDestination(
        name="tls-pacs",
        ae_title="WECARE",
        host="127.0.0.1",
        port=tls_scp,
        tls=True,
        tls_ca_file=pki.ca,
        tls_cert_file=pki.client_cert,
        tls_key_file=pki.client_key,
    )
    results = send_files(good, [source], calling_ae_title="PACS")
    assert [r.delivered for r in results] == [True]
    assert _stored(engine) == 1
    # A server we cannot verify (our CA file is the rogue one) gets nothing.
    untrusted = good.model_copy(update={"tls_ca_file": pki.rogue_cert})
    results = send_files(untrusted, [source], calling_ae_title="PACS")
    assert [r.delivered for r in results] == [False]
    assert results[0].error and "association" in results[0].error
    assert dcmread(source).SOPInstanceUID  # source untouched
