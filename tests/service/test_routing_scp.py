"""Routing over a real association: every non-breast real file stored, not analysed, no job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts
from sqlalchemy import Engine, select

from dicom_io.routing import RoutingRules
from service.ingest import StoreContext, StoreStatus, store_encoded
from service.scp import start_scp
from storage.db import session_scope
from storage.files import DataDir
from storage.models import Instance, Job
from tests.dicom_io.test_routing import non_breast_files
from tests.factories import make_us_image
from tests.integration.peers import free_port
from tests.realfiles import deid_ultrasound, pydicom_data_file


@pytest.fixture()
def listener(data_dir: DataDir, engine: Engine) -> Iterator[tuple[int, StoreContext]]:
    port = free_port()
    ctx = StoreContext(data_dir, engine)  # default routing: breast only
    server = start_scp(ctx, ae_title="WECARE", host="127.0.0.1", port=port)
    yield port, ctx
    server.shutdown()


LISTENER_CLASSES = {str(c.abstract_syntax) for c in AllStoragePresentationContexts}


def _send_all(port: int, datasets: list[Dataset]) -> list[int]:
    """C-STORE each data set in its own association (as its own transfer syntax)."""
    statuses = []
    for ds in datasets:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="WECARE")
        assert assoc.is_established
        try:
            statuses.append(int(assoc.send_c_store(ds).Status))
        finally:
            assoc.release()
    return statuses


def test_store_default_routing_non_breast_real_files_not_analysed_breast_gets_job(
    listener: tuple[int, StoreContext], engine: Engine, tmp_path: Path
) -> None:
    port, ctx = listener
    breast = make_us_image(tmp_path / "breast.dcm", rows=64, columns=64)
    # One file per SOP Instance UID (OBXXXX1A* are one image in several syntaxes: a second
    # copy would be a UID conflict, a reason of its own).
    unique = {
        str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in non_breast_files()
    }
    files = [*unique.values(), breast]
    datasets = [dcmread(f) for f in files]
    # The retired US Image Storage class (color-p*.dcm) is not offered by the listener: those
    # take the upload API's path (the same store_encoded) as they are.
    accepted = [str(ds.SOPClassUID) in LISTENER_CLASSES for ds in datasets]
    statuses = _send_all(port, [ds for ds, ok in zip(datasets, accepted, strict=True) if ok])
    statuses += [
        store_encoded(ctx, f.read_bytes()).status
        for f, ok in zip(files, accepted, strict=True)
        if not ok
    ]
    assert sum(accepted) >= 10  # most over the association
    assert statuses == [StoreStatus.SUCCESS] * len(datasets)  # the PACS never sees a failure
    with session_scope(engine) as session:
        rows = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
        jobs = session.scalars(select(Job)).all()
        reasons = {
            f.name: rows[str(ds.SOPInstanceUID)].skip_reason
            for f, ds in zip(files[:-1], datasets, strict=False)
        }
        breast = rows[str(datasets[-1].SOPInstanceUID)]
        assert breast.skip_reason is None
        assert [j.study_id for j in jobs] == [breast.study_id]
    for name, reason in reasons.items():
        assert reason is not None, name
        assert reason.split(":")[0] in ("not_breast", "no_body_part"), (name, reason)


def test_store_routing_unlabelled_analyse_makes_job_for_unlabelled_only(
    data_dir: DataDir, engine: Engine
) -> None:
    port = free_port()
    ctx = StoreContext(data_dir, engine, routing=RoutingRules(unlabelled="analyse"))
    server = start_scp(ctx, ae_title="WECARE", host="127.0.0.1", port=port)
    try:
        unlabelled = dcmread(pydicom_data_file("US1_UNCR.dcm"))
        echo = dcmread(deid_ultrasound("ultrasound-multiframe.dcm"))
        assert _send_all(port, [unlabelled, echo]) == [StoreStatus.SUCCESS] * 2
    finally:
        server.shutdown()
    with session_scope(engine) as session:
        rows = {r.sop_instance_uid: r.skip_reason for r in session.scalars(select(Instance))}
        assert session.scalars(select(Job)).all()
    assert rows[str(unlabelled.SOPInstanceUID)] is None
    assert (rows[str(echo.SOPInstanceUID)] or "").startswith("not_breast:")
