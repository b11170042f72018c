"""C-STORE ingest throughput: WeCare's listener (the real `wecare serve`, workers off) vs dcmtk
storescp, the same N files over one association each, in one run, sent by two SCUs: our
pynetdicom SCU (tests/robustness/helpers.send_files) and dcmtk storescu.

Run: ``python benchmarks/bench_ingest.py [--files N] [--rows R --columns C] [--rounds K]``.
Both receivers take the same max PDU and write each file as received (storescp +B) in the
same temp directory tree; WeCare also fsyncs each file and
its directory and commits a database row before answering Success (storescp does neither), so
the ratio is the price of durability plus Python. Prints measured figures only.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.factories import make_us_series
from tests.integration.peers import free_port, require, wait_for, wecare
from tests.robustness.helpers import file_uids, send_files


@contextmanager
def _storescp(out_dir: Path, max_pdu: int) -> Iterator[int]:
    """dcmtk storescp writing every file as received (+B) with the same max PDU as WeCare."""
    out_dir.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(
        [require("storescp"), "-aet", "STORESCP", "+B", "-pdu", str(max_pdu), "-od", str(out_dir)]
        + ["--promiscuous", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(up, 15, what="storescp")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _rate(port: int, files: list[Path], uids: list[tuple[str, str, str]], called: str) -> float:
    """Instances per second over one association (association set-up included)."""
    started = time.perf_counter()
    log = send_files(port, files, uids=uids, called=called)
    seconds = time.perf_counter() - started
    ok = len(log.succeeded)
    if ok != len(files):
        raise SystemExit(f"{called}: only {ok} of {len(files)} stored ({log.error})")
    return ok / seconds


def _rate_storescu(port: int, files: list[Path], called: str) -> float:
    """The same over one association sent by dcmtk storescu (C++; -R: the files' own contexts)."""
    started = time.perf_counter()
    result = subprocess.run(
        [require("storescu"), "-R", "-aec", called, "-pdu", "131072", "127.0.0.1", str(port)]
        + [str(p) for p in files],
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"storescu to {called} failed: {result.stderr[-500:]}")
    return len(files) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rows", type=int, default=480)
    parser.add_argument("--columns", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; best kept")
    parser.add_argument("--max-pdu", type=int, default=131072, help="both receivers' max PDU")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        files = make_us_series(tmp / "src", count=args.files, rows=args.rows, columns=args.columns)
        uids = [file_uids(p) for p in files]
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        rates: dict[str, list[float]] = {
            "wecare": [],
            "storescp": [],
            "wecare_from_storescu": [],
            "storescp_from_storescu": [],
        }
        with (
            wecare(
                tmp / "wecare",
                {},
                auth={"enabled": False},
                dicom={"max_pdu_bytes": args.max_pdu},
                worker={"count": 0},
                study={"stable_seconds": 3600},
                log={"level": "WARNING"},
            ) as service,
            _storescp(tmp / "storescp-out", args.max_pdu) as scp_port,
        ):
            for _ in range(args.rounds):  # alternate so background load hits both alike
                rates["wecare"].append(_rate(service.dicom_port, files, uids, "WECARE"))
                rates["storescp"].append(_rate(scp_port, files, uids, "STORESCP"))
                rates["wecare_from_storescu"].append(
                    _rate_storescu(service.dicom_port, files, "WECARE")
                )
                rates["storescp_from_storescu"].append(_rate_storescu(scp_port, files, "STORESCP"))
    best = {name: max(values) for name, values in rates.items()}
    print(
        json.dumps(
            {
                "files": args.files,
                "file_size_kb": round(size_mb * 1000 / args.files, 1),
                "rounds": args.rounds,
                "max_pdu": args.max_pdu,
                "instances_per_s": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
                "best_instances_per_s": {k: round(v, 1) for k, v in best.items()},
                "wecare_over_storescp": round(best["wecare"] / best["storescp"], 3),
                "wecare_over_storescp_from_storescu": round(
                    best["wecare_from_storescu"] / best["storescp_from_storescu"], 3
                ),
                "cpu": platform.processor() or platform.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
