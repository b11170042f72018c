"""The DICOM listener over a real loopback association (pynetdicom SCU and dcmtk storescu)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import Engine, func, select

from dicom_io.routing import RoutingRules
from service.ingest import StoreContext, StoreStatus
from service.scp import start_scp
from storage.db import session_scope
from storage.files import DataDir
from storage.models import Instance, Job
from tests.integration.peers import free_port, storescu
from tests.realfiles import deid_ultrasound, pydicom_data_file


@pytest.fixture()
def scp(data_dir: DataDir, engine: Engine) -> Iterator[tuple[int, StoreContext]]:
    # The listener's transport with real (non-breast) files: routing is off here, it has its
    # own tests (tests/service/test_routing_scp.py).
    ctx = StoreContext(data_dir, engine, routing=RoutingRules(enabled=False))
    port = free_port()
    server = start_scp(ctx, ae_title="WECARE", host="127.0.0.1", port=port)
    yield port, ctx
    server.shutdown()


def _send(port: int, ds: Dataset) -> int | None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="WECARE")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(ds)
        return int(rsp.Status) if "Status" in rsp else None
    finally:
        assoc.release()


def _count(engine: Engine, model: type) -> int:
    with session_scope(engine) as s:
        return s.scalar(select(func.count(model.id))) or 0


def test_echo_verification_success(scp: tuple[int, StoreContext]) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", scp[0], ae_title="WECARE")
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == 0


def test_store_real_us_file_durable_and_recorded_before_success(
    scp: tuple[int, StoreContext], engine: Engine
) -> None:
    port, ctx = scp
    ds = dcmread(deid_ultrasound("GREYSCALE_IMAGE.dcm"))
    assert _send(port, ds) == StoreStatus.SUCCESS
    path = ctx.data_dir.incoming_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert path.exists()
    assert dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
    with session_scope(engine) as s:
        row = s.scalars(select(Instance)).one()
        assert row.sop_instance_uid == ds.SOPInstanceUID and row.skip_reason is None
        assert row.calling_ae_title == "TESTSCU"
    assert _count(engine, Job) == 1


def test_store_resent_instance_idempotent(scp: tuple[int, StoreContext], engine: Engine) -> None:
    ds = dcmread(pydicom_data_file("US1_UNCR.dcm"))
    assert _send(scp[0], ds) == StoreStatus.SUCCESS
    assert _send(scp[0], ds) == StoreStatus.SUCCESS
    assert (_count(engine, Instance), _count(engine, Job)) == (1, 1)


def test_store_write_fails_failure_status_and_nothing_recorded(
    scp: tuple[int, StoreContext], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr("storage.files.os.fsync", broken_fsync)
    ds = dcmread(pydicom_data_file("US1_UNCR.dcm"))
    assert _send(scp[0], ds) == StoreStatus.OUT_OF_RESOURCES
    assert _count(engine, Instance) == 0
    assert not any(p.suffix == ".dcm" for p in scp[1].data_dir.incoming.rglob("*"))


def test_store_disk_below_floor_out_of_resources(
    scp: tuple[int, StoreContext], engine: Engine
) -> None:
    scp[1].data_dir.min_free_bytes = 10**18
    ds = dcmread(pydicom_data_file("US1_UNCR.dcm"))
    assert _send(scp[0], ds) == StoreStatus.OUT_OF_RESOURCES
    assert _count(engine, Instance) == 0


def test_store_database_unavailable_failure_status_not_success(
    scp: tuple[int, StoreContext], engine: Engine
) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE instances")
    ds = dcmread(pydicom_data_file("US1_UNCR.dcm"))
    assert _send(scp[0], ds) == StoreStatus.OUT_OF_RESOURCES


def test_store_hostile_uid_refused(scp: tuple[int, StoreContext], engine: Engine) -> None:
    ds = dcmread(pydicom_data_file("US1_UNCR.dcm"))
    ds.StudyInstanceUID = "../../../../tmp/evil"
    assert _send(scp[0], ds) == StoreStatus.CANNOT_UNDERSTAND
    assert _count(engine, Instance) == 0


def test_store_our_own_seg_stored_but_no_job(scp: tuple[int, StoreContext], engine: Engine) -> None:
    ds = dcmread(pydicom_data_file("US1_UNCR.dcm"))
    ds.Manufacturer = "WeCare"
    ds.SOPInstanceUID = generate_uid()
    assert _send(scp[0], ds) == StoreStatus.SUCCESS
    with session_scope(engine) as s:
        row = s.scalars(select(Instance)).one()
        assert row.skip_reason
    assert _count(engine, Job) == 0


@pytest.mark.integration
def test_store_dcmtk_storescu_several_files_all_stored(
    scp: tuple[int, StoreContext], engine: Engine
) -> None:
    uncompressed = [
        pydicom_data_file("US1_UNCR.dcm"),
        deid_ultrasound("GREYSCALE_IMAGE.dcm"),
        deid_ultrasound("ultrasound-multiframe.dcm"),
    ]
    jpeg2000 = [pydicom_data_file("US1_J2KR.dcm")]
    for files, options in ((uncompressed, ()), (jpeg2000, ("-xv",))):
        result = storescu(scp[0], files, extra=options)
        assert result.returncode == 0, result.stderr
    files = uncompressed + jpeg2000
    assert _count(engine, Instance) == len(
        {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    )


@pytest.mark.parametrize(
    "syntax",
    [
        "implicit",
        "explicit",
        "big-endian",
        "deflate",
        "jpeg-baseline",
        "jpeg-lossless",
        "jpeg-ls",
        "jpeg2000-lossless",
        "jpeg2000",
        "rle",
    ],
)
@pytest.mark.parametrize(
    "sop_class",
    ["1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.5.1.4.1.1.7"],
    ids=["us", "us-multiframe", "secondary-capture"],
)
def test_store_each_sop_class_and_transfer_syntax_accepted_as_sent(
    scp: tuple[int, StoreContext], engine: Engine, tmp_path: Path, syntax: str, sop_class: str
) -> None:
    from tests.factories import TRANSFER_SYNTAXES, make_us_image

    frames = 3 if sop_class.endswith("3.1") else 1
    path = make_us_image(
        tmp_path / "x.dcm", transfer_syntax=syntax, frames=frames, sop_class_uid=sop_class
    )
    ds = dcmread(path)
    assert _send(scp[0], ds) == StoreStatus.SUCCESS
    with session_scope(engine) as s:
        row = s.scalars(select(Instance)).one()
        assert row.transfer_syntax_uid == TRANSFER_SYNTAXES[syntax]
        assert row.skip_reason is None
    stored = dcmread(row.path)
    assert stored.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]


def test_store_deflate_bomb_over_association_cannot_understand(
    scp: tuple[int, StoreContext],
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian
    from pynetdicom import _config

    from tests.deflate_bombs import CT_IMAGE_STORAGE, GIB, ct_bomb

    path = tmp_path / "bomb.dcm"
    path.write_bytes(ct_bomb(GIB))  # 1 GiB inflated from about 1 MB
    # Send the file's bytes as they are (the SCU itself must not inflate them).
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CT_IMAGE_STORAGE, DeflatedExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp[0], ae_title="WECARE")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
    finally:
        assoc.release()

    assert int(rsp.Status) == StoreStatus.CANNOT_UNDERSTAND == 0xC000
    assert "store refused: InflateLimitError (status 0xC000)" in caplog.messages
    assert _count(engine, Instance) == 0
    assert not list(scp[1].data_dir.root.rglob("*.dcm"))
