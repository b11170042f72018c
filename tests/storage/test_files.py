from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from storage.errors import DiskFullError, InvalidUIDError
from storage.files import DataDir, checked_uid, write_atomic


@pytest.mark.parametrize("uid", ["", "../../etc/passwd", "1.2.a", "1" * 65, "1..2", "1.2/3"])
def test_checked_uid_unsafe_value_rejected(uid: str) -> None:
    with pytest.raises(InvalidUIDError):
        checked_uid(uid)


def test_checked_uid_trailing_null_padding_stripped() -> None:
    assert checked_uid("1.2.840.10008\x00") == "1.2.840.10008"


def test_write_atomic_writes_content_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.dcm"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["b.dcm"]


def test_write_atomic_failure_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "c.dcm"
    write_atomic(target, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk error")

    monkeypatch.setattr("storage.files.os.fsync", broken_fsync)
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.dcm"]


def test_ensure_free_space_below_floor_raises(tmp_path: Path) -> None:
    data = DataDir(tmp_path, min_free_bytes=10**18)
    with pytest.raises(DiskFullError):
        data.ensure_free_space(100)
    DataDir(tmp_path, min_free_bytes=0).ensure_free_space(100)


def test_write_atomic_open_umask_file_0600_new_dirs_0700(tmp_path: Path) -> None:
    saved = os.umask(0)
    try:
        write_atomic(tmp_path / "a" / "b" / "c.dcm", b"x")
    finally:
        os.umask(saved)
    assert stat.S_IMODE((tmp_path / "a" / "b" / "c.dcm").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_datadir_create_tightens_directories_left_open(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "incoming").mkdir(parents=True)
    parent_mode = stat.S_IMODE(tmp_path.stat().st_mode)
    os.chmod(root, 0o755)
    os.chmod(root / "incoming", 0o777)
    DataDir(root).create()
    for d in (root, root / "incoming", root / "outputs", root / "logs"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert stat.S_IMODE(tmp_path.stat().st_mode) == parent_mode  # above the data dir: untouched
