"""Shared fixtures: a fresh data directory and migrated SQLite database per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from storage.db import make_engine, upgrade
from storage.files import DataDir
from tests.requirements import pytest_configure, pytest_runtest_setup  # noqa: F401 - hooks

REPO_ROOT = Path(__file__).resolve().parents[1]

# Services started by tests (in process and as `wecare serve` children, which inherit this)
# run the network eager: torch.compile's warm-up costs 30-60 s per process on a 2-core CI
# machine. The compiled path, and the service's default `auto`, are tested on their own in
# tests/inference/test_compiled.py.
os.environ.setdefault("WECARE_WORKER__COMPILE", "off")
# Generated test images are noise and ellipses, rightly outside the bundled model's scope
# (inference/scope.py): services and `wecare infer` started by tests skip that check so the
# plumbing can be tested with them. The check is tested on its own (tests/inference/
# test_scope.py, tests/service/test_pipeline_scope.py), on real non-breast files included.
os.environ.setdefault("WECARE_WORKER__SCOPE_CHECK", "false")


@pytest.fixture()
def data_dir(tmp_path: Path) -> DataDir:
    d = DataDir(tmp_path / "data")
    d.create()
    return d


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One PostgreSQL server for the session; each test gets its own database in it."""
    from tests.postgres import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_url(request: pytest.FixtureRequest, data_dir: DataDir) -> str:
    """A migrated, empty database of each supported kind (storage tests run on both)."""
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir.root / 'wecare.db'}"
    else:
        import uuid

        import psycopg

        server = request.getfixturevalue("postgres_url")
        name = f"t{uuid.uuid4().hex[:12]}"
        dsn = server.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        url = server.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    return url


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


@pytest.fixture()
def any_engine(any_db_url: str) -> Iterator[Engine]:
    eng = make_engine(any_db_url)
    yield eng
    eng.dispose()
