"""C-STORE SCU to a DICOM destination: one association per batch, a status per file.

A result without a peer status (association refused, aborted, timed out) is a failure; only
0x0000 counts as delivered. Warnings (0xB000-0xB007) are delivered but noted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from service.config import DicomDestination
from service.tls import client_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendResult:
    path: Path
    status: int | None  # the peer's DIMSE status; None when it gave none
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status is not None and (
            self.status == 0x0000 or 0xB000 <= self.status <= 0xB007
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
