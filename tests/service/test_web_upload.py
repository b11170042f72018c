"""Upload API (POST /api/instances) and the dashboard's upload form.

Files come from tests/factories.py; they are stored through service.ingest.store_encoded, the
DICOM listener's own durable path, so the checks are on disk, in the database and in the audit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from service.config import Settings
from service.logs import uid_hash
from service.web.app import create_app
from storage.db import session_scope
from storage.files import DataDir
from storage.models import AuditEvent, Instance, Job, Role, Study
from storage.users import create_user
from tests.factories import CANARY, make_us_dataset, make_us_image
from tests.service.test_web import PASSWORD, FakeRuntime, bearer, make_token

DICOM = {"content-type": "application/dicom"}


def make_settings(data_dir: DataDir, db_url: str, **web: object) -> Settings:
    return Settings(
        storage={"data_dir": data_dir.root, "min_free_mb": 0, "database_url": db_url},
        web=web,
    )


def make_app(settings: Settings, engine: Engine, data_dir: DataDir) -> FastAPI:
    return create_app(settings, FakeRuntime(settings=settings, engine=engine, data_dir=data_dir))


@pytest.fixture()
def app(data_dir: DataDir, db_url: str, engine: Engine) -> FastAPI:
    return make_app(make_settings(data_dir, db_url, max_upload_mb=1), engine, data_dir)


@pytest.fixture()
def operator(app: FastAPI, engine: Engine) -> Iterator[TestClient]:
    with TestClient(app, headers=bearer(make_token(engine, Role.OPERATOR, user="bot"))) as c:
        yield c


@pytest.fixture()
def us_file(tmp_path: Path) -> bytes:
    return make_us_image(tmp_path / "us.dcm").read_bytes()


def count(engine: Engine, model: type) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def audit_rows(engine: Engine) -> list[AuditEvent]:
    with session_scope(engine) as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_upload_raw_dicom_new_instance_returns_201_and_is_stored(
    operator: TestClient, engine: Engine, us_file: bytes
) -> None:
    response = operator.post("/api/instances", content=us_file, headers=DICOM)

    assert response.status_code == 201
    body = response.json()
    assert body["created"] is True and body["not_processed_reason"] is None
    with session_scope(engine) as session:
        row = session.scalars(select(Instance)).one()
        assert row.sop_instance_uid == body["sop_instance_uid"]
        assert row.calling_ae_title is None
        assert Path(row.path).read_bytes() == us_file
        study = session.scalars(select(Study)).one()
        assert study.patient_name == CANARY["PatientName"]
    assert count(engine, Job) == 1  # joins its study's waiting job, as from the PACS
    event = audit_rows(engine)[-1]
    assert (event.actor, event.token_name, event.action) == ("bot", "bot-token-0", "upload")
    assert event.target == f"sop:{uid_hash(body['sop_instance_uid'])}"


def test_upload_same_file_again_returns_200_adds_nothing(
    operator: TestClient, engine: Engine, us_file: bytes
) -> None:
    first = operator.post("/api/instances", content=us_file, headers=DICOM)
    again = operator.post("/api/instances", content=us_file, headers=DICOM)

    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["created"] is False
    assert again.json()["sop_instance_uid"] == first.json()["sop_instance_uid"]
    assert count(engine, Instance) == 1 and count(engine, Job) == 1


def test_upload_multipart_file_field_returns_201(operator: TestClient, us_file: bytes) -> None:
    response = operator.post(
        "/api/instances", files={"file": ("us.dcm", us_file, "application/dicom")}
    )

    assert response.status_code == 201
    assert response.json()["created"] is True


def test_upload_multipart_without_file_field_returns_400(operator: TestClient) -> None:
    response = operator.post("/api/instances", files={"other": ("x", b"abc", "text/plain")})

    assert response.status_code == 400


def test_upload_declared_too_large_returns_413_before_reading(
    operator: TestClient, engine: Engine
) -> None:
    body = b"\0" * (1024 * 1024 + 1)

    response = operator.post("/api/instances", content=body, headers=DICOM)

    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    assert count(engine, Instance) == 0


def test_upload_streamed_too_large_without_length_returns_413(
    operator: TestClient, engine: Engine
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"\0" * 65536  # 2.5 MiB in all, no Content-Length (chunked)

    response = operator.post("/api/instances", content=chunks(), headers=DICOM)

    assert response.status_code == 413
    assert count(engine, Instance) == 0


def test_upload_multipart_file_over_limit_returns_413(operator: TestClient) -> None:
    big = b"\0" * (1024 * 1024 + 10)

    response = operator.post(
        "/api/instances", files={"file": ("big.dcm", big, "application/dicom")}
    )

    assert response.status_code == 413


@pytest.mark.parametrize(
    "body",
    [b"", b"not dicom at all", b"\0" * 128 + b"DICM" + b"\xff" * 64],
    ids=["empty", "text", "bad-meta"],
)
def test_upload_garbage_returns_400_with_clear_reason(
    operator: TestClient, engine: Engine, body: bytes
) -> None:
    response = operator.post("/api/instances", content=body, headers=DICOM)

    assert response.status_code == 400
    assert response.json()["code"] == "cannot_understand"
    assert response.json()["detail"]
    assert "Traceback" not in response.text
    assert count(engine, Instance) == 0
    assert audit_rows(engine)[-1].action == "upload_refused"


def test_upload_missing_uids_returns_400_without_phi(operator: TestClient, tmp_path: Path) -> None:
    ds = make_us_dataset()
    del ds.StudyInstanceUID
    path = tmp_path / "no-study.dcm"
    ds.save_as(path, enforce_file_format=True)

    response = operator.post("/api/instances", content=path.read_bytes(), headers=DICOM)

    assert response.status_code == 400
    for value in CANARY.values():
        assert value not in response.text


def test_upload_below_disk_floor_returns_507_and_stores_nothing(
    data_dir: DataDir, db_url: str, engine: Engine, us_file: bytes
) -> None:
    settings = make_settings(data_dir, db_url)
    full = DataDir(data_dir.root, min_free_bytes=10**18)  # the floor above any real disk
    app = create_app(settings, FakeRuntime(settings=settings, engine=engine, data_dir=full))
    with TestClient(app, headers=bearer(make_token(engine, Role.OPERATOR))) as c:
        response = c.post("/api/instances", content=us_file, headers=DICOM)

    assert response.status_code == 507
    assert response.json()["code"] == "out_of_resources"
    assert count(engine, Instance) == 0
    assert not list(data_dir.incoming.rglob("*.dcm"))


def test_upload_other_content_type_returns_415(operator: TestClient, us_file: bytes) -> None:
    response = operator.post(
        "/api/instances", content=us_file, headers={"content-type": "text/plain"}
    )

    assert response.status_code == 415


def test_upload_viewer_returns_403_and_stores_nothing(
    app: FastAPI, engine: Engine, us_file: bytes
) -> None:
    with TestClient(app, headers=bearer(make_token(engine, Role.VIEWER))) as c:
        response = c.post("/api/instances", content=us_file, headers=DICOM)

    assert response.status_code == 403
    assert count(engine, Instance) == 0


def test_upload_our_own_seg_is_stored_but_not_processed(
    operator: TestClient, engine: Engine, tmp_path: Path
) -> None:
    ds = make_us_dataset()
    ds.Manufacturer = "WeCare"
    path = tmp_path / "ours.dcm"
    ds.save_as(path, enforce_file_format=True)

    response = operator.post("/api/instances", content=path.read_bytes(), headers=DICOM)

    assert response.status_code == 201
    assert response.json()["not_processed_reason"]
    assert count(engine, Job) == 0


# ---- the dashboard form ---------------------------------------------------------------------


@pytest.fixture()
def browser(app: FastAPI, engine: Engine) -> Iterator[TestClient]:
    """An operator logged in with a session cookie."""
    with session_scope(engine) as session:
        create_user(session, "olga", Role.OPERATOR, PASSWORD)
    with TestClient(app) as c:
        page = c.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        c.post("/login", data={"username": "olga", "password": PASSWORD, "csrf_token": token})
        yield c


def _form_csrf(client: TestClient) -> str:
    page = client.get("/upload", headers={"accept": "text/html"})
    assert page.status_code == 200 and 'enctype="multipart/form-data"' in page.text
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


def test_upload_form_with_csrf_stores_and_shows_result(
    browser: TestClient, engine: Engine, us_file: bytes
) -> None:
    response = browser.post(
        "/upload",
        data={"csrf_token": _form_csrf(browser)},
        files={"file": ("us.dcm", us_file, "application/dicom")},
    )

    assert response.status_code == 201
    assert "Stored." in response.text
    assert count(engine, Instance) == 1


def test_upload_form_without_csrf_returns_403_and_stores_nothing(
    browser: TestClient, engine: Engine, us_file: bytes
) -> None:
    response = browser.post("/upload", files={"file": ("us.dcm", us_file, "application/dicom")})

    assert response.status_code == 403
    assert count(engine, Instance) == 0


def test_upload_form_garbage_shows_refusal(browser: TestClient, engine: Engine) -> None:
    response = browser.post(
        "/upload",
        data={"csrf_token": _form_csrf(browser)},
        files={"file": ("x.dcm", b"garbage", "application/dicom")},
    )

    assert response.status_code == 400
    assert "Refused" in response.text
    assert count(engine, Instance) == 0


def test_upload_deflate_bomb_returns_413_and_stores_nothing(
    operator: TestClient, engine: Engine
) -> None:
    from tests.deflate_bombs import CHUNK, ct_bomb

    bomb = ct_bomb(300 * CHUNK)  # 300 MiB inflated from about 300 kB (under max_upload_mb)
    assert len(bomb) < 1024 * 1024

    response = operator.post("/api/instances", content=bomb, headers=DICOM)

    assert response.status_code == 413
    assert response.json() == {
        "detail": "deflated data set inflates beyond 256 MiB",
        "code": "too_large",
    }
    assert count(engine, Instance) == 0
    assert audit_rows(engine)[-1].action == "upload_refused"


def test_upload_form_deflate_bomb_returns_413_and_stores_nothing(
    browser: TestClient, engine: Engine
) -> None:
    from tests.deflate_bombs import CHUNK, ct_bomb

    response = browser.post(
        "/upload",
        data={"csrf_token": _form_csrf(browser)},
        files={"file": ("bomb.dcm", ct_bomb(300 * CHUNK), "application/dicom")},
    )

    assert response.status_code == 413
    assert "inflates beyond 256 MiB" in response.text
    assert count(engine, Instance) == 0
