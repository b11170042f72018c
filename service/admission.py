"""Who may hold a socket of the DICOM listener, for how long, and how many bytes it may send.

pynetdicom's server accepts every TCP connection, gives it a thread and an association slot,
and reads whatever PDU length the peer announces, with no deadline before the association is
established (the accepted socket has no timeout at all). Eight sockets that send six bytes
and then nothing held every slot of a listener with `max_associations = 8` indefinitely; a
TLS listener did its handshake in the accept loop, so one silent socket blocked everyone; an
A-ASSOCIATE-RQ announcing 290 MiB was buffered in full. This module closes those doors:

- **at connect**, before any byte is read: an address outside every allowed peer's networks
  (when every allowed peer names its networks) and an address that already holds
  `max_connections_per_address` sockets get an A-ASSOCIATE-RJ and the socket is closed;
- **a setup deadline**: a connection whose association is not established within
  `setup_timeout_seconds` of connecting is shut down (the TLS handshake included, which runs
  in the connection's own thread);
- **PDU limits**: before the association, a PDU longer than :data:`MAX_ASSOCIATE_RQ_BYTES`,
  after it one longer than the P-DATA limit, ends the connection before its body is read.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import ssl
import threading
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

log = logging.getLogger(__name__)

#: Largest A-ASSOCIATE-RQ (or any PDU before the association) we read. A real request with
#: 128 presentation contexts of 20 transfer syntaxes each, plus user identity, is under 100 KiB.
MAX_ASSOCIATE_RQ_BYTES = 256 * 1024
#: Largest P-DATA PDU we read when `max_pdu_bytes` is 0 (we announced no limit).
MAX_PDATA_BYTES_UNLIMITED = 64 * 1024 * 1024
#: How often the setup deadline is checked.
_REAP_INTERVAL_SECONDS = 0.25


@dataclass(frozen=True)
class AdmissionPolicy:
    """The limits one listener applies to every connection."""

    setup_timeout_seconds: float
    max_connections_per_address: int
    network_timeout_seconds: float
    max_pdu_bytes: int = 0  # what we announce; 0 = no limit announced
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None

    def __post_init__(self) -> None:
        if self.setup_timeout_seconds <= 0 or self.network_timeout_seconds <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_connections_per_address < 1:
            raise ValueError("max_connections_per_address must be >= 1")

    @property
    def max_pdata_bytes(self) -> int:
        return self.max_pdu_bytes or MAX_PDATA_BYTES_UNLIMITED

    def address_allowed(self, address: str) -> bool:
        """False only when every allowed peer names networks and none holds `address`."""
        if self.allowed_networks is None:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.allowed_networks)


def allowed_networks(
    hosts_per_peer: Sequence[Sequence[str]],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    """The networks an address must be in, or None when some peer may come from anywhere."""
    if not hosts_per_peer or any(not hosts for hosts in hosts_per_peer):
        return None
    return tuple(ipaddress.ip_network(h, strict=False) for hosts in hosts_per_peer for h in hosts)


def _reject_pdu(result: int, source: int, reason: int) -> bytes:
    rj = A_ASSOCIATE_RJ()
    rj.result, rj.source, rj.reason_diagnostic = result, source, reason
    return bytes(rj.encode())


#: Rejected-permanent, by the service user, no reason given (an address not allowed).
_RJ_ADDRESS = _reject_pdu(0x01, 0x01, 0x01)
#: Rejected-transient, by the service provider (presentation), local limit exceeded.
_RJ_LIMIT = _reject_pdu(0x02, 0x03, 0x02)


class PduTooLargeError(OSError):
    """A peer announced a PDU longer than we read in this phase of the association."""


class GuardedAssociationSocket(AssociationSocket):
    """pynetdicom's socket, refusing to read a PDU body longer than the phase's limit.

    The DUL reads a PDU as ``recv(6)`` (type and length) then ``recv(length)``; an OSError
    from the second read is its "connection closed" event, so the association ends without
    the announced body ever being buffered.
    """

    policy: AdmissionPolicy

    def recv(self, nr_bytes: int) -> bytearray:
        limit = self.policy.max_pdata_bytes if self.assoc.is_established else MAX_ASSOCIATE_RQ_BYTES
        if nr_bytes > limit:
            log.warning(
                "connection from %s closed: PDU of %d bytes announced, limit %d %s association",
                self.assoc.requestor.address,
                nr_bytes,
                limit,
                "after" if self.assoc.is_established else "before",
            )
            raise PduTooLargeError(f"PDU of {nr_bytes} bytes exceeds {limit}")
        return super().recv(nr_bytes)


class GuardedRequestHandler(RequestHandler):
    """Creates the association with a guarded socket and records when it started."""

    server: GuardedAssociationServer

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        sock = assoc.dul.socket
        # Same class layout, one overridden method: the library builds the socket inline.
        sock.__class__ = GuardedAssociationSocket
        sock.policy = self.server.policy  # type: ignore[attr-defined]
        # The acceptor thread waits this long for the A-ASSOCIATE-RQ (pynetdicom's default is
        # 30 s whatever the socket does): the setup deadline is the association's ACSE timer.
        assoc.acse_timeout = self.server.policy.setup_timeout_seconds
        self.server.opened_at[assoc] = time.monotonic()
        return assoc


class GuardedAssociationServer(ThreadedAssociationServer):
    """A threaded association server that applies an :class:`AdmissionPolicy`."""

    def __init__(self, *args: Any, policy: AdmissionPolicy, **kwargs: Any) -> None:
        self.policy = policy
        self.opened_at: weakref.WeakKeyDictionary[Association, float] = weakref.WeakKeyDictionary()
        self._pending: Counter[str] = Counter()  # admitted, association not yet created
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        kwargs["request_handler"] = GuardedRequestHandler
        super().__init__(*args, **kwargs)
        self._reaper = threading.Thread(
            target=self._reap_forever, name="dicom-setup-deadline", daemon=True
        )
        self._reaper.start()

    # -- accept ------------------------------------------------------------------------------
    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept with a read timeout; leave any TLS handshake to the connection's thread."""
        assert self.socket is not None
        client, address = self.socket.accept()
        client.settimeout(self.policy.network_timeout_seconds)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit by address and per-address count, before reading a single byte."""
        address = str(client_address[0])
        if not self.policy.address_allowed(address):
            log.warning("connection from %s refused: address not allowed", address)
            self._refuse(request, _RJ_ADDRESS)
            return False
        with self._lock:
            held = self._pending[address] + self._active_from(address)
            if held >= self.policy.max_connections_per_address:
                log.warning(
                    "connection from %s refused: %d connections already open from it",
                    address,
                    held,
                )
                self._refuse(request, _RJ_LIMIT)
                return False
            self._pending[address] += 1
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """In the connection's thread: TLS handshake within the setup deadline, then pynetdicom."""
        address = str(client_address[0])
        try:
            if isinstance(request, ssl.SSLSocket):
                request.settimeout(self.policy.setup_timeout_seconds)
                try:
                    request.do_handshake()
                except (OSError, ssl.SSLError) as exc:
                    log.warning("TLS handshake with %s failed: %s", address, type(exc).__name__)
                    self.shutdown_request(request)
                    return
                request.settimeout(self.policy.network_timeout_seconds)
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._pending[address] -= 1
                if self._pending[address] <= 0:
                    del self._pending[address]

    def _active_from(self, address: str) -> int:
        return sum(
            1
            for assoc in self.active_associations
            if assoc.is_alive() and str(assoc.requestor.address) == address
        )

    def _refuse(self, request: Any, pdu: bytes) -> None:
        if isinstance(request, ssl.SSLSocket):
            return  # no handshake yet: nothing can be said over it; the socket is closed
        try:
            request.settimeout(1.0)
            request.sendall(pdu)
        except OSError:
            pass

    # -- setup deadline ----------------------------------------------------------------------
    def _reap_forever(self) -> None:
        while not self._stopped.wait(_REAP_INTERVAL_SECONDS):
            try:
                self.reap_unestablished()
            except Exception:
                log.exception("setup-deadline check failed")

    def reap_unestablished(self) -> int:
        """Shut down connections still without an association after the setup timeout."""
        now = time.monotonic()
        reaped = 0
        for assoc, opened in list(self.opened_at.items()):
            if assoc.is_established or not assoc.is_alive():
                continue
            if assoc.is_released or assoc.is_aborted or assoc.is_rejected:
                continue
            if now - opened < self.policy.setup_timeout_seconds:
                continue
            raw = assoc.dul.socket.socket if assoc.dul.socket else None
            if raw is None:
                continue
            log.warning(
                "connection from %s closed: no association within %.0f s",
                assoc.requestor.address,
                self.policy.setup_timeout_seconds,
            )
            try:
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.opened_at.pop(assoc, None)
            reaped += 1
        return reaped

    def shutdown(self) -> None:
        """Stop accepting and close (this server is not in the AE's list of servers)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def server_close(self) -> None:
        self._stopped.set()
        super().server_close()
