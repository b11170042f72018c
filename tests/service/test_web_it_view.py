"""The IT view: delivery column and destination-naming errors on the job list, /health's
destination checks, the overview page, and the API docs served from vendored files."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.config import DicomDestination, Settings
from service.exporter import export_once
from service.web.app import create_app
from service.web.destination_health import DestinationHealth
from service.web.overview import percentile
from storage.db import session_scope
from storage.files import DataDir
from storage.models import Job, JobState, OutboxItem, OutboxState, utcnow
from tests.integration.peers import REPO_ROOT as REPO
from tests.integration.peers import free_port, storescp, wait_for
from tests.service.test_web import FakeModels, FakeRuntime, add_job, bearer, make_token


def _settings(data_dir: DataDir, db_url: str, destinations: list[dict[str, object]]) -> Settings:
    return Settings(
        storage={"data_dir": data_dir.root, "min_free_mb": 0, "database_url": db_url},
        destinations=destinations,
        export={"timeout_seconds": 2, "max_attempts": 3, "base_backoff_seconds": 60},
    )


def _client(settings: Settings, engine: Engine, data_dir: DataDir) -> TestClient:
    runtime = FakeRuntime(
        settings=settings, engine=engine, data_dir=data_dir, models=FakeModels(loaded=True)
    )
    app: FastAPI = create_app(settings, runtime)
    return TestClient(app, headers=bearer(make_token(engine)))


@pytest.fixture()
def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    return free_port()


@pytest.fixture()
def client_closed_pacs(
    data_dir: DataDir, db_url: str, engine: Engine, closed_port: int
) -> Iterator[TestClient]:
    destinations = [{"name": "PACS", "ae_title": "PACS", "host": "127.0.0.1", "port": closed_port}]
    with _client(_settings(data_dir, db_url, destinations), engine, data_dir) as c:
        yield c


def test_exporter_unreachable_destination_error_names_destination_host_and_port(
    data_dir: DataDir, db_url: str, engine: Engine, closed_port: int, client_closed_pacs: TestClient
) -> None:
    job_id = add_job(engine, state=JobState.EXPORTING, outbox=[("PACS", OutboxState.PENDING)])
    with session_scope(engine) as s:  # make the rows due now
        for item in s.query(OutboxItem).all():
            item.next_try_at = item.created_at
    settings = client_closed_pacs.app.state.settings  # type: ignore[attr-defined]
    assert export_once(settings, engine) == 2
    with session_scope(engine) as s:
        errors = [i.last_error for i in s.query(OutboxItem).all()]
    assert all(e and e.startswith(f"PACS (127.0.0.1:{closed_port}): ") for e in errors), errors

    page = client_closed_pacs.get("/", headers={"accept": "text/html"}).text
    row = page[page.index(f'id="job-{job_id}"') :]
    row = row[: row.index("</tr>")]
    assert f"PACS (127.0.0.1:{closed_port})" in row  # the error column is no longer empty
    assert re.search(r'class="badge s-pending">pending</span> PACS', row)
    assert "0/2/0" in row  # sent / pending / failed


def test_dashboard_index_delivery_column_shows_each_destination_state(
    client_closed_pacs: TestClient, engine: Engine
) -> None:
    sent = add_job(engine, state=JobState.DONE, outbox=[("PACS", OutboxState.SENT)])
    mixed = add_job(
        engine,
        state=JobState.FAILED,
        study_uid="1.2.3.4.5",
        outbox=[("PACS", OutboxState.SENT), ("ARCHIVE", OutboxState.FAILED)],
        error="export failed (ARCHIVE: peer answered status 0xA700)",
        error_code="export_failed",
    )
    page = client_closed_pacs.get("/", headers={"accept": "text/html"}).text
    rows = {n: page[page.index(f'id="job-{n}"') :].split("</tr>")[0] for n in (sent, mixed)}
    assert re.search(r"s-sent\">sent</span> PACS\s*<span[^>]*>2/0/0", rows[sent])
    assert re.search(r"s-failed\">failed</span> ARCHIVE\s*<span[^>]*>0/0/2", rows[mixed])
    assert re.search(r"s-sent\">sent</span> PACS", rows[mixed])
    assert "export failed (ARCHIVE" in rows[mixed]


def test_dashboard_index_live_refresh_default_and_off_by_query(
    client_closed_pacs: TestClient,
) -> None:
    live = client_closed_pacs.get("/", headers={"accept": "text/html"}).text
    assert re.search(r'<meta http-equiv="refresh" content="5; url=/">', live)
    off = client_closed_pacs.get("/?refresh=0", headers={"accept": "text/html"}).text
    assert 'http-equiv="refresh"' not in off and "Not updating" in off
    slow = client_closed_pacs.get("/?refresh=30&state=done", headers={"accept": "text/html"})
    assert re.search(r'content="30; url=/\?state=done&amp;refresh=30"', slow.text)


# ---- /health checks each destination ----------------------------------------------------------


def test_health_destination_port_closed_is_degraded_naming_destination(
    client_closed_pacs: TestClient, closed_port: int
) -> None:
    response = TestClient(client_closed_pacs.app).get("/health")  # anonymous, as a balancer
    body = response.json()
    assert response.status_code == 200  # still serving: the outbox keeps what it cannot send
    assert body["status"] == "degraded"
    assert body["database"] == "ok" and body["listener"] == "up"  # the old fields stay
    [dest] = body["destinations"]
    assert dest["name"] == "PACS" and dest["reachable"] is False
    assert any(f"PACS (127.0.0.1:{closed_port}) unreachable" in r for r in body["reasons"])


def test_health_destination_checks_are_cached_between_probes(
    client_closed_pacs: TestClient,
) -> None:
    for _ in range(5):
        assert client_closed_pacs.get("/health").json()["status"] == "degraded"
    cache = client_closed_pacs.app.state.destination_health  # type: ignore[attr-defined]
    assert cache.checks_run == 1


def test_health_destination_storescp_listening_is_ok(
    data_dir: DataDir, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with storescp(tmp_path / "in") as (aet, port):
        destinations = [{"name": "PACS", "ae_title": aet, "host": "127.0.0.1", "port": port}]
        with _client(_settings(data_dir, db_url, destinations), engine, data_dir) as c:
            body = c.get("/health").json()
    assert body["status"] == "ok", body["reasons"]
    assert body["reasons"] == []
    assert body["destinations"][0]["reachable"] is True
    assert body["destinations"][0]["address"] == f"PACS (127.0.0.1:{port})"


def test_health_stale_result_refreshes_in_background(closed_port: int) -> None:
    destination = DicomDestination(name="PACS", ae_title="PACS", host="127.0.0.1", port=closed_port)
    cache = DestinationHealth([destination], "WECARE", ttl_seconds=0.0, timeout_seconds=1)
    first = cache.results()
    assert cache.checks_run == 1 and first[0].ok is False
    again = cache.results()  # stale: answered from the cache, refresh started behind
    assert again == first
    wait_for(lambda: cache.checks_run == 2, 10, 0.05, "the background refresh")


# ---- /overview --------------------------------------------------------------------------------


def _finish_jobs(engine: Engine, stage_runs: list[float]) -> None:
    """Done jobs finished in the last hours, one per inference time, plus one failed."""
    now = utcnow()
    for n, inference in enumerate(stage_runs):
        job_id = add_job(engine, state=JobState.DONE, study_uid=f"1.2.3.{n + 1}")
        with session_scope(engine) as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.finished_at = now - timedelta(hours=n % 3)
            job.stage_seconds = {"decode": 0.5, "inference": inference}
            job.predicted_class = ("normal", "benign", "malignant")[n % 3]
    failed = add_job(
        engine, state=JobState.FAILED, study_uid="1.2.3.99", error="x", error_code="decode_failed"
    )
    with session_scope(engine) as s:
        job = s.get(Job, failed)
        assert job is not None
        job.finished_at = now


def test_overview_page_plots_throughput_latency_classes_failures_as_svg(
    client_closed_pacs: TestClient, engine: Engine
) -> None:
    runs = [float(v) for v in range(1, 21)]  # inference 1..20 s
    _finish_jobs(engine, runs)
    response = client_closed_pacs.get("/overview", headers={"accept": "text/html"})
    assert response.status_code == 200
    assert "script-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    assert "<script" not in page
    for plot in ("plot-throughput", "plot-latency", "plot-classes", "plot-failures"):
        section = page[page.index(f'id="{plot}"') :].split("</figure>")[0]
        assert "<svg" in section and "<rect" in section, plot
    latency = page[page.index('id="latency"') :].split("</table>")[0]
    # p50 and p95 of 1..20 s by linear interpolation: 10.5 s and 19.05 s
    p50, p95 = percentile(runs, 50), percentile(runs, 95)
    assert (p50, round(p95, 2)) == (10.5, 19.05)
    assert re.search(
        rf"inference</td><td class=\"num\">20</td><td class=\"num\">{p50:.0f} s", latency
    )
    assert "decode_failed" in page  # the failure plot names the error code
    done_titles = re.findall(r"<title>\d\d:00 · done: (\d+)</title>", page)
    assert sum(int(t) for t in done_titles) == len(runs)


def test_overview_page_needs_a_user(client_closed_pacs: TestClient) -> None:
    anonymous = TestClient(client_closed_pacs.app)
    response = anonymous.get("/overview", headers={"accept": "text/html"}, follow_redirects=False)
    assert response.status_code in (303, 401)


# ---- /docs and /redoc from vendored files ------------------------------------------------------


def test_api_docs_pages_load_only_vendored_files_under_strict_csp(
    client_closed_pacs: TestClient,
) -> None:
    for path, needed in (
        (
            "/docs",
            ["/static/vendor/swagger-ui-dist/swagger-ui-bundle.js", "/static/docs/swagger-init.js"],
        ),
        ("/redoc", ["/static/vendor/redoc/redoc.standalone.js"]),
    ):
        response = client_closed_pacs.get(path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp.split("style-src")[0]
        assert "http" not in csp  # no CDN host allowed
        sources = re.findall(r'(?:src|href)="([^"]+)"', response.text)
        assert sources and all(s.startswith("/static/") for s in sources), sources
        assert re.search(r"<script>(?!</script>)", response.text) is None  # nothing inline
        for url in needed:
            assert url in sources
            asset = client_closed_pacs.get(url)
            assert asset.status_code == 200 and len(asset.content) > 100, url
    # every other page keeps script-src 'none'
    assert "script-src 'none'" in client_closed_pacs.get("/").headers["content-security-policy"]


def test_api_docs_anonymous_is_refused(client_closed_pacs: TestClient) -> None:
    anonymous = TestClient(client_closed_pacs.app)
    for path in ("/docs", "/redoc", "/static/docs/swagger-init.js"):
        response = anonymous.get(path, follow_redirects=False)
        assert response.status_code in (303, 401), path


def test_vendor_frontend_files_match_pins_and_manifest() -> None:
    """The committed vendored files are what scripts/vendor_frontend.py pins (sha256)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "vendor_frontend.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout
