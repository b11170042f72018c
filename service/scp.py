"""The DICOM listener: C-ECHO and C-STORE, Success only after fsync and commit.

The store handler writes the encoded dataset as received, reads a few header tags (no
pixels), records the row and returns a status. No model, no network, no pixel decoding here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import IntEnum
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
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
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from dicom_io.read import skip_reason
from service.logs import log_context, uid_hash
from storage.db import session_scope
from storage.errors import DiskFullError, InvalidUIDError
from storage.files import DataDir, write_atomic
from storage.instances import ReceivedInstance, record_instance

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


class StoreStatus(IntEnum):
    """C-STORE statuses we return (PS3.4 Annex B.2.3)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


@dataclass
class StoreContext:
    """What the C-STORE handler needs: where to write and where to record."""

    data_dir: DataDir
    engine: Engine


def _status_for(exc: BaseException) -> StoreStatus:
    """One table from failure to status: resources for disk/database, else cannot understand."""
    if isinstance(exc, (DiskFullError, OSError, SQLAlchemyError)):
        return StoreStatus.OUT_OF_RESOURCES
    return StoreStatus.CANNOT_UNDERSTAND


def handle_echo(event: evt.Event) -> int:
    return StoreStatus.SUCCESS


def handle_store(event: evt.Event, ctx: StoreContext) -> int:
    """Write, fsync, record, then answer; any failure answers a failure status."""
    sop_uid = str(event.request.AffectedSOPInstanceUID or "")
    with log_context(uid=sop_uid):
        try:
            encoded = event.encoded_dataset()
            ctx.data_dir.ensure_free_space(len(encoded))
            header = dcmread(BytesIO(encoded), stop_before_pixels=True)
            received = _received_instance(event, header, encoded, ctx.data_dir)
        except Exception as exc:  # noqa: BLE001 - every failure must become a status
            status = _status_for(exc)
            log.warning("store refused: %s (status 0x%04X)", type(exc).__name__, status)
            return status
        try:
            write_atomic(Path(received.path), encoded)
            with session_scope(ctx.engine) as session:
                _, created = record_instance(session, received)
        except Exception as exc:  # noqa: BLE001
            status = _status_for(exc)
            log.error("store failed: %s (status 0x%04X)", type(exc).__name__, status)
            return status
        log.info(
            "stored instance study=%s series=%s %s%s",
            uid_hash(received.study_instance_uid),
            uid_hash(received.series_instance_uid),
            "new" if created else "re-sent",
            f", not processed: {received.skip_reason}" if received.skip_reason else "",
        )
        return StoreStatus.SUCCESS


def _received_instance(
    event: evt.Event, header: Dataset, encoded: bytes, data_dir: DataDir
) -> ReceivedInstance:
    study = str(header.get("StudyInstanceUID", ""))
    series = str(header.get("SeriesInstanceUID", ""))
    sop = str(header.get("SOPInstanceUID", ""))
    if not (study and series and sop):
        raise InvalidUIDError("StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID missing")
    if sop != str(event.request.AffectedSOPInstanceUID):
        raise ValueError("SOPInstanceUID differs from the request's Affected SOP Instance UID")
    path = data_dir.incoming_path(study, series, sop)
    return ReceivedInstance(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid=str(header.get("SOPClassUID", event.request.AffectedSOPClassUID)),
        transfer_syntax_uid=str(event.context.transfer_syntax),
        path=str(path),
        size_bytes=len(encoded),
        calling_ae_title=str(event.assoc.requestor.ae_title).strip() or None,
        accession_number=str(header.get("AccessionNumber", "")) or None,
        skip_reason=skip_reason(header),
    )


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
