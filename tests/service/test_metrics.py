"""/metrics after real work: a study ingested, processed by a worker and tried by the exporter.

The histograms and counters are per process and other tests add to them, so each check is a
difference between a scrape before and a scrape after.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select

from service.config import Settings, load_settings
from service.exporter import export_once
from service.ingest import StoreContext, store_encoded
from service.web.app import create_app
from service.worker import ModelProvider, work_once
from storage.db import session_scope
from storage.files import DataDir
from storage.models import Job, Role
from storage.queue import process_now
from tests.factories import make_us_image
from tests.integration.peers import free_port
from tests.service.test_pipeline import ThresholdModel
from tests.service.test_web import FakeRuntime, bearer, make_token

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def _delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture()
def settings(data_dir: DataDir, db_url: str) -> Settings:
    down = free_port()  # nobody listens: the outputs stay in the outbox, pending
    return load_settings(
        None,
        storage={"data_dir": data_dir.root, "database_url": db_url, "min_free_mb": 0},
        destinations=[
            {"kind": "stow-rs", "name": "web-pacs", "url": f"http://127.0.0.1:{down}/dicom-web"}
        ],
        export={"timeout_seconds": 2},
    )


def test_metrics_after_ingest_processing_and_export_series_and_values(
    settings: Settings, engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    client = TestClient(
        create_app(settings, FakeRuntime(settings, engine, data_dir)),
        headers=bearer(make_token(engine, Role.VIEWER)),
    )
    start = _scrape(client)
    assert start[("wecare_queue_depth", ())] == 0

    encoded = make_us_image(tmp_path / "us.dcm").read_bytes()
    ctx = StoreContext(data_dir=data_dir, engine=engine)
    outcomes = [store_encoded(ctx, encoded), store_encoded(ctx, encoded)]
    outcomes.append(store_encoded(ctx, b"not DICOM"))
    assert [o.ok for o in outcomes] == [True, True, False]
    with session_scope(engine) as s:
        job_id = s.scalars(select(Job.id)).one()
        process_now(s, job_id)
    queued = _scrape(client)
    assert queued[("wecare_queue_depth", ())] == 1
    assert queued[("wecare_jobs", (("state", "queued"),))] == 1
    for outcome in ("stored", "already_stored", "cannot_understand"):
        assert _delta(queued, start, "wecare_ingest_instances_total", outcome=outcome) == 1

    models = ModelProvider(None, "cpu", None, model=ThresholdModel())
    assert work_once(settings, engine, data_dir, models, "host:0") == job_id
    assert export_once(settings, engine) == 2
    end = _scrape(client)

    with session_scope(engine) as s:
        stages = dict(s.get(Job, job_id).stage_seconds)  # type: ignore[union-attr]
    assert {"decode", "inference", "build", "store"} <= set(stages)
    for stage, seconds in stages.items():
        assert _delta(end, queued, "wecare_stage_seconds_count", stage=stage) == 1
        assert _delta(end, queued, "wecare_stage_seconds_sum", stage=stage) == pytest.approx(
            seconds, abs=1e-6
        )
        bucket = _delta(end, queued, "wecare_stage_seconds_bucket", stage=stage, le="+Inf")
        assert bucket == 1
    assert end[("wecare_queue_depth", ())] == 0
    assert end[("wecare_jobs", (("state", "exporting"),))] == 1
    pending = (("destination", "web-pacs"), ("state", "pending"))
    assert end[("wecare_outbox_backlog", pending)] == 2
    assert end[("wecare_outbox_oldest_pending_seconds", (("destination", "web-pacs"),))] >= 0
    assert _delta(end, queued, "wecare_export_seconds_count", destination="web-pacs") == 1
    assert end[("wecare_database_up", ())] == 1
