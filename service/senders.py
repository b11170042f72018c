"""Senders: C-STORE SCU (one association per batch) or STOW-RS (one HTTP request per batch).

A result per file. C-STORE: a result without a peer status (association refused, aborted,
timed out) is a failure; 0x0000 counts as delivered, and warnings (0xB000-0xB007) are
delivered but noted. STOW-RS: delivered only when the response lists the instance as stored
without a warning (PS3.18 10.5.3); everything else is a failure with its reason.
"""

from __future__ import annotations

import json
import logging
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from service.config import Destination, DicomDestination, StowRsDestination
from service.metrics import EXPORT_SECONDS
from service.tls import client_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendResult:
    path: Path
    status: int | None  # the peer's DIMSE status; None when it gave none
    error: str | None

    @property
    def delivered(self) -> bool:
        return (
            self.error is None
            and self.status is not None
            and (self.status == 0x0000 or 0xB000 <= self.status <= 0xB007)
        )


def send(
    destination: Destination,
    paths: Sequence[Path],
    *,
    calling_ae_title: str,
    timeout_seconds: float = 30,
) -> list[SendResult]:
    """Send `paths` to `destination` by its kind; never raises for network faults."""
    with EXPORT_SECONDS.labels(destination=destination.name).time():
        if isinstance(destination, StowRsDestination):
            return send_stow(
                destination, paths, timeout_seconds=destination.timeout_seconds or timeout_seconds
            )
        return send_files(
            destination, paths, calling_ae_title=calling_ae_title, timeout_seconds=timeout_seconds
        )


def send_files(
    destination: DicomDestination,
    paths: Sequence[Path],
    *,
    calling_ae_title: str,
    timeout_seconds: float = 30,
) -> list[SendResult]:
    """Send `paths` to `destination`; never raises for network faults, returns a result each."""
    datasets = []
    results: list[SendResult] = []
    for path in paths:
        try:
            datasets.append((path, dcmread(path)))
        except Exception as exc:  # noqa: BLE001 - an unreadable output fails its own row only
            results.append(SendResult(path, None, f"cannot read output file: {type(exc).__name__}"))
    if not datasets:
        return results
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = timeout_seconds
    ae.dimse_timeout = timeout_seconds
    ae.network_timeout = timeout_seconds
    for sop_class, syntax in {
        (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in datasets
    }:
        # Our SEG/SR are Explicit VR Little Endian; Implicit VR Little Endian, the default
        # every receiver must accept (PS3.5 10.1), is offered too and pynetdicom re-encodes.
        syntaxes = [syntax]
        if syntax == ExplicitVRLittleEndian:
            syntaxes.append(ImplicitVRLittleEndian)
        ae.add_requested_context(sop_class, syntaxes)
    try:
        tls_args = None
        if destination.tls:
            context = client_context(
                destination.tls_ca_file, destination.tls_cert_file, destination.tls_key_file
            )
            tls_args = (context, destination.host)
        assoc = ae.associate(
            destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args
        )
    except Exception as exc:  # noqa: BLE001
        err = f"association failed: {type(exc).__name__}"
        return results + [SendResult(p, None, err) for p, _ in datasets]
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "association not established"
        return results + [
            SendResult(p, None, f"{reason} by {destination.name}") for p, _ in datasets
        ]
    try:
        for path, ds in datasets:
            if not assoc.is_established:
                results.append(SendResult(path, None, "association lost"))
                continue
            try:
                rsp = assoc.send_c_store(ds)
            except Exception as exc:  # noqa: BLE001
                results.append(SendResult(path, None, f"send failed: {type(exc).__name__}"))
                continue
            status = int(rsp.Status) if "Status" in rsp else None
            error = None if status is not None else "no response from peer (aborted or timed out)"
            if status is not None and not (status == 0 or 0xB000 <= status <= 0xB007):
                error = f"peer answered status 0x{status:04X}"
            results.append(SendResult(path, status, error))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


# STOW-RS (PS3.18 10.5): one multipart/related request per batch of at most this many bytes.
STOW_BATCH_BYTES = 32 * 1024 * 1024
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"


def _stow_auth(destination: StowRsDestination) -> httpx.Auth | None:
    if destination.auth == "basic" and destination.username and destination.password:
        return httpx.BasicAuth(destination.username, destination.password.get_secret_value())
    return None


def _stow_headers(destination: StowRsDestination, boundary: str) -> dict[str, str]:
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    if destination.auth == "bearer" and destination.token:
        headers["Authorization"] = f"Bearer {destination.token.get_secret_value()}"
    return headers


def _stow_verify(destination: StowRsDestination) -> ssl.SSLContext:
    """The CA file given, else the system's CAs; verification is never switched off."""
    if destination.tls_ca_file is not None:
        return ssl.create_default_context(cafile=str(destination.tls_ca_file))
    return ssl.create_default_context()


def _multipart(parts: Sequence[bytes], boundary: str) -> bytes:
    chunks: list[bytes] = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), part]
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def _first_int(item: dict[str, Any], tag: str) -> int | None:
    values = (item.get(tag) or {}).get("Value") or []
    try:
        return int(values[0]) if values else None
    except (TypeError, ValueError):
        return None


