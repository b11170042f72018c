"""Shared pieces of the robustness tests: a C-STORE SCU with per-file statuses, direct database
reads of a data directory, process memory, and small synthetic studies."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context

from tests.factories import make_us_series

SUCCESS = 0x0000


@contextmanager
def raw_sending() -> Iterator[None]:
    """Make pynetdicom send files as they are on disk (no decode, no re-encode).

    With `STORE_SEND_CHUNKED_DATASET` the SCU reads only the file meta and streams the rest
    byte for byte, so a corrupt dataset reaches the peer exactly as corrupt as it is.
    """
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


@dataclass
class SendLog:
    """What an SCU saw: the peer's status per SOP Instance UID (None: no answer)."""

    statuses: dict[str, int | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # why a file got no status
    established: bool = False
    rejected: bool = False
    error: str | None = None

    @property
    def succeeded(self) -> set[str]:
        return {uid for uid, status in self.statuses.items() if status == SUCCESS}


def file_uids(path: Path) -> tuple[str, str, str]:
    """(SOP Class UID, SOP Instance UID, Transfer Syntax UID) from the file meta."""
    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
    return (
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
    )


def send_files(
    port: int,
    paths: Sequence[Path],
    *,
    called: str = "WECARE",
    calling: str = "ROBUST",
    log: SendLog | None = None,
    stop: threading.Event | None = None,
    timeout: float = 30,
    uids: Sequence[tuple[str, str, str]] | None = None,
) -> SendLog:
    """Send `paths` over one association, raw; record each file's status as it comes back."""
    log = log if log is not None else SendLog()
    uids = list(uids) if uids is not None else [file_uids(p) for p in paths]
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    # One context per (class, syntax): the SCP accepts one transfer syntax per context.
    pairs = sorted({(sop_class, syntax) for sop_class, _, syntax in uids})[:128]
    ae.requested_contexts = [build_context(c, [s]) for c, s in pairs]
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
    except Exception as exc:  # noqa: BLE001
        log.error = f"associate: {type(exc).__name__}: {exc}"
        return log
    log.established = assoc.is_established
    log.rejected = assoc.is_rejected
    if not assoc.is_established:
        return log
    try:
        with raw_sending():
            for path, (_, sop, _) in zip(paths, uids, strict=True):
                if stop is not None and stop.is_set():
                    break
                if not assoc.is_established:
                    log.statuses.setdefault(sop, None)
                    log.errors.setdefault(sop, "association lost")
                    continue
                try:
                    rsp = assoc.send_c_store(path)
                    log.statuses[sop] = int(rsp.Status) if "Status" in rsp else None
                    if "Status" not in rsp:
                        log.errors[sop] = "no response (aborted or timed out)"
                except Exception as exc:  # noqa: BLE001 - the peer died, or no context: no status
                    log.statuses[sop] = None
                    log.errors[sop] = log.error = f"send: {type(exc).__name__}: {exc}"
    finally:
        if assoc.is_established:
            assoc.release()
    return log


def echo(port: int, called: str = "WECARE") -> bool:
    """True when the listener accepts an association and answers C-ECHO with Success."""
    ae = AE(ae_title="ROBUST")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return "Status" in status and int(status.Status) == SUCCESS
    finally:
        assoc.release()


def query(data_dir: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the service's SQLite database directly (read-only), the way an auditor would."""
    uri = f"file:{data_dir / 'wecare.db'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
        return list(conn.execute(sql, args).fetchall())


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """Resident set size of a process in KiB (`VmRSS` of /proc/PID/status; `VmHWM`: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def small_studies(
    root: Path, count: int, images: int, rows: int = 128, columns: int = 160
) -> list[list[Path]]:
    """`count` studies of `images` small synthetic US images each (one series per study)."""
    return [
        make_us_series(
            root / f"study{n:03d}",
            count=images,
            rows=rows,
            columns=columns,
            lesion_radii=(14, 20),
        )
        for n in range(count)
    ]


def api_post(service: Any, path: str) -> Any:
    """POST to the service's JSON API (no body); returns the decoded answer."""
    import json
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{service.web_port}{path}", data=b"", method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as rsp:
        return json.loads(rsp.read() or b"null")


class DelayProxy:
    """A loopback TCP proxy that holds every chunk going to the target for `delay` seconds.

    Put between WeCare and Orthanc, it stretches an export over seconds so a test can kill
    WeCare while a C-STORE is on the wire.
    """

    def __init__(self, target_port: int, delay: float) -> None:
        import socket

        self.target_port, self.delay = target_port, delay
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[Any] = []
        self._closed = False
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            self.connections += 1
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: Any, dst: Any, slow: bool) -> None:
        import socket
        import time

        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if slow:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for s in self._sockets:
            s.close()
