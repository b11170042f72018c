"""Storing one received DICOM instance, from the listener or the upload API, durably.

Order matters: check free space, parse a few header tags (no pixels), hash the bytes, write
the file atomically (fsync), record the row (commit), and only then report Success. Any
failure maps to a failure status; nothing is acknowledged that is not on disk and in the
database. The same SOP Instance UID with the same bytes writes nothing; with other bytes it
is stored beside the first file, never over it, as a conflicting copy (storage.instances).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from enum import IntEnum
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from dicom_io.deflate import MAX_INFLATED_BYTES, InflateLimitError, check_inflated_size
from dicom_io.errors import UnsupportedObjectError
from dicom_io.read import skip_reason
from dicom_io.routing import RoutingRules
from service.logs import log_context, uid_hash
from service.metrics import counts_ingest
from storage.db import session_scope
from storage.errors import DiskFullError, InvalidUIDError
from storage.files import DataDir
from storage.instances import (
    PlacedFile,
    ReceivedInstance,
    content_sha256,
    known_copies,
    record_instance,
    record_new_instance,
    start_place_file,
    uid_known,
)

log = logging.getLogger(__name__)


class StoreStatus(IntEnum):
    """C-STORE statuses we return (PS3.4 Annex B.2.3); the upload API maps them to HTTP."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


@dataclass
class StoreContext:
    """What storing needs: where to write and where to record."""

    data_dir: DataDir
    engine: Engine
    #: A deflated data set inflating beyond this is refused (dicom.max_inflated_mb).
    max_inflated_bytes: int = MAX_INFLATED_BYTES
    #: Which images are analysed (config ``routing``); the others are stored, not analysed.
    routing: RoutingRules = field(default_factory=RoutingRules)


@dataclass(frozen=True)
class StoreOutcome:
    status: StoreStatus
    reason: str | None = None  # why it failed, or why it will not be processed
    sop_instance_uid: str | None = None
    created: bool = False
    too_large: bool = False  # refused as a deflate bomb (HTTP 413 on upload)

    @property
    def ok(self) -> bool:
        return self.status == StoreStatus.SUCCESS


class UIDMismatchError(ValueError):
    """The dataset's SOP Instance UID is not the one the request announced."""


def _status_for(exc: BaseException, parsing: bool = False) -> StoreStatus:
    """One table from failure to status: resources for disk/database, else cannot understand.

    While parsing the header, an OSError is pydicom's "No tag to read at file position ..."
    about a corrupt dataset, not a resource problem: cannot understand (a PACS retries
    0xA7xx forever)."""
    if isinstance(exc, DiskFullError) or (
        not parsing and isinstance(exc, (OSError, SQLAlchemyError))
    ):
        return StoreStatus.OUT_OF_RESOURCES
    if isinstance(exc, UIDMismatchError):
        return StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    return StoreStatus.CANNOT_UNDERSTAND


def _reason_for(exc: BaseException, parsing: bool = False) -> str:
    """A PHI-free reason: the exception class and, for our own errors, their message."""
    if isinstance(exc, (DiskFullError, InvalidUIDError, UIDMismatchError)):
        return str(exc)
    if isinstance(exc, InflateLimitError):
        return exc.detail
    if isinstance(exc, UnsupportedObjectError):
        return f"not a readable DICOM dataset ({exc.detail or exc.code})"
    if isinstance(exc, SQLAlchemyError) and not parsing:
        return "database unavailable"
    if isinstance(exc, OSError) and not parsing:
        return f"storage error ({type(exc).__name__})"
    return f"not a readable DICOM dataset ({type(exc).__name__})"


