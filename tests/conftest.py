"""Shared fixtures: a fresh data directory and migrated SQLite database per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from storage.db import make_engine, upgrade
from storage.files import DataDir

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def data_dir(tmp_path: Path) -> DataDir:
    d = DataDir(tmp_path / "data")
    d.create()
    return d


@pytest.fixture()
def db_url(data_dir: DataDir) -> str:
    url = f"sqlite:///{data_dir.root / 'wecare.db'}"
    upgrade(url)
    return url


@pytest.fixture()
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()
