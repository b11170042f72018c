"""The web app: JSON API, actions, HTML dashboard, previews, /health and /metrics.

Each test gets a fresh data directory and migrated SQLite database (tests/conftest.py) and
builds rows through the storage models.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, select

from service.config import Settings
from service.errors import JobError
from service.web.app import create_app, format_duration, short_uid
from service.web.schemas import is_preview_name, stage_durations
from storage.db import make_engine, session_scope
from storage.files import DataDir
from storage.instances import ReceivedInstance, record_instance
from storage.models import Job, JobState, OutboxItem, OutboxState, Output, Role, Study
from storage.users import create_token, create_user, get_user

T0 = datetime(2026, 11, 23, 19, 0, 0, tzinfo=UTC)
HTML = {"accept": "text/html"}


@dataclass
class FakeModels:
    """What /health reads of service.worker.ModelProvider."""

    loaded: bool = False
    error: str | None = None
    network: str | None = None


@dataclass
class FakeRuntime:
    """What the web app reads of service.runtime.Runtime, without starting anything."""

    settings: Settings
    engine: Engine
    data_dir: DataDir
    models: FakeModels = field(default_factory=FakeModels)
    listener_up: bool = True


def make_settings(data_dir: DataDir, **storage: Any) -> Settings:
    return Settings(storage={"data_dir": data_dir.root, "min_free_mb": 0, **storage})


@pytest.fixture()
def settings(data_dir: DataDir, db_url: str) -> Settings:
    return make_settings(data_dir, database_url=db_url)


@pytest.fixture()
def runtime(settings: Settings, engine: Engine, data_dir: DataDir) -> FakeRuntime:
    return FakeRuntime(settings=settings, engine=engine, data_dir=data_dir)


@pytest.fixture()
def app(settings: Settings, runtime: FakeRuntime) -> FastAPI:
    return create_app(settings, runtime)


PASSWORD = "correct horse battery staple"


def make_token(engine: Engine, role: Role | str = Role.ADMIN, user: str | None = None) -> str:
    """A bearer token of a user with `role` (the user is created when missing)."""
    name = user or f"{Role(role).value}-user"
    with session_scope(engine) as session:
        owner = get_user(session, name) or create_user(session, name, role, PASSWORD)
        count = len(owner.tokens)
        _, secret = create_token(session, f"{name}-token-{count}", owner)
    return secret


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture()
def client(app: FastAPI, engine: Engine) -> Iterator[TestClient]:
    """An admin script's client: every request carries an admin's API token."""
    with TestClient(app, headers=bearer(make_token(engine))) as c:
        yield c


RESULTS = [
    {
        "image": 1,
        "frame": 1,
        "sop_instance_uid": "1.2.826.0.1.3680043.8.1.1",
        "predicted_class": "malignant",
        "probabilities": {"normal": 0.05, "benign": 0.15, "malignant": 0.8},
        "lesion_area_px": 1234,
        "lesion_area_mm2": 56.7,
        "long_axis_mm": 12.3,
        "short_axis_mm": 7.8,
        "mask_png": "000_0001_mask.png",
        "cam_png": "000_0001_cam.png",
    },
    {
        "image": 2,
        "frame": 1,
        "predicted_class": "benign",
        "probabilities": {"normal": 0.2, "benign": 0.7, "malignant": 0.1},
        "lesion_area_px": 400,
        "lesion_area_mm2": None,
        "long_axis_mm": None,
        "short_axis_mm": None,
        "mask_png": "001_0001_mask.png",
        "cam_png": None,
    },
]


def add_job(
    engine: Engine,
    *,
    state: JobState = JobState.WAITING,
    study_uid: str = "1.2.826.0.1.3680043.8.498.12345",
    accession: str | None = "ACC0001",
    created_at: datetime = T0,
    outbox: Sequence[tuple[str, OutboxState]] = (),
    error: str | None = None,
    error_code: str | None = None,
    model_status: str | None = "final",
    results: list[dict[str, Any]] | None = None,
) -> int:
    """A study with one job in `state` (stamps consistent with it) and, when `outbox` is given,
    one SEG and one SR output each with those (destination, state) rows."""
    with session_scope(engine) as s:
        study = s.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None:
            study = Study(
                study_instance_uid=study_uid,
                accession_number=accession,
                first_received_at=created_at,
                last_received_at=created_at,
            )
            s.add(study)
            s.flush()
        order = [JobState.WAITING, JobState.QUEUED, JobState.RUNNING, JobState.EXPORTING]
        reached = order.index(state) if state in order else len(order)
        job = Job(study_id=study.id, state=state, created_at=created_at)
        if reached >= 1:
            job.queued_at = created_at + timedelta(seconds=10)
        if reached >= 2:
            job.running_at = created_at + timedelta(seconds=12)
            job.attempts = 1
        if reached >= 3 and (outbox or state == JobState.EXPORTING):
            job.exporting_at = created_at + timedelta(seconds=20)
        if state in (JobState.DONE, JobState.FAILED):
            job.finished_at = created_at + timedelta(seconds=25)
        if reached >= 3:
            job.model_version = "wecare-multitask 2026-11-23 ab12cd34"
            job.model_status = model_status
            job.image_count = 2
            job.predicted_class = "malignant"
            job.probabilities = {"normal": 0.1, "benign": 0.2, "malignant": 0.7}
            job.stage_seconds = {"decode": 0.4, "inference": 2.5, "seg_sr": 0.7}
            job.results = RESULTS if results is None else results
        job.error, job.error_code = error, error_code
        s.add(job)
        s.flush()
        for n, kind in enumerate(("seg", "sr") if outbox else ()):
            output = Output(
                job_id=job.id,
                kind=kind,
                sop_instance_uid=f"2.25.{job.id}{n}",
                series_instance_uid=f"2.25.9{job.id}{n}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                path=f"/x/{n}.dcm",
            )
            s.add(output)
            s.flush()
            for destination, row_state in outbox:
                s.add(
                    OutboxItem(
                        output_id=output.id,
                        destination=destination,
                        state=row_state,
                        attempts=10 if row_state == OutboxState.FAILED else 1,
                        next_try_at=T0 + timedelta(hours=1),
                        last_status=0xA700 if row_state == OutboxState.FAILED else None,
                        last_error="peer answered status 0xA700"
                        if row_state == OutboxState.FAILED
                        else None,
                        sent_at=T0 if row_state == OutboxState.SENT else None,
                    )
                )
        return job.id


def job_state(engine: Engine, job_id: int) -> str:
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.state


def outbox_rows(engine: Engine, job_id: int) -> list[OutboxItem]:
    with session_scope(engine) as s:
        return list(s.scalars(select(OutboxItem).join(Output).where(Output.job_id == job_id)))


def write_png(data_dir: DataDir, job_id: int, name: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 40, 40)).save(buf, format="PNG")
    path = data_dir.outputs / str(job_id) / "preview" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


# ---- JSON API ---------------------------------------------------------------------------------


def test_api_jobs_list_several_jobs_newest_first_with_count(
    client: TestClient, engine: Engine
) -> None:
    old = add_job(engine, study_uid="1.2.3.1", created_at=T0)
    new = add_job(engine, study_uid="1.2.3.2", created_at=T0 + timedelta(minutes=5))

    body = client.get("/api/jobs").json()

    assert body["count"] == 2
    assert [j["id"] for j in body["data"]] == [new, old]
    assert body["data"][0]["study_instance_uid"] == "1.2.3.2"
    assert body["data"][0]["accession_number"] == "ACC0001"


def test_api_jobs_list_state_filter_and_paging_returns_matching_page(
    client: TestClient, engine: Engine
) -> None:
    failed = [
        add_job(
            engine,
            study_uid=f"1.2.3.{n}",
            state=JobState.FAILED,
            created_at=T0 + timedelta(minutes=n),
        )
        for n in range(3)
    ]
    add_job(engine, study_uid="1.2.4", state=JobState.DONE)

    body = client.get("/api/jobs", params={"state": "failed", "limit": 2, "offset": 1}).json()

    assert body["count"] == 3
    assert [j["id"] for j in body["data"]] == [failed[1], failed[0]]
    assert client.get("/api/jobs", params={"state": "bogus"}).status_code == 422


def test_api_job_detail_done_job_returns_results_outputs_and_durations(
    client: TestClient, engine: Engine
) -> None:
    job_id = add_job(
        engine,
        state=JobState.DONE,
        outbox=[("pacs", OutboxState.SENT), ("archive", OutboxState.SENT)],
    )

    body = client.get(f"/api/jobs/{job_id}").json()

    assert body["state"] == "done"
    assert body["study_instance_uid"] == "1.2.826.0.1.3680043.8.498.12345"
    assert body["model_version"] == "wecare-multitask 2026-11-23 ab12cd34"
    assert body["model_status"] == "final"
    assert body["predicted_class"] == "malignant"
    assert body["probabilities"]["malignant"] == pytest.approx(0.7)
    assert body["image_count"] == 2
    assert body["stage_seconds"]["inference"] == pytest.approx(2.5)
    assert body["durations"] == {
        "waiting": 10.0,
        "queued": 2.0,
        "running": 8.0,
        "exporting": 5.0,
        "total": 25.0,
    }
    first = body["results"][0]
    assert first["lesion_area_mm2"] == pytest.approx(56.7)
    assert first["long_axis_mm"] == pytest.approx(12.3)
    assert first["mask_url"] == f"/jobs/{job_id}/preview/000_0001_mask.png"
    assert first["cam_url"] == f"/jobs/{job_id}/preview/000_0001_cam.png"
    assert body["results"][1]["cam_url"] is None
    assert [o["kind"] for o in body["outputs"]] == ["seg", "sr"]
    rows = body["outputs"][0]["outbox"]
    assert [r["destination"] for r in rows] == ["archive", "pacs"]
    assert rows[0]["state"] == "sent" and rows[0]["sent_at"].startswith("2026-11-23T19:00")


def test_api_job_detail_missing_job_returns_404_with_code(client: TestClient) -> None:
    response = client.get("/api/jobs/999")

    assert response.status_code == 404
    assert response.json() == {"detail": "job 999 not found", "code": "not_found"}


def test_api_job_detail_result_with_unsafe_preview_name_gets_no_url(
    client: TestClient, engine: Engine
) -> None:
    job_id = add_job(
        engine,
        state=JobState.DONE,
        results=[{"image": 1, "mask_png": "../../wecare.db", "cam_png": None}],
    )

    result = client.get(f"/api/jobs/{job_id}").json()["results"][0]

    assert result["mask_png"] == "../../wecare.db"
    assert result["mask_url"] is None


def test_api_process_now_waiting_job_moves_to_queued(client: TestClient, engine: Engine) -> None:
    job_id = add_job(engine, state=JobState.WAITING)

    response = client.post(f"/api/jobs/{job_id}/process-now")

    assert response.status_code == 200
    assert response.json()["action"] == "queued"
    assert response.json()["job"]["state"] == "queued"
    assert response.json()["job"]["forced"] is True
    assert job_state(engine, job_id) == JobState.QUEUED


@pytest.mark.parametrize(
    "state", [JobState.QUEUED, JobState.RUNNING, JobState.EXPORTING, JobState.DONE, JobState.FAILED]
)
def test_api_process_now_job_not_waiting_returns_409(
    client: TestClient, engine: Engine, state: JobState
) -> None:
    job_id = add_job(engine, state=state)

    response = client.post(f"/api/jobs/{job_id}/process-now")

    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert job_state(engine, job_id) == state


def test_api_process_now_missing_job_returns_404(client: TestClient) -> None:
    assert client.post("/api/jobs/42/process-now").status_code == 404


def test_api_retry_failed_export_resets_outbox_and_job_to_exporting(
    client: TestClient, engine: Engine
) -> None:
    job_id = add_job(
        engine,
        state=JobState.FAILED,
        error="export failed (pacs: refused)",
        error_code="export_failed",
        outbox=[("pacs", OutboxState.FAILED), ("archive", OutboxState.SENT)],
    )

    response = client.post(f"/api/jobs/{job_id}/retry")

    assert response.status_code == 200
    assert response.json()["action"] == "exports_retried"
    assert response.json()["affected"] == 2  # the SEG and the SR to "pacs"
    job = response.json()["job"]
    assert (job["state"], job["error"], job["error_code"]) == ("exporting", None, None)
    rows = {(r.destination, r.output_id): r for r in outbox_rows(engine, job_id)}
    pacs = [r for (dest, _), r in rows.items() if dest == "pacs"]
    assert all(r.state == OutboxState.PENDING and r.attempts == 0 for r in pacs)
    assert all(r.state == OutboxState.SENT for (dest, _), r in rows.items() if dest == "archive")
    assert job_state(engine, job_id) == JobState.EXPORTING


def test_api_retry_done_job_failed_delivery_of_a_correction_is_retried(
    client: TestClient, engine: Engine
) -> None:
    """A corrected SEG/SR of a done job that the PACS refused can be sent again."""
    job_id = add_job(engine, state=JobState.DONE,
                     outbox=[("pacs", OutboxState.FAILED), ("archive", OutboxState.SENT)])

    response = client.post(f"/api/jobs/{job_id}/retry")

    assert response.status_code == 200
    assert response.json()["action"] == "exports_retried"
    assert response.json()["affected"] == 2
    assert job_state(engine, job_id) == JobState.DONE
    rows = outbox_rows(engine, job_id)
    assert {r.state for r in rows if r.destination == "pacs"} == {OutboxState.PENDING}
    assert {r.state for r in rows if r.destination == "archive"} == {OutboxState.SENT}


def test_job_page_done_job_with_failed_delivery_offers_the_retry_button(
    client: TestClient, engine: Engine
) -> None:
    failed = add_job(engine, state=JobState.DONE, outbox=[("pacs", OutboxState.FAILED)])
    sent = add_job(engine, state=JobState.DONE, study_uid="1.2.3.4",
                   outbox=[("pacs", OutboxState.SENT)])
    assert "Retry failed deliveries" in client.get(f"/jobs/{failed}").text
    assert "Retry failed deliveries" not in client.get(f"/jobs/{sent}").text


def test_api_retry_failed_processing_requeues_job(client: TestClient, engine: Engine) -> None:
    job_id = add_job(
        engine, state=JobState.FAILED, error="no ultrasound region", error_code="no_us_region"
    )

    response = client.post(f"/api/jobs/{job_id}/retry")

    assert response.status_code == 200
    assert response.json()["action"] == "requeued"
    assert response.json()["job"]["state"] == "queued"
    assert response.json()["job"]["attempts"] == 0
    assert job_state(engine, job_id) == JobState.QUEUED


def test_api_retry_exporting_job_makes_pending_rows_due_now(
    client: TestClient, engine: Engine
) -> None:
    job_id = add_job(engine, state=JobState.EXPORTING, outbox=[("pacs", OutboxState.PENDING)])
    before = datetime.now(UTC)

    response = client.post(f"/api/jobs/{job_id}/retry")

    assert response.status_code == 200
    assert response.json()["action"] == "sent_now"
    rows = outbox_rows(engine, job_id)
    assert len(rows) == 2
    assert all(before - timedelta(seconds=1) <= r.next_try_at <= datetime.now(UTC) for r in rows)
    assert job_state(engine, job_id) == JobState.EXPORTING


@pytest.mark.parametrize(
    "state", [JobState.WAITING, JobState.QUEUED, JobState.RUNNING, JobState.DONE]
)
def test_api_retry_job_not_failed_or_exporting_returns_409(
    client: TestClient, engine: Engine, state: JobState
) -> None:
    job_id = add_job(engine, state=state)

    response = client.post(f"/api/jobs/{job_id}/retry")

    assert response.status_code == 409
    assert job_state(engine, job_id) == state


def test_api_retry_exporting_job_all_rows_sent_returns_409(
    client: TestClient, engine: Engine
) -> None:
    job_id = add_job(engine, state=JobState.EXPORTING, outbox=[("pacs", OutboxState.SENT)])

    assert client.post(f"/api/jobs/{job_id}/retry").status_code == 409


def test_app_domain_error_returns_detail_and_code(app: FastAPI, client: TestClient) -> None:
    def boom() -> None:
        raise JobError("no_us_region", "no ultrasound region in image 3f2a1b0c")

    app.add_api_route("/api/boom", boom)
    response = client.get("/api/boom")

    assert response.status_code == 409
    assert response.json() == {
        "detail": "no ultrasound region in image 3f2a1b0c",
        "code": "no_us_region",
    }


def test_openapi_docs_list_every_api_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()

    assert spec["info"]["title"] == "WeCare"
    assert {
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/process-now",
        "/api/jobs/{job_id}/retry",
        "/health",
        "/metrics",
    } <= set(spec["paths"])
    assert "/" not in spec["paths"]  # HTML pages stay out of the API docs
    assert client.get("/docs").status_code == 200


# ---- HTML dashboard ---------------------------------------------------------------------------


def test_dashboard_index_jobs_shows_values_and_buttons(client: TestClient, engine: Engine) -> None:
    waiting = add_job(engine, study_uid="1.2.3.1", accession="ACC-WAIT")
    failed = add_job(
        engine,
        study_uid="1.2.3.2",
        accession="ACC-FAIL",
        state=JobState.FAILED,
        error="no ultrasound region",
        error_code="no_us_region",
    )
    done = add_job(engine, study_uid="1.2.3.3", accession="ACC-DONE", state=JobState.DONE)

    response = client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '<meta http-equiv="refresh"' in page
    for acc in ("ACC-WAIT", "ACC-FAIL", "ACC-DONE"):
        assert acc in page
    assert f'id="job-{done}"' in page and "malignant" in page
    assert "no_us_region" in page and "no ultrasound region" in page
    assert f'action="/jobs/{waiting}/process-now"' in page
    assert f'action="/jobs/{failed}/retry"' in page
    assert f'action="/jobs/{done}/retry"' not in page
    assert "13 s" in page  # running → finished of the done job (no export)
    assert 'class="badge s-failed"' in page


def test_dashboard_index_state_filter_shows_only_that_state(
    client: TestClient, engine: Engine
) -> None:
    add_job(engine, study_uid="1.2.3.1", accession="ACC-WAIT")
    add_job(engine, study_uid="1.2.3.2", accession="ACC-DONE", state=JobState.DONE)

    page = client.get("/?state=done").text

    assert "ACC-DONE" in page and "ACC-WAIT" not in page


def test_dashboard_index_no_jobs_says_so(client: TestClient) -> None:
    assert "No jobs" in client.get("/").text


@pytest.mark.parametrize("path", ["/", "/jobs/{id}"])
def test_dashboard_accession_with_script_renders_escaped(
    client: TestClient, engine: Engine, path: str
) -> None:
    job_id = add_job(engine, accession="<script>alert(1)</script>", state=JobState.DONE)

    page = client.get(path.format(id=job_id)).text

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_dashboard_job_page_checkpoint_model_shows_everything(
    client: TestClient, engine: Engine, data_dir: DataDir
) -> None:
    job_id = add_job(
        engine,
        state=JobState.EXPORTING,
        model_status="checkpoint: epoch 12",
        outbox=[("pacs", OutboxState.FAILED), ("archive", OutboxState.PENDING)],
    )
    for name in ("000_0001_mask.png", "000_0001_cam.png"):
        write_png(data_dir, job_id, name)

    page = client.get(f"/jobs/{job_id}").text

    assert "Model not validated for clinical use" in page
    assert "checkpoint: epoch 12" in page
    assert "Decision support only" in page
    assert "wecare-multitask 2026-11-23 ab12cd34" in page
    assert f'src="/jobs/{job_id}/preview/000_0001_mask.png"' in page
    assert f'src="/jobs/{job_id}/preview/000_0001_cam.png"' in page
    assert "no Grad-CAM" in page  # image 2 has none
    assert "no mask preview" in page  # image 2's file was not written
    assert f'src="/jobs/{job_id}/preview/001_0001_mask.png"' not in page
    assert "56.7 mm²" in page and "12.3 mm" in page and "1234 px" in page
    assert "not measured" in page
    assert "80.0 %" in page and "70.0 %" in page  # image and study probabilities
    assert "0xA700" in page and "peer answered status 0xA700" in page
    assert "archive" in page and "pending" in page
    assert "inference" in page and "2.5 s" in page
    assert f'action="/jobs/{job_id}/retry"' in page
    assert '<meta http-equiv="refresh"' in page


def test_dashboard_job_page_final_model_done_has_no_banner_or_refresh(
    client: TestClient, engine: Engine
) -> None:
    job_id = add_job(engine, state=JobState.DONE, outbox=[("pacs", OutboxState.SENT)])

    page = client.get(f"/jobs/{job_id}").text

    assert "not validated" not in page
    assert "Decision support only" in page
    assert '<meta http-equiv="refresh"' not in page
    assert f'action="/jobs/{job_id}/retry"' not in page


def test_dashboard_job_page_missing_job_returns_404_page(client: TestClient) -> None:
    response = client.get("/jobs/77", headers=HTML)

    assert response.status_code == 404
    assert "job 77 not found" in response.text
    assert response.headers["content-type"].startswith("text/html")


def test_dashboard_form_process_now_redirects_back_and_queues(
    client: TestClient, engine: Engine
) -> None:
    job_id = add_job(engine)

    response = client.post(
        f"/jobs/{job_id}/process-now", data={"next": "/"}, follow_redirects=False
    )

    assert response.status_code == 303
    assert response.headers["location"] == "/?notice=queued"
    assert job_state(engine, job_id) == JobState.QUEUED
    assert "Job queued" in client.get(response.headers["location"]).text


def test_dashboard_form_retry_failed_job_from_detail_redirects_to_detail(
    client: TestClient, engine: Engine
) -> None:
    job_id = add_job(engine, state=JobState.FAILED, outbox=[("pacs", OutboxState.FAILED)])

    response = client.post(
        f"/jobs/{job_id}/retry", data={"next": f"/jobs/{job_id}"}, follow_redirects=False
    )

    assert response.status_code == 303
    assert response.headers["location"] == f"/jobs/{job_id}?notice=exports_retried"
    assert job_state(engine, job_id) == JobState.EXPORTING


def test_dashboard_form_action_not_allowed_redirects_with_notice(
    client: TestClient, engine: Engine
) -> None:
    job_id = add_job(engine, state=JobState.DONE)

    response = client.post(f"/jobs/{job_id}/retry", data={"next": "/"})

    assert response.status_code == 200
    assert "Nothing to do" in response.text
    assert job_state(engine, job_id) == JobState.DONE


@pytest.mark.parametrize(
    "next_url", ["//evil.example/", "https://evil.example/", "/\\evil", "/jobs/1/../../x", None]
)
def test_dashboard_form_foreign_next_redirects_home(
    client: TestClient, engine: Engine, next_url: str | None
) -> None:
    job_id = add_job(engine)
    data = {"next": next_url} if next_url is not None else {}

    response = client.post(f"/jobs/{job_id}/process-now", data=data, follow_redirects=False)

    assert response.headers["location"] == "/?notice=queued"


# ---- previews ---------------------------------------------------------------------------------


def test_preview_existing_png_is_served(
    client: TestClient, engine: Engine, data_dir: DataDir
) -> None:
    job_id = add_job(engine, state=JobState.DONE)
    png = write_png(data_dir, job_id, "000_0001_mask.png")

    response = client.get(f"/jobs/{job_id}/preview/000_0001_mask.png")

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == png
    assert Image.open(io.BytesIO(response.content)).size == (32, 24)


@pytest.mark.parametrize(
    "name",
    [
        "wecare.db",
        "000_0001_mask.png.bak",
        "0_1_mask.png",
        "000_0001_mask.PNG",
        "000_0001_other.png",
        ".000_0001_cam.png",
        "..%2F..%2Fwecare.db",
        "000_0001_cam.png%00",
    ],
)
def test_preview_bad_name_is_rejected(
    client: TestClient, engine: Engine, data_dir: DataDir, name: str
) -> None:
    job_id = add_job(engine, state=JobState.DONE)
    write_png(data_dir, job_id, "000_0001_cam.png")

    response = client.get(f"/jobs/{job_id}/preview/{name}")

    assert response.status_code in (400, 404)
    assert not response.content.startswith(b"\x89PNG")
    assert not response.content.startswith(b"SQLite")


def test_preview_traversal_in_path_never_reaches_files(client: TestClient, engine: Engine) -> None:
    job_id = add_job(engine, state=JobState.DONE)

    for url in (
        f"/jobs/{job_id}/preview/../../../wecare.db",
        f"/jobs/{job_id}/preview/..%2F..%2F..%2Fwecare.db",
        f"/jobs/{job_id}/preview/%2e%2e%2f%2e%2e%2fwecare.db",
    ):
        response = client.get(url)
        assert response.status_code in (400, 404), url
        assert b"SQLite" not in response.content


def test_preview_missing_file_returns_404(client: TestClient, engine: Engine) -> None:
    job_id = add_job(engine, state=JobState.DONE)

    assert client.get(f"/jobs/{job_id}/preview/000_0001_cam.png").status_code == 404


@pytest.mark.parametrize(
    "name,ok",
    [
        ("000_0001_mask.png", True),
        ("123_9999_cam.png", True),
        ("000_0001_mask.png\n", False),
        ("000_001_mask.png", False),
    ],
)
def test_is_preview_name_various_names_match_only_preview_files(name: str, ok: bool) -> None:
    assert is_preview_name(name) is ok


# ---- health and metrics -----------------------------------------------------------------------


def test_health_everything_up_returns_200_ok(client: TestClient, runtime: FakeRuntime) -> None:
    runtime.models.loaded = True
    runtime.models.network = "compiled"

    response = client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert body["disk"]["ok"] is True and body["disk"]["free_mb"] > 0
    assert body["disk"]["floor_mb"] == 0
    assert body["model"] == {"loaded": True, "error": None, "network": "compiled"}
    assert body["listener"] == "up"


def test_health_model_not_loaded_yet_is_not_an_error(client: TestClient) -> None:
    body = client.get("/health").json()

    assert body["model"] == {"loaded": False, "error": None, "network": None}
    assert body["status"] == "ok"


def test_health_compile_failure_is_shown_but_not_degraded(
    client: TestClient, runtime: FakeRuntime
) -> None:
    # A network that could not be compiled runs eager: slower, same results, so IT sees why
    # but the service is not degraded.
    runtime.models.loaded = True
    runtime.models.network = "eager (compile failed: RuntimeError: g++ not found)"

    body = client.get("/health").json()

    assert body["status"] == "ok"
    assert body["model"]["network"].startswith("eager (compile failed")


@pytest.mark.parametrize(
    "model_error,listener_up,listener",
    [
        ("FileNotFoundError: weights.pt", True, "up"),
        (None, False, "down"),
    ],
)
def test_health_model_error_or_listener_down_is_degraded_200(
    client: TestClient,
    runtime: FakeRuntime,
    model_error: str | None,
    listener_up: bool,
    listener: str,
) -> None:
    runtime.models.error = model_error
    runtime.listener_up = listener_up

    response = client.get("/health")

    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["model"]["error"] == model_error
    assert response.json()["listener"] == listener


def test_health_disk_below_floor_returns_503(
    data_dir: DataDir, db_url: str, runtime: FakeRuntime
) -> None:
    settings = make_settings(data_dir, database_url=db_url, min_free_mb=10**9)

    response = TestClient(create_app(settings, runtime)).get("/health")

    assert response.status_code == 503
    assert response.json()["disk"]["ok"] is False
    assert response.json()["disk"]["floor_mb"] == 10**9
    assert response.json()["database"] == "ok"
    assert response.json()["status"] == "degraded"


def test_health_database_unreachable_returns_503(data_dir: DataDir, tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}"
    settings = make_settings(data_dir, database_url=url)
    engine = make_engine(url)
    runtime = FakeRuntime(settings=settings, engine=engine, data_dir=data_dir)

    response = TestClient(create_app(settings, runtime)).get("/health")

    assert response.status_code == 503
    assert response.json()["database"] == "error"
    assert response.json()["status"] == "degraded"
    engine.dispose()


def test_create_app_without_runtime_uses_settings_database(
    settings: Settings, engine: Engine
) -> None:
    job_id = add_job(engine, accession="ACC-OWN")
    app = create_app(settings)

    with TestClient(app, headers=bearer(make_token(engine, Role.VIEWER))) as client:
        assert client.get(f"/api/jobs/{job_id}").json()["accession_number"] == "ACC-OWN"
        health = client.get("/health").json()
    assert health["listener"] == "down" and health["model"]["loaded"] is False
    assert health["status"] == "ok"  # no listener expected in a web-only process
    assert app.state.engine is not engine
    app.state.engine.dispose()


def test_metrics_jobs_and_outbox_counted_by_state(client: TestClient, engine: Engine) -> None:
    add_job(engine, study_uid="1.2.3.1")
    add_job(engine, study_uid="1.2.3.2")
    add_job(
        engine,
        study_uid="1.2.3.3",
        state=JobState.FAILED,
        outbox=[("pacs", OutboxState.FAILED), ("archive", OutboxState.SENT)],
    )

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'wecare_jobs{state="waiting"} 2.0' in text
    assert 'wecare_jobs{state="failed"} 1.0' in text
    assert 'wecare_jobs{state="done"} 0.0' in text
    assert 'wecare_outbox_items{state="failed"} 2.0' in text
    assert 'wecare_outbox_items{state="sent"} 2.0' in text
    assert "wecare_database_up 1.0" in text


def test_metrics_two_apps_in_one_process_do_not_collide(
    settings: Settings, runtime: FakeRuntime, engine: Engine
) -> None:
    first, second = create_app(settings, runtime), create_app(settings, runtime)
    headers = bearer(make_token(engine, Role.VIEWER))

    assert TestClient(first, headers=headers).get("/metrics").status_code == 200
    assert TestClient(second, headers=headers).get("/metrics").status_code == 200
    assert first.state.metrics_registry is not second.state.metrics_registry


# ---- formatting -------------------------------------------------------------------------------


def test_stage_durations_retried_job_ignores_stale_later_stamps() -> None:
    job = Job(
        state=JobState.QUEUED,
        created_at=T0,
        queued_at=T0 + timedelta(seconds=60),
        running_at=T0 + timedelta(seconds=5),
        exporting_at=None,
        finished_at=None,
    )

    durations = stage_durations(job, now=T0 + timedelta(seconds=70))

    assert durations.waiting == 60.0
    assert durations.queued == 10.0  # in progress: counts up to now
    assert durations.running is None and durations.exporting is None
    assert durations.total == 70.0


@pytest.mark.parametrize(
    "seconds,text",
    [(None, "–"), (0.42, "0.4 s"), (12.4, "12 s"), (185, "3 min 05 s"), (7440, "2 h 04 min")],
)
def test_format_duration_various_lengths_reads_naturally(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_short_uid_long_uid_keeps_the_end() -> None:
    assert short_uid("1.2.826.0.1.3680043.8.498.12345") == "…43.8.498.12345"
    assert short_uid("1.2.3") == "1.2.3"


def test_stage_durations_clock_ahead_of_ours_never_negative() -> None:
    job = Job(state=JobState.WAITING, created_at=T0 + timedelta(seconds=3))

    durations = stage_durations(job, now=T0)

    assert durations.waiting == 0.0 and durations.total == 0.0


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"origin": "null"},
        {"sec-fetch-site": "cross-site", "origin": "http://testserver"},
    ],
)
def test_post_from_another_site_is_refused(
    client: TestClient, engine: Engine, headers: dict[str, str]
) -> None:
    job_id = add_job(engine)

    for url in (f"/api/jobs/{job_id}/process-now", f"/jobs/{job_id}/process-now"):
        response = client.post(url, headers=headers, follow_redirects=False)
        assert response.status_code == 403
        assert response.json()["code"] == "cross_site"
    assert job_state(engine, job_id) == JobState.WAITING


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://testserver"},
        {"sec-fetch-site": "same-origin", "origin": "http://proxy.example"},
        {},
    ],
)
def test_post_from_own_pages_or_scripts_is_allowed(
    client: TestClient, engine: Engine, headers: dict[str, str]
) -> None:
    job_id = add_job(engine)

    response = client.post(f"/jobs/{job_id}/process-now", headers=headers, follow_redirects=False)

    assert response.status_code == 303
    assert job_state(engine, job_id) == JobState.QUEUED


def test_create_app_real_runtime_health_reads_model_provider(
    settings: Settings, engine: Engine, data_dir: DataDir
) -> None:
    import service.runtime as runtime_module
    import service.worker as worker

    runtime = runtime_module.Runtime(
        settings=settings,
        engine=engine,
        data_dir=data_dir,
        models=worker.ModelProvider(None, "cpu", None),
    )

    response = TestClient(create_app(settings, runtime)).get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["model"] == {"loaded": False, "error": None, "network": None}
    assert body["listener"] == "down"  # no SCP started
    assert body["status"] == "degraded"


# Instances stored but not analysed (GET /api/instances, /not-processed)


def _store_instance(
    engine: Engine, sop: str, reason: str | None, calling: str | None = "PACS"
) -> None:
    with session_scope(engine) as s:
        record_instance(
            s,
            ReceivedInstance(
                study_instance_uid="1.2.826.0.1.3680043.8.9",
                series_instance_uid="1.2.826.0.1.3680043.8.9.1",
                sop_instance_uid=sop,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path="/x",
                size_bytes=1,
                calling_ae_title=calling,
                skip_reason=reason,
            ),
        )


def test_api_instances_not_processed_lists_skipped_with_code_and_text(
    client: TestClient, engine: Engine
) -> None:
    _store_instance(
        engine,
        "1.2.826.0.1.3680043.8.9.1.1",
        "not_ultrasound: CT Image Storage is not an ultrasound image; stored, not analysed",
    )
    _store_instance(engine, "1.2.826.0.1.3680043.8.9.1.2", None)  # analysed: not listed
    _store_instance(
        engine, "1.2.826.0.1.3680043.8.9.1.3", "our_own_object", calling=None
    )  # old bare code
    body = client.get("/api/instances?processed=false").json()
    assert body["count"] == 2
    by_sop = {r["sop_instance_uid"]: r for r in body["data"]}
    ct = by_sop["1.2.826.0.1.3680043.8.9.1.1"]
    assert ct["skip_code"] == "not_ultrasound" and "CT Image Storage" in ct["skip_reason"]
    own = by_sop["1.2.826.0.1.3680043.8.9.1.3"]
    assert own["skip_code"] == "our_own_object" and len(own["skip_reason"]) > len("our_own_object")
    assert client.get("/api/instances?processed=true").status_code == 400


def test_not_processed_page_shows_reason_escaped(client: TestClient, engine: Engine) -> None:
    _store_instance(engine, "1.2.826.0.1.3680043.8.9.1.4", "not_ultrasound: <b>odd</b> modality")
    page = client.get("/not-processed")
    assert page.status_code == 200
    assert "&lt;b&gt;odd&lt;/b&gt;" in page.text and "<b>odd</b>" not in page.text
    assert "not_ultrasound" in page.text


def test_not_processed_requires_log_in(app: object, engine: Engine) -> None:
    with TestClient(app) as anonymous:  # type: ignore[arg-type]
        assert anonymous.get("/api/instances").status_code == 401
    with TestClient(app, headers=bearer(make_token(engine, "viewer"))) as viewer:  # type: ignore[arg-type]
        assert viewer.get("/api/instances").status_code == 200
