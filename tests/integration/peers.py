"""Real DICOM peers for tests: Orthanc (the PACS), dcmtk storescp/storescu, WeCare itself.

Everything listens on 127.0.0.1 on free ports from temp configs and is stopped by PID.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.requirements import require_file, require_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
LUA_AUTOFORWARD = REPO_ROOT / "deploy" / "orthanc" / "autoforward.lua"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # orthanc-dicomweb


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _port_pool() -> range:
    """About 11,000 ports just below the ephemeral range (21792-32767 on a default Linux)."""
    low, _ = _ephemeral_range()
    top = max(low, 12000)
    return range(top - 12000 + 1024, top)


_PORT_POOL = _port_pool()
# Start where this process's PID points, so two pytest runs on one machine rarely probe the
# same ports; each port is handed out at most once per process.
_port_cursor = (os.getpid() * 7919) % len(_PORT_POOL)
_port_lock = threading.Lock()


def free_port() -> int:
    """A loopback TCP port that nothing holds now, for a peer to listen on.

    Not bind(0)-and-release: once released, such a port is reserved for nobody, and until the
    peer binds it any later bind(0) (the next peer's port, the delay proxy) may draw it again
    (CI, stop 14: WeCare failed to start with EADDRINUSE). These ports come from below the
    kernel's ephemeral range, which bind(0) and outgoing connections never use, and each is
    handed out at most once per process.
    """
    global _port_cursor
    with _port_lock:
        for _ in range(len(_PORT_POOL)):
            port = _PORT_POOL[_port_cursor]
            _port_cursor = (_port_cursor + 1) % len(_PORT_POOL)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free loopback port in {_PORT_POOL.start}-{_PORT_POOL.stop - 1}")


def wait_for(predicate: Any, timeout: float, interval: float = 0.3, what: str = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def require(binary: str) -> str:
    """The path of `binary`; skips when it is not installed, fails under CI."""
    return require_tool(binary)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int
    aet: str
    proc: subprocess.Popen[bytes]
    auth: tuple[str, str] | None = None  # a registered user, when started with `users`

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (when started with `dicomweb=True`)."""
        return f"{self.url}/dicom-web"

    def _request(self, path: str, data: bytes | None = None) -> urllib.request.Request:
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data else "GET")
        if self.auth:
            token = base64.b64encode(":".join(self.auth).encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        return req

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self._request(path), timeout=10) as rsp:
            return json.loads(rsp.read())

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self._request(path), timeout=30) as rsp:
            return bytes(rsp.read())

    def post(self, path: str, body: bytes | str) -> Any:
        data = body.encode() if isinstance(body, str) else body
        with urllib.request.urlopen(self._request(path, data), timeout=60) as rsp:
            return json.loads(rsp.read() or b"null")

    def upload(self, path: Path) -> str:
        return str(self.post("/instances", path.read_bytes())["ID"])

    def instances_by_modality(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for instance_id in self.get("/instances"):
            tags = self.get(f"/instances/{instance_id}/simplified-tags")
            out.setdefault(str(tags.get("Modality", "")), []).append(instance_id)
        return out


@contextmanager
def orthanc(
    tmp: Path,
    modalities: dict[str, tuple[str, int]],
    *,
    autoforward: bool = False,
    stable_age: int = 1,
    dicomweb: bool = False,
    users: dict[str, str] | None = None,
) -> Iterator[Orthanc]:
    """Start a throwaway Orthanc on loopback ports; `modalities` name → (AE title, port).

    `dicomweb`: load the DICOMweb plugin (STOW-RS at `/dicom-web/studies`); `users`: HTTP
    basic authentication with these user → password pairs (the helper logs in as the first).
    """
    binary = require("Orthanc")
    if dicomweb:
        require_file(DICOMWEB_PLUGIN, "the Orthanc DICOMweb plugin (Debian orthanc-dicomweb)")
    http_port, dicom_port = free_port(), free_port()
    storage = tmp / "orthanc-storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "wecare-test-pacs",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": users or {},
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "StableAge": stable_age,
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        "DicomModalities": {
            name: [aet, "127.0.0.1", port] for name, (aet, port) in modalities.items()
        },
        "LuaScripts": [str(LUA_AUTOFORWARD)] if autoforward else [],
        "DicomScuTimeout": 30,
    }
    cfg = tmp / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(tmp / "orthanc.log", "wb")
    proc = subprocess.Popen([binary, str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    auth = next(iter(users.items())) if users else None
    server = Orthanc(http_port, dicom_port, "ORTHANC", proc, auth)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"Orthanc exited: {(tmp / 'orthanc.log').read_text()[-2000:]}")
        try:
            server.get("/system")
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    try:
        wait_for(up, 30, what="Orthanc to start")
        yield server
    finally:
        _stop(proc)
        log.close()


@contextmanager
def storescp(
    out_dir: Path,
    port: int | None = None,
    aet: str = "STORESCP",
    syntax_option: str = "+xa",
) -> Iterator[tuple[str, int]]:
    """dcmtk storescp into `out_dir` (`+xa`: any transfer syntax; `+xi`: implicit VR only)."""
    binary = require("storescp")
    port = port or free_port()
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--aetitle", aet, "-od", str(out_dir), syntax_option, "--promiscuous", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(up, 15, what="storescp to listen")
        yield aet, port
    finally:
        _stop(proc)


def storescu(
    port: int,
    files: list[Path],
    called_aet: str = "WECARE",
    calling_aet: str = "STORESCU",
    extra: tuple[str, ...] = ("-R",),
) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu; `-R` proposes exactly the files' own SOP classes and transfer syntaxes."""
    binary = require("storescu")
    return subprocess.run(
        [
            binary,
            *extra,
            "-aec",
            called_aet,
            "-aet",
            calling_aet,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclass
class WeCareProcess:
    proc: subprocess.Popen[bytes]
    dicom_port: int
    web_port: int
    data_dir: Path
    log_path: Path

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=10) as rsp:
            return json.loads(rsp.read())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def write_config(
    tmp: Path,
    destinations: dict[str, tuple[str, int]],
    dicom_port: int | None = None,
    **sections: dict[str, Any],
) -> tuple[Path, int, int]:
    """A WeCare TOML config on free ports; returns (path, dicom port, web port)."""
    tmp.mkdir(parents=True, exist_ok=True)
    dicom_port, web_port = dicom_port or free_port(), free_port()
    data = {
        "dicom": {"ae_title": "WECARE", "host": "127.0.0.1", "port": dicom_port},
        "storage": {"data_dir": str(tmp / "wecare-data"), "min_free_mb": 0},
        "web": {"host": "127.0.0.1", "port": web_port},
        "study": {"stable_seconds": 1},
        "worker": {"poll_seconds": 0.2, "torch_threads": 2, "lease_seconds": 30},
        "export": {"poll_seconds": 0.2, "base_backoff_seconds": 1, "max_backoff_seconds": 2},
        # These pipeline tests drive the JSON API as an anonymous script; log-in and tokens
        # are proven end to end in tests/service/test_auth_serve.py.
        "auth": {"enabled": False},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    for name, (aet, port) in destinations.items():
        lines += [
            "[[destinations]]",
            f'name = "{name}"',
            f'ae_title = "{aet}"',
            'host = "127.0.0.1"',
            f"port = {port}",
        ]
    path = tmp / "wecare.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, dicom_port, web_port


@contextmanager
def wecare(
    tmp: Path,
    destinations: dict[str, tuple[str, int]],
    dicom_port: int | None = None,
    **sections: dict[str, Any],
) -> Iterator[WeCareProcess]:
    """Run `wecare serve` as its own process (the real CLI) until the test ends."""
    config, dicom_port, web_port = write_config(tmp, destinations, dicom_port, **sections)
    log_path = tmp / "wecare.stderr"
    log = open(log_path, "wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
        env=env,
    )
    server = WeCareProcess(proc, dicom_port, web_port, tmp / "wecare-data", log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"wecare exited: {server.log_text()[-3000:]}")
        try:
            return server.api("/health")["listener"] == "up"
        except (urllib.error.URLError, ConnectionError, OSError, KeyError, ValueError):
            return False

    try:
        wait_for(up, 60, what="wecare to start")
        yield server
    finally:
        _stop(proc, timeout=30)
        log.close()
