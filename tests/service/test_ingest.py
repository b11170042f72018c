"""service.ingest.store_encoded on hostile input: deflate bombs and hostile header text.

Peak memory is measured in a child process (ru_maxrss is a per-process high-water mark).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import Engine, func, select

from dicom_io.read import iter_frames
from service.ingest import StoreContext, StoreOutcome, StoreStatus, store_encoded
from storage.db import session_scope
from storage.files import DataDir
from storage.models import Instance
from tests.deflate_bombs import CHUNK, GIB, ct_bomb
from tests.factories import SECONDARY_CAPTURE_STORAGE, make_us_dataset, make_us_image, write_dataset

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def _rows(engine: Engine) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count(Instance.id))) or 0


def test_store_encoded_deflate_bomb_cannot_understand_nothing_stored(
    data_dir: DataDir, engine: Engine
) -> None:
    outcome = store_encoded(StoreContext(data_dir, engine), ct_bomb(GIB))

    assert outcome.status == StoreStatus.CANNOT_UNDERSTAND == 0xC000
    assert outcome.reason == "deflated data set inflates beyond 256 MiB"
    assert outcome.too_large
    assert _rows(engine) == 0
    assert not [p for p in data_dir.root.rglob("*.dcm")]


def test_store_encoded_limit_from_context(data_dir: DataDir, engine: Engine) -> None:
    bomb = ct_bomb(16 * CHUNK)
    small = store_encoded(StoreContext(data_dir, engine, max_inflated_bytes=8 * MIB), bomb)
    large = store_encoded(StoreContext(data_dir, engine, max_inflated_bytes=32 * MIB), bomb)

    assert (small.status, small.reason) == (
        StoreStatus.CANNOT_UNDERSTAND,
        "deflated data set inflates beyond 8 MiB",
    )
    assert large.ok and large.reason is not None and large.reason.startswith("not_ultrasound")


def test_store_encoded_real_deflated_us_stored_and_decodes(
    data_dir: DataDir, engine: Engine, tmp_path: Path
) -> None:
    path = make_us_image(tmp_path / "us.dcm", transfer_syntax="deflate", frames=2)

    outcome = store_encoded(StoreContext(data_dir, engine), path.read_bytes())

    assert outcome.ok and outcome.created and outcome.reason is None
    with session_scope(engine) as session:
        stored = Path(session.scalars(select(Instance)).one().path)
    assert stored.read_bytes() == path.read_bytes()
    batches = list(iter_frames(stored))
    assert [numbers for numbers, _ in batches] == [(1, 2)]
    assert batches[0][1].shape == (2, 256, 320)


_MEASURE = """
import json, resource, sys
from pathlib import Path
from tests.deflate_bombs import GIB, ct_bomb
from service.ingest import StoreContext, store_encoded
from storage.db import make_engine, upgrade
from storage.files import DataDir

def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
data_dir = DataDir(Path(sys.argv[1])); data_dir.create()
url = f"sqlite:///{data_dir.root / 'wecare.db'}"; upgrade(url)
ctx = StoreContext(data_dir, make_engine(url))
bomb = ct_bomb(GIB)
before = peak()
outcome = store_encoded(ctx, bomb)
print(json.dumps({"growth": peak() - before, "status": int(outcome.status)}))
"""


def test_store_encoded_deflate_bomb_peak_memory_bounded(tmp_path: Path) -> None:
    # Before the streaming check: +2048 MB peak and Success for this 1 MB file.
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path / "data")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert result["status"] == StoreStatus.CANNOT_UNDERSTAND
    assert result["growth"] < 300 * MIB, result["growth"] / MIB


_HOSTILE = [
    "<script>alert(1)</script>",
    "1.2.3\n2024-01-01 ERROR forged log line",
    "9" * 10_000,
    "1.2.840.10008.5.1.4.1.1.6.1\u00e9",  # the US Image class plus a Latin-1 letter
    "1.2.03.4",  # a leading zero: not a valid UID either
]


@pytest.mark.parametrize("sop_class", _HOSTILE, ids=["html", "newline", "10k", "latin1", "zero"])
@pytest.mark.filterwarnings("ignore:(The value length|Invalid value for VR)")
def test_store_encoded_hostile_sop_class_reason_has_no_hostile_text(
    data_dir: DataDir, engine: Engine, tmp_path: Path, sop_class: str
) -> None:
    ds = make_us_dataset()
    ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPClassUID = "1.2.3"
    path = write_dataset(ds, tmp_path / "hostile.dcm")

    outcome = store_encoded(StoreContext(data_dir, engine), path.read_bytes())

    assert outcome.ok
    expected = (
        "not_ultrasound: an object with an invalid SOP Class UID is not an ultrasound or "
        "secondary capture image; stored, not analysed"
    )
    assert outcome.reason == expected
    with session_scope(engine) as session:
        assert session.scalars(select(Instance)).one().skip_reason == expected


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_store_encoded_hostile_modality_reason_keeps_ascii_code_only(
    data_dir: DataDir, engine: Engine, tmp_path: Path
) -> None:
    ds = make_us_dataset(sop_class_uid=SECONDARY_CAPTURE_STORAGE)
    ds.Modality = "ÉCT<b>\n"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = write_dataset(ds, tmp_path / "sc.dcm")
    assert dcmread(path).Modality == "ÉCT<b>\n"  # as sent

    outcome = store_encoded(StoreContext(data_dir, engine), path.read_bytes())

    assert outcome.reason == (
        "not_ultrasound: Secondary Capture Image Storage with Modality CTB is not an "
        "ultrasound screen capture; stored, not analysed"
    )


def test_store_encoded_fsyncs_pending_no_row_until_file_and_directory_durable(
    data_dir: DataDir, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's and its directory's fsyncs run while the row is prepared: the commit (and so
    Success) waits for both, however long they take."""
    real_fsync = os.fsync
    release, entered = threading.Event(), threading.Event()
    synced: list[tuple[int, int]] = []

    def slow_fsync(fd: int) -> None:
        entered.set()
        assert release.wait(10)
        real_fsync(fd)
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))

    monkeypatch.setattr("storage.files.os.fsync", slow_fsync)
    ds = make_us_dataset(rows=64, columns=80)
    encoded = (write_dataset(ds, data_dir.root / "src.dcm")).read_bytes()
    outcomes: list[StoreOutcome] = []
    store = threading.Thread(
        target=lambda: outcomes.append(store_encoded(StoreContext(data_dir, engine), encoded))
    )
    store.start()
    try:
        assert entered.wait(10)
        time.sleep(0.3)  # time enough to commit, were the commit not waiting
        rows_while_pending = _rows(engine)
        answered_while_pending = bool(outcomes)
    finally:
        release.set()
        store.join(10)

    assert (rows_while_pending, answered_while_pending) == (0, False)
    assert outcomes[0].ok and outcomes[0].created
    assert _rows(engine) == 1
    with session_scope(engine) as session:
        path = Path(session.scalars(select(Instance.path)).one())
    assert path.read_bytes() == encoded
    for done in (path, path.parent):
        st = os.stat(done)
        assert (st.st_dev, st.st_ino) in synced
