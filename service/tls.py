"""TLS contexts for DICOM (PS3.15 B.1 "Basic TLS Secure Transport Connection Profile")."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(
    cert_file: Path, key_file: Path, ca_file: Path | None = None, require_client_cert: bool = False
) -> ssl.SSLContext:
    """The listener's context: TLS 1.2+, our certificate, optionally verified client certs."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A destination's context: the peer is verified against `ca_file` (or the system CAs)."""
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None and key_file is not None:
        ctx.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    return ctx
