"""A throwaway PostgreSQL server for tests: initdb in a temp dir, loopback port, stopped after.

PostgreSQL refuses to run as root, so as root (CI) the server runs as the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.integration.peers import free_port
from tests.requirements import require_or_skip


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a SQLAlchemy URL of a fresh, empty database."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    require_or_skip(initdb and pg_ctl, "PostgreSQL server not installed (package postgresql)")
    assert initdb and pg_ctl
    base = tempfile.mkdtemp(prefix="wecare-pg-")
    data = os.path.join(base, "data")
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        os.chmod(base, 0o700)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*prefix, initdb, "-D", data, "-U", "wecare", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*prefix, pg_ctl, "-D", data, "-o", opts, "-w", "-l", os.path.join(base, "log"), "start"],
        check=True,
        capture_output=True,
    )
    try:
        url = f"postgresql+psycopg://wecare@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 20
        import psycopg

        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={port} user=wecare dbname=postgres").close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)
