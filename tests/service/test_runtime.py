"""The service's data directory as `wecare serve` builds and fills it: nothing in it is open to
other local users, whatever the umask."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.ingest import StoreContext, store_encoded
from service.logs import setup_logging
from service.previews import save_png
from service.runtime import build_runtime
from service.web.app import create_app
from tests.factories import make_us_image


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 000: any mode tighter than 0666/0777 was asked for by the code, not the umask."""
    saved = os.umask(0)
    try:
        yield
    finally:
        os.umask(saved)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        yield
    finally:
        for handler in list(root.handlers):
            handler.close()
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.captureWarnings(False)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of `root` and everything under it, by relative path."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_build_runtime_store_and_app_everything_in_data_dir_owner_only(
    tmp_path: Path, open_umask: None, restore_logging: None
) -> None:
    data = tmp_path / "srv" / "wecare-data"
    settings = Settings(storage={"data_dir": data, "min_free_mb": 0})
    setup_logging("INFO", True, data / "logs")
    runtime = build_runtime(settings)
    try:
        logging.getLogger("service.test").info("a line in the log file")
        outcome = store_encoded(
            StoreContext(runtime.data_dir, runtime.engine),
            make_us_image(tmp_path / "us.dcm").read_bytes(),
        )
        assert outcome.ok and outcome.created
        save_png(runtime.data_dir.outputs / "1" / "mask.png", np.zeros((8, 8, 3), np.uint8))
        with TestClient(create_app(settings, runtime)) as client:  # first admin, secret
            assert client.get("/health").status_code == 200
            found = modes(data)  # while connections are open: with the -wal and -shm files
    finally:
        runtime.engine.dispose()

    kinds = {name: (data / name).is_dir() for name in found}
    expected = {
        "wecare.db",
        "wecare.db-wal",
        "wecare.db-shm",
        "logs/wecare.log",
        "session-secret",
        "initial-admin-password",
        "outputs/1/mask.png",
    }
    assert expected <= set(found)
    assert any(name.startswith("incoming/") and name.endswith(".dcm") for name in found)
    wrong = {
        name: oct(mode) for name, mode in found.items() if mode != (0o700 if kinds[name] else 0o600)
    }
    assert wrong == {}
    assert stat.S_IMODE((tmp_path / "srv").stat().st_mode) == 0o700  # missing parent made
