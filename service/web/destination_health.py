"""Can we reach each destination? C-ECHO for DICOM peers, an HTTP GET for STOW-RS, cached.

/health is polled every few seconds by load balancers and monitoring; the PACS must not get
an association each time. Results are kept for `ttl_seconds`; a stale result is refreshed in a
background thread (the request answers with the last known result), and only the very first
check runs on the request path, all destinations in parallel, each bounded by a short timeout.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from service.config import Destination, StowRsDestination
from service.exporter import destination_label
from service.tls import client_context

log = logging.getLogger(__name__)

#: How long a check's result is believed (s).
TTL_SECONDS = 30.0
#: Upper bound of one check (connect, associate, echo) (s).
TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class DestinationCheck:
    """One destination's last check: reachable or why not (no patient data: name, address)."""

    name: str
    label: str
    ok: bool
    reason: str | None
    checked_at: float  # time.monotonic()


def check_destination(
    destination: Destination, calling_ae_title: str, timeout: float = TIMEOUT_SECONDS
) -> DestinationCheck:
    """C-ECHO (DICOM) or GET of the base URL (STOW-RS); never raises."""
    label = destination_label(destination)
    try:
        if isinstance(destination, StowRsDestination):
            reason = _http_check(destination, timeout)
        else:
            reason = _echo_check(destination, calling_ae_title, timeout)
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        reason = f"check failed: {type(exc).__name__}"
    return DestinationCheck(destination.name, label, reason is None, reason, time.monotonic())


def _echo_check(destination: Destination, calling_ae_title: str, timeout: float) -> str | None:
    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    tls_args = None
    if getattr(destination, "tls", False):
        context = client_context(
            destination.tls_ca_file,  # type: ignore[union-attr]
            destination.tls_cert_file,  # type: ignore[union-attr]
            destination.tls_key_file,  # type: ignore[union-attr]
        )
        tls_args = (context, destination.host)  # type: ignore[union-attr]
    assoc = ae.associate(
        destination.host,  # type: ignore[union-attr]
        destination.port,  # type: ignore[union-attr]
        ae_title=destination.ae_title,  # type: ignore[union-attr]
        tls_args=tls_args,
    )
    if not assoc.is_established:
        return "association rejected" if assoc.is_rejected else "no association (unreachable)"
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    code = int(status.Status) if status is not None and "Status" in status else None
    if code is None:
        return "no C-ECHO response"
    return None if code == 0 else f"C-ECHO answered status 0x{code:04X}"


def _http_check(destination: StowRsDestination, timeout: float) -> str | None:
    """Any HTTP answer below 500 means the server is there (401/404 on the root are common)."""
    ca = destination.tls_ca_file
    verify = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    with httpx.Client(verify=verify, timeout=timeout) as client:
        response = client.get(destination.url)
    return None if response.status_code < 500 else f"HTTP {response.status_code}"


class DestinationHealth:
    """The cache /health reads: one result per destination, refreshed at most every TTL."""

    def __init__(
        self,
        destinations: Sequence[Destination],
        calling_ae_title: str,
        ttl_seconds: float = TTL_SECONDS,
        timeout_seconds: float = TIMEOUT_SECONDS,
    ) -> None:
        self.destinations = list(destinations)
        self.calling_ae_title = calling_ae_title
        self.ttl_seconds = ttl_seconds
        self.timeout_seconds = timeout_seconds
        self.checks_run = 0  # how many rounds actually reached out (tests read it)
        self._results: list[DestinationCheck] | None = None
        self._lock = threading.Lock()
        self._refreshing = False
        self._first = threading.Lock()  # one first check, however many requests wait on it

    def _run(self) -> list[DestinationCheck]:
        with ThreadPoolExecutor(max_workers=min(len(self.destinations), 8)) as pool:
            results = list(
                pool.map(
                    lambda d: check_destination(d, self.calling_ae_title, self.timeout_seconds),
                    self.destinations,
                )
            )
        self.checks_run += 1
        return results

    def _refresh_in_background(self) -> None:
        try:
            results = self._run()
            with self._lock:
                self._results = results
        except Exception:
            log.exception("destination health check failed")
        finally:
            with self._lock:
                self._refreshing = False

    def results(self) -> list[DestinationCheck]:
        """The latest results; the first call checks now, later stale ones refresh behind."""
        if not self.destinations:
            return []
        with self._lock:
            current = self._results
            stale = current is None or any(
                time.monotonic() - c.checked_at >= self.ttl_seconds for c in current
            )
            start_behind = current is not None and stale and not self._refreshing
            if start_behind:
                self._refreshing = True
        if current is None:
            with self._first:
                if self._results is None:
                    results = self._run()
                    with self._lock:
                        self._results = results
                return self._results
        if start_behind:
            threading.Thread(
                target=self._refresh_in_background, name="destination-health", daemon=True
            ).start()
        return current
