"""The DICOM listener: C-ECHO and C-STORE, Success only after fsync and commit.

The store handler writes the encoded dataset as received, reads a few header tags (no
pixels), records the row and returns a status. No model, no network, no pixel decoding here.
"""

from __future__ import annotations

import logging

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
from pynetdicom.transport import ThreadedAssociationServer

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


def build_ae(ae_title: str, network_timeout_seconds: float, max_pdu_bytes: int) -> AE:
    """Our Application Entity: every storage SOP class in every usual transfer syntax."""
    ae = AE(ae_title=ae_title)
    ae.network_timeout = network_timeout_seconds
    ae.maximum_pdu_size = max_pdu_bytes
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
    require_called_ae_title: bool = False,
) -> ThreadedAssociationServer:
    """Start the listener in its own threads; call `.shutdown()` on the result to stop."""
    ae = build_ae(ae_title, network_timeout_seconds, max_pdu_bytes)
    ae.require_called_aet = require_called_ae_title
    handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [ctx]),
    ]
    server = ae.start_server((host, port), block=False, evt_handlers=handlers)
    log.info("DICOM listener %s on %s:%d", ae_title, host, port)
    return server
