"""Connection admission of the real listener: half-open, oversized and hostile sockets.

Each test opens raw TCP sockets against `start_scp` on loopback (an attacker needs nothing
more) and then checks that a well-behaved peer still gets an association. Loopback holds all
of 127.0.0.0/8, so an "attacker" binds 127.0.0.2 while the PACS talks from 127.0.0.1.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pynetdicom import AE
from sqlalchemy import Engine

from service.config import AllowedPeer, DicomSettings
from service.ingest import StoreContext
from service.scp import start_scp
from service.tls import server_context
from storage.files import DataDir
from tests.integration.peers import free_port

VERIFICATION = "1.2.840.10008.1.1"
ATTACKER = "127.0.0.2"
PACS = "127.0.0.1"
# The first 6 bytes of an A-ASSOCIATE-RQ announcing a 16-byte body that never comes.
HALF_OPEN_HEADER = bytes.fromhex("010000000010")
A_ASSOCIATE_RJ = 0x03


@pytest.fixture()
def ctx(data_dir: DataDir, engine: Engine) -> StoreContext:
    return StoreContext(data_dir, engine)


@contextmanager
def listener(ctx: StoreContext, **kwargs: object) -> Iterator[int]:
    port = free_port()
    server = start_scp(ctx, ae_title="WECARE", host=PACS, port=port, **kwargs)  # type: ignore[arg-type]
    try:
        yield port
    finally:
        server.shutdown()


def _echo(port: int, source: str = PACS, calling: str = "PACS") -> bool:
    """True when a C-ECHO association from `source` is accepted and answered Success."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = 5
    ae.network_timeout = 5
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(PACS, port, ae_title="WECARE", bind_address=(source, 0))
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def _echo_within(port: int, seconds: float) -> bool:
    """A peer retrying for `seconds` (association threads take a moment to wind down)."""
    deadline = time.monotonic() + seconds
    while True:
        if _echo(port):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _connect(port: int, source: str = ATTACKER, send: bytes = HALF_OPEN_HEADER) -> socket.socket:
    sock = socket.create_connection((PACS, port), timeout=5, source_address=(source, 0))
    if send:
        sock.sendall(send)
    return sock


def _closed_or_rejected(sock: socket.socket, within_seconds: float) -> str:
    """How the listener ended this connection: 'rejected' (A-ASSOCIATE-RJ), 'closed', 'open'."""
    sock.settimeout(within_seconds)
    try:
        first = sock.recv(1)
    except TimeoutError:
        return "open"
    except ConnectionResetError:
        return "closed"
    if not first:
        return "closed"
    return "rejected" if first[0] == A_ASSOCIATE_RJ else f"pdu 0x{first[0]:02X}"


def test_admission_half_open_connections_dropped_after_setup_timeout(ctx: StoreContext) -> None:
    """All slots held by half-open associations come free after the setup timeout."""
    with listener(
        ctx,
        max_associations=4,
        max_connections_per_address=4,
        association_setup_timeout_seconds=1.0,
        network_timeout_seconds=60,
    ) as port:
        attackers = [_connect(port) for _ in range(4)]
        time.sleep(0.3)
        assert not _echo(port), "the slots should be full while the half-open sockets last"
        outcomes = [_closed_or_rejected(s, within_seconds=5) for s in attackers]
        assert outcomes == ["closed"] * 4
        assert _echo_within(port, seconds=3)
        for s in attackers:
            s.close()


def test_admission_connections_per_address_capped_other_peers_served(ctx: StoreContext) -> None:
    with listener(
        ctx,
        max_associations=8,
        max_connections_per_address=2,
        association_setup_timeout_seconds=30,
    ) as port:
        held = [_connect(port) for _ in range(2)]
        time.sleep(0.3)
        third = _connect(port)
        assert _closed_or_rejected(third, within_seconds=2) == "rejected"
        started = time.monotonic()
        assert _echo(port, source=PACS)
        assert time.monotonic() - started < 3  # served at once, not after the timeout
        for s in [*held, third]:
            s.close()


def test_admission_address_not_on_allow_list_refused_at_connect(ctx: StoreContext) -> None:
    """Every allowed peer names its addresses: an outside address is refused before its RQ."""
    peers = [AllowedPeer(ae_title="PACS", hosts=[f"{PACS}/32"])]
    with listener(ctx, allowed_peers=peers, association_setup_timeout_seconds=30) as port:
        outsider = _connect(port, source=ATTACKER, send=b"")
        assert _closed_or_rejected(outsider, within_seconds=2) == "rejected"
        outsider.close()
        assert not _echo(port, source=ATTACKER)
        assert _echo(port, source=PACS)


def test_admission_oversized_associate_request_refused_before_buffering(
    ctx: StoreContext,
) -> None:
    """An A-ASSOCIATE-RQ announcing 290 MiB is cut off after at most the RQ limit."""
    announced = 290 * 1024 * 1024
    with listener(ctx, association_setup_timeout_seconds=30) as port:
        sock = _connect(port, send=struct.pack(">BBL", 0x01, 0, announced))
        chunk = b"\0" * 65536
        sent = 0
        with pytest.raises(OSError):  # reset or broken pipe once the listener gives up
            while sent < 64 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
        sock.close()
        # What the kernel buffers on both sides is a few MiB; the listener read none of it.
        assert sent < 16 * 1024 * 1024
        assert _echo_within(port, seconds=3)


def test_admission_oversized_pdata_after_association_aborts(ctx: StoreContext) -> None:
    """After the association, a PDU larger than the P-DATA limit ends it (not buffered)."""
    with listener(ctx, max_pdu_bytes=16384, association_setup_timeout_seconds=30) as port:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(VERIFICATION)
        assoc = ae.associate(PACS, port, ae_title="WECARE")
        assert assoc.is_established
        raw = assoc.dul.socket.socket  # type: ignore[union-attr]
        header = struct.pack(">BBL", 0x04, 0, 512 * 1024 * 1024)
        sent = 0
        with pytest.raises(OSError):
            raw.sendall(header)
            while sent < 64 * 1024 * 1024:
                raw.sendall(b"\0" * 65536)
                sent += 65536
        assert sent < 16 * 1024 * 1024
        assoc.abort()
        assert _echo_within(port, seconds=3)


def test_admission_silent_tls_connection_does_not_block_the_listener(
    ctx: StoreContext, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A TCP connection to a TLS listener that never starts its handshake blocks no one."""
    from tests.service.test_scp_security import _issue, _make_ca  # the same throwaway PKI

    tmp = tmp_path_factory.mktemp("pki")
    ca, ca_key = _make_ca(tmp, "ca")
    cert, key = _issue(tmp, "server", ca, ca_key, "IP:127.0.0.1")
    tls = server_context(cert, key, None, False)
    with listener(ctx, ssl_context=tls, association_setup_timeout_seconds=1.0) as port:
        silent = _connect(port, send=b"")
        time.sleep(0.3)
        ae = AE(ae_title="PACS")
        ae.add_requested_context(VERIFICATION)
        import ssl

        client = ssl.create_default_context(cafile=str(ca))
        started = time.monotonic()
        assoc = ae.associate(PACS, port, ae_title="WECARE", tls_args=(client, "127.0.0.1"))
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
        assert time.monotonic() - started < 3
        assert _closed_or_rejected(silent, within_seconds=5) == "closed"
        silent.close()


def test_config_called_ae_title_required_by_default() -> None:
    assert DicomSettings().require_called_ae_title is True
