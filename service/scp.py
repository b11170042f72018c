"""The DICOM listener: C-ECHO and C-STORE, Success only after fsync and commit.

The store handler writes the encoded dataset as received, reads a few header tags (no
pixels), records the row and returns a status. No model, no network, no pixel decoding here.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from collections.abc import Sequence

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from service.admission import AdmissionPolicy, GuardedAssociationServer, allowed_networks
from service.config import AllowedPeer
from service.ingest import StoreContext, StoreStatus, store_encoded

log = logging.getLogger(__name__)

# Never let pynetdicom log identifiers from C-FIND/C-MOVE requests or responses.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]


def handle_echo(event: evt.Event) -> int:
    return StoreStatus.SUCCESS


def handle_store(event: evt.Event, ctx: StoreContext) -> int:
    """Write, fsync, record, then answer; any failure answers a failure status."""
    try:
        encoded = event.encoded_dataset()
    except Exception:  # noqa: BLE001 - a dataset pynetdicom cannot encode is not understood
        log.warning("store refused: dataset could not be encoded")
        return StoreStatus.CANNOT_UNDERSTAND
    outcome = store_encoded(
        ctx,
        encoded,
        transfer_syntax_uid=str(event.context.transfer_syntax),
        calling_ae_title=str(event.assoc.requestor.ae_title).strip() or None,
        expected_sop_instance_uid=str(event.request.AffectedSOPInstanceUID or "") or None,
    )
    return outcome.status


def peer_allowed(peers: Sequence[AllowedPeer], calling_ae_title: str, address: str) -> bool:
    """True when the allow-list is empty, or names this AE title (from an allowed address)."""
    if not peers:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    for peer in peers:
        if peer.ae_title != calling_ae_title.strip():
            continue
        if not peer.hosts:
            return True
        if ip is not None and any(ip in ipaddress.ip_network(h, strict=False) for h in peer.hosts):
            return True
    return False


def handle_requested(event: evt.Event, peers: Sequence[AllowedPeer]) -> None:
    """Reject an association from a peer not on the allow-list (before any negotiation)."""
    assoc = event.assoc
    calling = str(assoc.requestor.primitive.calling_ae_title).strip()
    if not peer_allowed(peers, calling, str(assoc.requestor.address)):
        log.warning(
            "association rejected: calling AE title %r from %s not allowed",
            calling,
            assoc.requestor.address,
        )
        # Rejected (permanent), by the service user, calling AE title not recognised.
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()  # as pynetdicom's own rejections do: lets the DUL flush the A-ASSOCIATE-RJ


def build_ae(
    ae_title: str, network_timeout_seconds: float, max_pdu_bytes: int, max_associations: int = 64
) -> AE:
    """Our Application Entity: every storage SOP class in every usual transfer syntax."""
    ae = AE(ae_title=ae_title)
    ae.network_timeout = network_timeout_seconds
    ae.maximum_pdu_size = max_pdu_bytes
    ae.maximum_associations = max_associations
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
    return ae


def start_scp(
    ctx: StoreContext,
    *,
    ae_title: str,
    host: str,
    port: int,
    network_timeout_seconds: float = 60,
    max_pdu_bytes: int = 0,
    require_called_ae_title: bool = True,
    max_associations: int = 64,
    max_connections_per_address: int = 16,
    association_setup_timeout_seconds: float = 10,
    allowed_peers: Sequence[AllowedPeer] = (),
    ssl_context: ssl.SSLContext | None = None,
) -> GuardedAssociationServer:
    """Start the listener in its own threads; call `.shutdown()` on the result to stop.

    Every connection passes `service.admission` first: the address and per-address checks
    at connect, the association-setup deadline and the PDU size limits. With `ssl_context`
    the listener speaks TLS only: a plain-text peer fails the handshake and never reaches
    association negotiation.
    """
    ae = build_ae(ae_title, network_timeout_seconds, max_pdu_bytes, max_associations)
    ae.require_called_aet = require_called_ae_title
    handlers = [
        (evt.EVT_REQUESTED, handle_requested, [list(allowed_peers)]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [ctx]),
    ]
    policy = AdmissionPolicy(
        setup_timeout_seconds=association_setup_timeout_seconds,
        max_connections_per_address=max_connections_per_address,
        network_timeout_seconds=network_timeout_seconds,
        max_pdu_bytes=max_pdu_bytes,
        allowed_networks=allowed_networks([p.hosts for p in allowed_peers]),
    )
    server = ae.make_server(
        (host, port),
        evt_handlers=handlers,
        ssl_context=ssl_context,
        server_class=GuardedAssociationServer,
        policy=policy,
    )
    threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True).start()
    log.info(
        "DICOM listener %s on %s:%d%s%s",
        ae_title,
        host,
        port,
        " (TLS)" if ssl_context else "",
        f", {len(allowed_peers)} allowed peer(s)" if allowed_peers else ", any calling AE title",
    )
    return server
