"""The SQLite database file and its WAL/SHM files are the service account's alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy import text

from storage.db import make_engine, upgrade


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_upgrade_and_engine_open_umask_database_wal_shm_0600(tmp_path: Path) -> None:
    db = tmp_path / "wecare.db"
    saved = os.umask(0)
    try:
        upgrade(f"sqlite:///{db}")
        engine = make_engine(f"sqlite:///{db}")
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        with engine.connect() as conn:  # held open: the -wal and -shm files exist
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
            sides = [db.with_name("wecare.db-wal"), db.with_name("wecare.db-shm")]
            assert all(p.exists() for p in sides)
            assert [_mode(p) for p in (db, *sides)] == [0o600] * 3
        engine.dispose()
    finally:
        os.umask(saved)


def test_make_engine_tightens_database_left_open(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    upgrade(f"sqlite:///{db}")
    os.chmod(db, 0o644)
    engine = make_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
    assert _mode(db) == 0o600