def _sequence_by_uid(body: dict[str, Any], tag: str, reason_tag: str) -> dict[str, int | None]:
    """{SOP Instance UID: reason or None} for the items of a response sequence."""
    found: dict[str, int | None] = {}
    for item in (body.get(tag) or {}).get("Value") or []:
        if not isinstance(item, dict):
            continue
        uids = (item.get(_REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or []
        if uids:
            found[str(uids[0])] = _first_int(item, reason_tag)
    return found


def stow_results(response: httpx.Response, batch: Sequence[tuple[Path, str]]) -> list[SendResult]:
    """A result per (path, SOP Instance UID) from a STOW-RS response.

    Stored: HTTP 200 or 202 and the instance in ReferencedSOPSequence without a WarningReason.
    A FailedSOPSequence item gives its FailureReason as the status; a warning (the PACS kept
    a coerced copy) gives its WarningReason, recorded as a failure and retried; any other
    HTTP status fails the whole batch (retried with backoff like a refused association).
    """
    code = response.status_code
    body: dict[str, Any] = {}
    if response.content:
        try:
            parsed = json.loads(response.content)
            body = parsed if isinstance(parsed, dict) else {}
        except ValueError:
            body = {}
    stored = _sequence_by_uid(body, _REFERENCED_SOP_SEQUENCE, _WARNING_REASON)
    failed = _sequence_by_uid(body, _FAILED_SOP_SEQUENCE, _FAILURE_REASON)
    http = f"HTTP {code}"
    if code in (401, 403):
        http += " (credentials refused)"
    results = []
    for path, uid in batch:
        if uid in failed:
            reason = failed[uid]
            why = f"0x{reason:04X}" if reason is not None else "no reason given"
            results.append(SendResult(path, reason, f"{http}: instance not stored ({why})"))
        elif code in (200, 202) and uid in stored:
            warning = stored[uid]
            if warning is None:
                results.append(SendResult(path, 0x0000, None))
            else:
                error = f"{http}: instance stored with warning 0x{warning:04X}"
                results.append(SendResult(path, warning, error))
        elif code in (200, 202):
            results.append(SendResult(path, None, f"{http}: response does not list the instance"))
        else:
            results.append(SendResult(path, None, f"{http}: not stored"))
    return results


def send_stow(
    destination: StowRsDestination, paths: Sequence[Path], *, timeout_seconds: float = 30
) -> list[SendResult]:
    """POST `paths` to `<url>/studies`; never raises for network faults, returns a result each."""
    results: list[SendResult] = []
    readable: list[tuple[Path, str, bytes]] = []
    for path in paths:
        try:
            data = path.read_bytes()
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            readable.append((path, uid, data))
        except Exception as exc:  # noqa: BLE001 - an unreadable output fails its own row only
            results.append(SendResult(path, None, f"cannot read output file: {type(exc).__name__}"))
    batches: list[list[tuple[Path, str, bytes]]] = []
    for entry in readable:
        if not batches or sum(len(e[2]) for e in batches[-1]) + len(entry[2]) > STOW_BATCH_BYTES:
            batches.append([])
        batches[-1].append(entry)
    if not batches:
        return results
    try:
        verify = _stow_verify(destination)
    except (OSError, ssl.SSLError) as exc:
        err = f"cannot load tls_ca_file: {type(exc).__name__}"
        return results + [SendResult(p, None, err) for p, _, _ in readable]
    url = f"{destination.url}/studies"
    with httpx.Client(
        auth=_stow_auth(destination),
        verify=verify,
        timeout=timeout_seconds,
        follow_redirects=False,
    ) as client:
        for batch in batches:
            boundary = f"wecare-{uuid.uuid4().hex}"
            pairs = [(p, uid) for p, uid, _ in batch]
            try:
                response = client.post(
                    url,
                    content=_multipart([d for _, _, d in batch], boundary),
                    headers=_stow_headers(destination, boundary),
                )
            except httpx.HTTPError as exc:
                err = f"request failed: {type(exc).__name__}"
                results += [SendResult(p, None, err) for p, _ in pairs]
                continue
            batch_results = stow_results(response, pairs)
            stored = sum(1 for r in batch_results if r.delivered)
            log.info(
                "stow-rs to %s: HTTP %d, %d of %d stored",
                destination.name,
                response.status_code,
                stored,
                len(batch),
            )
            results += batch_results
    return results
