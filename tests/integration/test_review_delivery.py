"""A radiologist's corrected SEG and review SR reach a real dcmtk storescp through the outbox.

A cine job (threshold model) is done and its AI outputs delivered; the radiologist moves one
vertex of the AI outline on a lesion frame and sends it (POST /api/jobs/{id}/review). The
service's exporter loop (the one `wecare serve` runs, 1 s poll) delivers both objects; what
storescp stored must pass dciodvfy, read back with highdicom, hold exactly the sent outline
rasterised, and the SR must name the reviewer and carry the outline's measurements.

Set WECARE_REVIEW_TIMING=/some/file.jsonl to append the measured send-to-acknowledged times.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy import Engine, select

from dicom_io import codes
from dicom_io.measure import mask_measurements
from dicom_io.polygons import Polygon, mask_to_polygons, polygons_to_mask
from dicom_io.seg import seg_frame_mask
from service.config import load_settings
from service.exporter import export_once, run_exporter
from service.web.app import create_app
from storage.db import session_scope
from storage.files import DataDir
from storage.models import OutboxItem, OutboxState, Output, Role
from tests.dciodvfy import run_dciodvfy
from tests.factories import make_us_image
from tests.integration.peers import storescp, wait_for
from tests.service.test_review import coded, numbers, run_job, sr_items
from tests.service.test_web import FakeRuntime, bearer, make_token

pytestmark = pytest.mark.integration

MM = 0.1


def _delivered(engine: Engine, uids: list[str]) -> list[float] | None:
    """sent_at (epoch seconds) of each output's outbox row once all are sent, else None."""
    with session_scope(engine) as s:
        rows = s.scalars(
            select(OutboxItem).join(Output).where(Output.sop_instance_uid.in_(uids))
        ).all()
        if len(rows) != len(uids) or any(r.state != OutboxState.SENT for r in rows):
            failed = [r.last_error for r in rows if r.state == OutboxState.FAILED]
            assert not failed, failed
            return None
        return [r.sent_at.timestamp() for r in rows if r.sent_at is not None]


def test_corrected_seg_and_sr_delivered_to_storescp(
    tmp_path: Path, engine: Engine, data_dir: DataDir, db_url: str
) -> None:
    received = tmp_path / "storescp-in"
    with storescp(received) as (aet, port):
        settings = load_settings(
            None,
            storage={"data_dir": str(data_dir.root), "min_free_mb": 0, "database_url": db_url},
            destinations=[{"name": "peer", "ae_title": aet, "host": "127.0.0.1", "port": port}],
        )
        source = make_us_image(tmp_path / "cine.dcm", frames=8, lesion_frames=[4, 5])
        job_id = run_job(engine, data_dir, settings, source)
        while export_once(settings, engine):  # the AI outputs first: not part of the timing
            pass
        ai_files = {p.name for p in received.rglob("*") if p.is_file()}
        assert len(ai_files) == 2
        uid = str(dcmread(source, stop_before_pixels=True).SOPInstanceUID)
        with session_scope(engine) as s:
            (ai_seg_path,) = s.scalars(
                select(Output.path).where(Output.job_id == job_id, Output.kind == "seg")
            ).all()
        ai_mask = seg_frame_mask(dcmread(ai_seg_path), uid, 5)
        assert ai_mask is not None
        (outline,) = mask_to_polygons(ai_mask)
        moved = list(outline.vertices)
        moved[0] = (moved[0][0] + 6.0, moved[0][1] - 4.0)  # the radiologist drags one vertex
        sent = Polygon(tuple(moved))
        expected = polygons_to_mask([sent], (256, 320)).astype(bool)
        assert not np.array_equal(expected, ai_mask)

        app = create_app(settings, FakeRuntime(settings=settings, engine=engine,
                                               data_dir=data_dir))
        stop = threading.Event()
        exporter = threading.Thread(target=run_exporter, args=(settings, engine, stop))
        exporter.start()
        try:
            with TestClient(app, headers=bearer(make_token(engine, Role.RADIOLOGIST, "rhea"))) as c:
                started = time.time()
                answer = c.post(
                    f"/api/jobs/{job_id}/review",
                    json={"sop_instance_uid": uid, "action": "edit", "origin": "ai",
                          "label": "malignant",
                          "frames": [{"frame": 5, "lesions": [sent.to_json()]}]},
                )
                answered = time.time()
            assert answer.status_code == 202, answer.text
            data = answer.json()
            uids = [data["seg_sop_instance_uid"], data["sr_sop_instance_uid"]]
            acked = wait_for(lambda: _delivered(engine, uids), 60, interval=0.05,
                             what="review outputs acknowledged by storescp")
        finally:
            stop.set()
            exporter.join(30)
    seconds = max(acked) - started
    timing = {"post_seconds": round(answered - started, 3),
              "post_to_ack_seconds": round(seconds, 3)}
    print(f"review send to acknowledged: {timing}")
    if os.environ.get("WECARE_REVIEW_TIMING"):
        with open(os.environ["WECARE_REVIEW_TIMING"], "a") as handle:
            handle.write(json.dumps(timing) + "\n")
    assert seconds < 30

    arrived = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
               for p in received.rglob("*") if p.is_file() and p.name not in ai_files}
    assert set(arrived) == set(uids)
    for path in arrived.values():
        errors, _ = run_dciodvfy(path)
        assert errors == [], (path.name, errors)

    seg = hd.seg.segread(arrived[data["seg_sop_instance_uid"]])
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert str(seg.ContentCreatorName) == "rhea^"
    assert np.array_equal(seg_frame_mask(seg, uid, 5), expected)
    assert all(seg_frame_mask(seg, uid, n) is None for n in (1, 2, 3, 4, 6, 7, 8))
    # The source image and, as a further source, the AI SEG it corrects.
    ai_seg_uid = str(dcmread(ai_seg_path, stop_before_pixels=True).SOPInstanceUID)
    assert {u for _, _, u in seg.get_source_image_uids()} == {uid, ai_seg_uid}

    report = hd.sr.srread(arrived[data["sr_sop_instance_uid"]])
    items = sr_items(report)
    assert [str(i.PersonName) for i in items if i.ValueType == "PNAME"] == ["rhea^"]
    area, long_axis, short_axis = mask_measurements(expected, MM, MM)
    assert numbers(items, codes.LONG_AXIS) == [round(long_axis, 2)]
    assert numbers(items, codes.SHORT_AXIS) == [round(short_axis, 2)]
    assert numbers(items, codes.AREA) == [round(area, 2)]
    assert coded(items, codes.REVIEW) == [codes.REVIEW_CODES["corrected"].value]