@counts_ingest  # wecare_ingest_instances_total{outcome}
def store_encoded(
    ctx: StoreContext,
    encoded: bytes,
    *,
    transfer_syntax_uid: str | None = None,
    calling_ae_title: str | None = None,
    expected_sop_instance_uid: str | None = None,
) -> StoreOutcome:
    """Store a DICOM Part 10 byte stream; Success only once it is fsynced and committed."""
    with log_context(uid=expected_sop_instance_uid):
        try:
            ctx.data_dir.ensure_free_space(len(encoded))
            # pydicom inflates a deflated data set whole: bound it first, streaming.
            check_inflated_size(encoded, ctx.max_inflated_bytes)
            header = dcmread(BytesIO(encoded), stop_before_pixels=True)
            study = str(header.get("StudyInstanceUID", ""))
            series = str(header.get("SeriesInstanceUID", ""))
            sop = str(header.get("SOPInstanceUID", ""))
            if not (study and series and sop):
                raise InvalidUIDError("Study, Series or SOP Instance UID missing")
            if expected_sop_instance_uid and sop != expected_sop_instance_uid:
                raise UIDMismatchError("SOP Instance UID differs from the request's")
            syntax = transfer_syntax_uid or str(header.file_meta.get("TransferSyntaxUID", ""))
            received = ReceivedInstance(
                study_instance_uid=study,
                series_instance_uid=series,
                sop_instance_uid=sop,
                sop_class_uid=str(header.get("SOPClassUID", "")),
                transfer_syntax_uid=syntax,
                path=str(ctx.data_dir.incoming_path(study, series, sop)),
                size_bytes=len(encoded),
                calling_ae_title=calling_ae_title,
                accession_number=str(header.get("AccessionNumber", "")) or None,
                patient_name=str(header.get("PatientName", ""))[:324] or None,
                skip_reason=skip_reason(header, ctx.routing),
                content_sha256=content_sha256(encoded),
            )
        except Exception as exc:  # noqa: BLE001 - every failure must become a status
            status = _status_for(exc, parsing=True)
            log.warning("store refused: %s (status 0x%04X)", type(exc).__name__, status)
            too_large = isinstance(exc, InflateLimitError)
            return StoreOutcome(status, _reason_for(exc, parsing=True), too_large=too_large)
        try:
            created, reason, conflict = _write_and_record(ctx, received, encoded)
        except Exception as exc:  # noqa: BLE001
            status = _status_for(exc)
            log.error("store failed: %s (status 0x%04X)", type(exc).__name__, status)
            return StoreOutcome(status, _reason_for(exc), sop)
        log.info(
            "stored instance study=%s series=%s %s%s",
            uid_hash(study),
            uid_hash(series),
            "new" if created else "re-sent",
            f", not processed: {reason}" if reason else "",
        )
        if conflict and created:
            log.warning(
                "SOP Instance UID conflict: sop=%s received again with different content "
                "(study=%s); stored apart, first copy unchanged, this copy not processed",
                uid_hash(sop),
                uid_hash(study),
            )
        return StoreOutcome(StoreStatus.SUCCESS, reason, sop, created)


def _write_and_record(
    ctx: StoreContext, received: ReceivedInstance, encoded: bytes
) -> tuple[bool, str | None, bool]:
    """Write unless these bytes are stored already, then record; (created, reason, conflict).

    A file once acknowledged is never replaced: other bytes under its SOP Instance UID go to
    their own file and row (storage.instances). The file's and its directory's fsyncs run
    while the row is prepared; the commit waits for them, so a committed row always names a
    durable file. Two stores of one UID racing: the unique indexes let one commit, the other
    gets IntegrityError and records once more, now seeing the first (a re-send, or a
    conflict); its file is already safely in place.
    """
    sha256 = received.content_sha256 or content_sha256(encoded)
    placed: PlacedFile | None = None
    if not uid_known(ctx.engine, received.sop_instance_uid):  # the usual store: a new UID
        placed = start_place_file(Path(received.path), encoded, sha256, take_canonical=True)
        try:
            with ctx.engine.connect() as conn, conn.begin() as transaction:
                fresh = replace(received, path=str(placed.path), content_sha256=sha256)
                if record_new_instance(conn, fresh) is not None:
                    placed.wait()  # file and directory entry durable before the row commits
                    return True, received.skip_reason, False
                transaction.rollback()  # known by now: a concurrent store committed it first
        except IntegrityError:
            log.info("a concurrent store of this SOP Instance UID committed first; re-checking")
    for attempt in (1, 2):
        with session_scope(ctx.engine) as session:
            known = known_copies(session, received.sop_instance_uid, sha256)
            if known.same is not None:  # a re-send: no write, a count
                row, created = record_instance(session, received)
                if placed is not None:
                    placed.wait()
                    if str(placed.path) != row.path:
                        placed.path.unlink(missing_ok=True)  # lost a race to the same bytes
                return created, row.skip_reason, row.conflict_of_id is not None
        if placed is None:
            take = known.original is None
            placed = start_place_file(Path(received.path), encoded, sha256, take_canonical=take)
        try:
            with session_scope(ctx.engine) as session:
                row, created = record_instance(session, replace(received, path=str(placed.path)))
                placed.wait()  # file and directory entry durable before the row commits
                return created, row.skip_reason, row.conflict_of_id is not None
        except IntegrityError:
            if attempt == 2:
                raise
            log.info("a concurrent store of this SOP Instance UID committed first; re-checking")
    raise AssertionError("unreachable")
