"""C-STORE ingest throughput, one run: a bare durable pynetdicom handler, dcmtk storescp and
WeCare's listener, on the same generated files, each over one association per round.

Run: ``python benchmarks/bench_ingest.py [--files N] [--rows R --columns C] [--rounds K]
[--serve]``. Receivers:

- ``bare``: a pynetdicom AE (WeCare's own `build_ae`, same contexts and max PDU) whose
  C-STORE handler writes the encoded data set to a temp name, fsyncs it, renames it and
  fsyncs the directory: durability and nothing else, the floor for a Python listener.
- ``storescp``: dcmtk's, writing each file as received (+B), no fsync.
- ``wecare``: `service.scp.start_scp` with the real `StoreContext` (SQLite in a temp data
  directory, migrated): what `wecare serve` runs per C-STORE, without the web app and loops.
- ``wecare_serve`` (with ``--serve``): the real `wecare serve` process, workers off.

Each Python receiver runs in its own process (this script with ``--receiver``), so the
sender does not share its interpreter. The sender is pynetdicom streaming the files as they
are on disk (tests/robustness/helpers.send_files), in this process. Rounds alternate the
receivers so background load falls on all alike; the median and best of the rounds are
printed with WeCare/bare, and each receiver's CPU time per file (user + system, all its
threads, from /proc): on a loaded machine files/s swings with the load, CPU per file much
less. Prints measured figures only, with the load average before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.factories import make_us_series
from tests.integration.peers import free_port, require, wait_for, wecare
from tests.robustness.helpers import file_uids, send_files

CALLED = {"bare": "BARE", "storescp": "STORESCP", "wecare": "WECARE", "wecare_serve": "WECARE"}


def _serve_bare(port: int, out_dir: Path, max_pdu: int) -> None:
    """The bare durable handler: temp file, fsync, rename, fsync dir, Success."""
    from pynetdicom import evt

    from service.scp import build_ae

    out_dir.mkdir(parents=True, exist_ok=True)

    def handle_store(event: evt.Event) -> int:
        encoded = event.encoded_dataset()
        final = out_dir / f"{event.request.AffectedSOPInstanceUID}.dcm"
        tmp = out_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, encoded)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        dfd = os.open(out_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return 0x0000

    ae = build_ae(CALLED["bare"], 60, max_pdu)
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, handle_store)])


def _serve_wecare(port: int, data: Path, max_pdu: int) -> None:
    """WeCare's listener with the real StoreContext on SQLite (migrated), as `serve` builds."""
    from service.ingest import StoreContext
    from service.scp import start_scp
    from storage.db import make_engine, upgrade
    from storage.files import DataDir

    data_dir = DataDir(data)
    data_dir.create()
    url = f"sqlite:///{data / 'wecare.db'}"
    upgrade(url)
    server = start_scp(
        StoreContext(data_dir, make_engine(url)),
        ae_title=CALLED["wecare"],
        host="127.0.0.1",
        port=port,
        max_pdu_bytes=max_pdu,
    )
    try:
        while True:
            time.sleep(3600)
    finally:
        server.shutdown()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def _process(argv: list[str], port: int, what: str) -> Iterator[tuple[int, int]]:
    """Start a receiver process, wait until it listens on `port`; yield (port, pid)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def up() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        return _listening(port)

    try:
        wait_for(up, 60, what=what)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def _receiver(kind: str, out_dir: Path, max_pdu: int) -> Any:
    """The receiver `kind` as a context manager yielding (port, pid)."""
    port = free_port()
    if kind == "storescp":
        out_dir.mkdir(parents=True)
        argv = [require("storescp"), "-aet", CALLED[kind], "+B", "-pdu", str(max_pdu)]
        return _process(argv + ["-od", str(out_dir), "--promiscuous", str(port)], port, kind)
    if kind == "wecare_serve":
        return _serve_cli(out_dir, max_pdu)
    argv = [sys.executable, __file__, "--receiver", kind, "--port", str(port)]
    return _process(argv + ["--dir", str(out_dir), "--max-pdu", str(max_pdu)], port, kind)


@contextmanager
def _serve_cli(tmp: Path, max_pdu: int) -> Iterator[tuple[int, int]]:
    tmp.mkdir(parents=True)
    with wecare(
        tmp,
        {},
        auth={"enabled": False},
        dicom={"max_pdu_bytes": max_pdu},
        worker={"count": 0},
        study={"stable_seconds": 3600},
    ) as service:
        yield service.dicom_port, service.proc.pid


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rate(
    receiver: tuple[int, int], files: list[Path], uids: list[tuple[str, str, str]], called: str
) -> tuple[float, float]:
    """(instances per second, receiver CPU ms per instance) over one association."""
    port, pid = receiver
    cpu = _cpu_seconds(pid)
    started = time.perf_counter()
    log = send_files(port, files, uids=uids, called=called, timeout=60)
    seconds = time.perf_counter() - started
    cpu = _cpu_seconds(pid) - cpu
    ok = len(log.succeeded)
    if ok != len(files):
        raise SystemExit(f"{called}: only {ok} of {len(files)} stored ({log.error})")
    return ok / seconds, cpu * 1000 / ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--columns", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--max-pdu", type=int, default=131072, help="every receiver's max PDU")
    parser.add_argument("--serve", action="store_true", help="also the real `wecare serve`")
    parser.add_argument("--no-storescp", action="store_true")
    parser.add_argument("--receiver", choices=["bare", "wecare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver == "bare":
        return _serve_bare(args.port, args.dir, args.max_pdu)
    if args.receiver == "wecare":
        return _serve_wecare(args.port, args.dir, args.max_pdu)

    kinds = ["bare", "wecare"] + ([] if args.no_storescp else ["storescp"])
    kinds += ["wecare_serve"] if args.serve else []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        files = make_us_series(tmp / "src", count=args.files, rows=args.rows, columns=args.columns)
        uids = [file_uids(p) for p in files]
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        rates: dict[str, list[float]] = {kind: [] for kind in kinds}
        cpu_ms: dict[str, list[float]] = {kind: [] for kind in kinds}
        with ExitStack() as stack:
            ports = {k: stack.enter_context(_receiver(k, tmp / k, args.max_pdu)) for k in kinds}
            for _ in range(args.rounds):  # each round re-sends: SOP UIDs made new per round
                for kind in kinds:
                    rate, cpu = _rate(ports[kind], files, uids, CALLED[kind])
                    rates[kind].append(rate)
                    cpu_ms[kind].append(cpu)
                files, uids = _fresh_uids(tmp, files, uids)
    median = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    print(
        json.dumps(
            {
                "files": args.files,
                "total_mb": round(size_mb, 1),
                "rows_columns": [args.rows, args.columns],
                "rounds": args.rounds,
                "max_pdu": args.max_pdu,
                "files_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
                "median_files_per_s": {k: round(v, 1) for k, v in median.items()},
                "best_files_per_s": {k: round(v, 1) for k, v in best.items()},
                "receiver_cpu_ms_per_file_median": {
                    k: round(statistics.median(v), 2) for k, v in cpu_ms.items()
                },
                "wecare_over_bare_median": round(median["wecare"] / median["bare"], 3),
                "wecare_over_bare_best": round(best["wecare"] / best["bare"], 3),
                **(
                    {
                        "wecare_serve_over_bare_median": round(
                            median["wecare_serve"] / median["bare"], 3
                        )
                    }
                    if "wecare_serve" in median
                    else {}
                ),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "cpus": os.cpu_count(),
                "cpu": platform.processor() or platform.machine(),
            },
            indent=2,
        )
    )


def _fresh_uids(
    tmp: Path, files: list[Path], uids: list[tuple[str, str, str]]
) -> tuple[list[Path], list[tuple[str, str, str]]]:
    """The same pixels under new Study/Series/SOP UIDs: every round stores new instances.

    (Re-sent identical instances would take WeCare's no-write re-send path instead.)"""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    out = tmp / f"src-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    study, series = generate_uid(), generate_uid()
    paths, new_uids = [], []
    for path in files:
        ds = dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        target = out / path.name
        ds.save_as(target, enforce_file_format=True)
        paths.append(target)
        new_uids.append(file_uids(target))
    return paths, new_uids


if __name__ == "__main__":
    main()
