"""Dashboard and API access: log-in, sessions, tokens, roles, CSRF, first admin, audit, headers.

Runs the real app (create_app) on a fresh migrated database per test, through TestClient.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import stat
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update

from service.config import Settings
from service.web.app import create_app
from service.web.auth import INITIAL_PASSWORD_FILE, LOGIN_CSRF_COOKIE, SESSION_COOKIE
from storage.db import session_scope
from storage.files import DataDir
from storage.models import AuditEvent, JobState, Role, Study, User, WebSession, utcnow
from storage.users import create_user, get_user, revoke_token, set_active
from tests.service.test_web import (
    PASSWORD,
    FakeRuntime,
    add_job,
    bearer,
    job_state,
    make_token,
    write_png,
)

HTML = {"accept": "text/html"}


def make_settings(data_dir: DataDir, db_url: str, **sections: Any) -> Settings:
    return Settings(
        storage={"data_dir": data_dir.root, "min_free_mb": 0, "database_url": db_url},
        **sections,
    )


@pytest.fixture()
def settings(data_dir: DataDir, db_url: str) -> Settings:
    return make_settings(data_dir, db_url)


@pytest.fixture()
def app(settings: Settings, engine: Engine, data_dir: DataDir) -> FastAPI:
    return create_app(settings, FakeRuntime(settings=settings, engine=engine, data_dir=data_dir))


@pytest.fixture()
def anon(app: FastAPI) -> Iterator[TestClient]:
    """A client with no credentials (its lifespan creates the first admin)."""
    with TestClient(app) as c:
        yield c


def add_user(engine: Engine, name: str, role: Role | str) -> None:
    with session_scope(engine) as session:
        create_user(session, name, role, PASSWORD)


def log_in(client: TestClient, name: str, password: str = PASSWORD, next_url: str = "/") -> Any:
    page = client.get("/login", headers=HTML)
    assert page.status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    return client.post(
        "/login",
        data={
            "username": name,
            "password": password,
            "csrf_token": token.group(1),
            "next": next_url,
        },
        headers=HTML,
        follow_redirects=False,
    )


def csrf_of(client: TestClient, path: str = "/") -> str:
    """The session's CSRF token, as a page renders it into its forms."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path, headers=HTML).text)
    assert match is not None, "no CSRF field on the page"
    return match.group(1)


@pytest.fixture()
def session_client(app: FastAPI, engine: Engine) -> Iterator[TestClient]:
    """A browser logged in as an operator."""
    add_user(engine, "olga", Role.OPERATOR)
    with TestClient(app) as c:
        assert log_in(c, "olga").status_code == 303
        yield c


def audit_rows(engine: Engine, action: str | None = None) -> list[AuditEvent]:
    with session_scope(engine) as session:
        query = select(AuditEvent).order_by(AuditEvent.id)
        if action:
            query = query.where(AuditEvent.action == action)
        return list(session.scalars(query))


# ---- anonymous access --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/jobs", "/api/jobs/1", "/api/audit", "/openapi.json"])
def test_anonymous_api_request_returns_401_with_bearer_challenge(
    anon: TestClient, path: str
) -> None:
    response = anon.get(path)

    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/", "/jobs/1", "/upload", "/admin", "/docs", "/metrics"])
def test_anonymous_browser_page_redirects_to_login_with_next(anon: TestClient, path: str) -> None:
    response = anon.get(path, headers=HTML, follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


def test_anonymous_post_action_is_refused_and_changes_nothing(
    anon: TestClient, engine: Engine
) -> None:
    job_id = add_job(engine)

    assert anon.post(f"/api/jobs/{job_id}/process-now").status_code == 401
    assert anon.post(f"/jobs/{job_id}/process-now", follow_redirects=False).status_code == 401
    upload = anon.post(
        "/api/instances", content=b"x", headers={"content-type": "application/dicom"}
    )
    assert upload.status_code == 401
    assert job_state(engine, job_id) == JobState.WAITING


def test_anonymous_health_is_allowed_metrics_is_not_by_default(anon: TestClient) -> None:
    assert anon.get("/health").status_code == 200
    assert anon.get("/metrics").status_code == 401


def test_anonymous_metrics_allowed_when_configured(
    data_dir: DataDir, db_url: str, engine: Engine
) -> None:
    settings = make_settings(data_dir, db_url, auth={"anonymous_metrics": True})
    with TestClient(create_app(settings)) as c:
        assert c.get("/metrics").status_code == 200
        assert c.get("/api/jobs").status_code == 401


def test_anonymous_health_refused_when_configured_off(data_dir: DataDir, db_url: str) -> None:
    settings = make_settings(data_dir, db_url, auth={"anonymous_health": False})
    with TestClient(create_app(settings)) as c:
        assert c.get("/health").status_code == 401


def test_auth_disabled_everything_open_and_warning_logged(
    data_dir: DataDir, db_url: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = add_job(engine)
    settings = make_settings(data_dir, db_url, auth={"enabled": False})

    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as c:
        assert c.get("/api/jobs").status_code == 200
        assert c.post(f"/api/jobs/{job_id}/process-now").status_code == 200
        assert c.get("/api/audit").status_code == 200
    assert any("auth.enabled is false" in r.getMessage() for r in caplog.records)
    assert not (data_dir.root / INITIAL_PASSWORD_FILE).exists()


# ---- first run ---------------------------------------------------------------------------------


def test_first_start_no_users_creates_admin_with_private_password_file(
    app: FastAPI, engine: Engine, data_dir: DataDir, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), TestClient(app) as c:
        path = data_dir.root / INITIAL_PASSWORD_FILE
        password = path.read_text().strip()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert len(password) >= 20
        assert log_in(c, "admin", password).status_code == 303
        assert c.get("/admin", headers=HTML).status_code == 200
    messages = [r.getMessage() for r in caplog.records]
    assert any(str(path) in m for m in messages)
    assert not any(password in m for m in messages)
    with session_scope(engine) as session:
        assert get_user(session, "admin").role == Role.ADMIN  # type: ignore[union-attr]


def test_second_start_users_exist_creates_no_admin(
    app: FastAPI, engine: Engine, data_dir: DataDir
) -> None:
    add_user(engine, "alice", Role.ADMIN)

    with TestClient(app):
        pass

    assert not (data_dir.root / INITIAL_PASSWORD_FILE).exists()
    with session_scope(engine) as session:
        assert get_user(session, "admin") is None


def test_session_secret_generated_once_private_and_reused(
    settings: Settings, data_dir: DataDir, engine: Engine
) -> None:
    create_app(settings)
    secret_file = data_dir.root / "session-secret"
    first = secret_file.read_text()
    create_app(settings)

    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    assert secret_file.read_text() == first


# ---- log-in, sessions, log-out --------------------------------------------------------------- -


def test_login_right_password_sets_httponly_lax_cookie_and_redirects_to_next(
    app: FastAPI, engine: Engine
) -> None:
    add_user(engine, "vera", Role.VIEWER)
    job_id = add_job(engine)
    with TestClient(app) as c:
        response = log_in(c, "vera", next_url=f"/jobs/{job_id}")

        assert response.status_code == 303
        assert response.headers["location"] == f"/jobs/{job_id}"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert "Secure" not in cookie  # plain http test server
        page = c.get("/", headers=HTML)
        assert page.status_code == 200 and "vera" in page.text
        assert c.get("/api/jobs").status_code == 200  # the cookie works for the API too


def test_login_over_https_sets_secure_cookie(app: FastAPI, engine: Engine) -> None:
    add_user(engine, "vera", Role.VIEWER)
    with TestClient(app, base_url="https://testserver") as c:
        response = log_in(c, "vera")

    assert response.status_code == 303
    assert "Secure" in response.headers["set-cookie"]


@pytest.mark.parametrize(
    ("name", "password"), [("vera", "wrong password 123"), ("nobody", PASSWORD), ("", "")]
)
def test_login_wrong_credentials_returns_401_and_audits_failure(
    app: FastAPI, engine: Engine, name: str, password: str
) -> None:
    add_user(engine, "vera", Role.VIEWER)
    with TestClient(app) as c:
        response = log_in(c, name, password)

        assert response.status_code == 401
        assert "Wrong name or password" in response.text
        assert SESSION_COOKIE not in c.cookies
        assert c.get("/api/jobs").status_code == 401
    failed = audit_rows(engine, "login_failed")
    assert len(failed) == 1
    assert failed[0].actor == ("vera" if name == "vera" else None)
    assert failed[0].client


def test_login_password_typed_as_name_never_stored_in_audit(app: FastAPI, engine: Engine) -> None:
    add_user(engine, "vera", Role.VIEWER)
    with TestClient(app) as c:
        log_in(c, "MySecretPw-123", "x")

    row = audit_rows(engine, "login_failed")[0]
    assert "MySecretPw" not in f"{row.actor} {row.target} {row.detail}"


def test_login_without_login_csrf_cookie_returns_403(app: FastAPI, engine: Engine) -> None:
    add_user(engine, "vera", Role.VIEWER)
    with TestClient(app) as c:
        response = c.post(
            "/login",
            data={"username": "vera", "password": PASSWORD, "csrf_token": "forged"},
            follow_redirects=False,
        )

    assert response.status_code == 403
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")


def test_login_next_to_another_site_goes_home(app: FastAPI, engine: Engine) -> None:
    add_user(engine, "vera", Role.VIEWER)
    with TestClient(app) as c:
        for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
            response = log_in(c, "vera", next_url=target)
            assert response.headers["location"] == "/"


def test_login_many_failures_from_one_address_are_throttled(app: FastAPI, engine: Engine) -> None:
    add_user(engine, "vera", Role.VIEWER)
    with TestClient(app) as c:
        codes = [log_in(c, "vera", f"wrong password {i}").status_code for i in range(11)]
        blocked = log_in(c, "vera")  # even the right password, while blocked

    assert codes[:10] == [401] * 10
    assert codes[10] == 429
    assert blocked.status_code == 429


def test_session_expired_redirects_to_login(session_client: TestClient, engine: Engine) -> None:
    assert session_client.get("/", headers=HTML).status_code == 200
    with session_scope(engine) as session:
        session.execute(update(WebSession).values(expires_at=utcnow() - timedelta(seconds=1)))

    response = session_client.get("/", headers=HTML, follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")
    assert session_client.get("/api/jobs").status_code == 401


def test_session_lasts_session_hours(data_dir: DataDir, db_url: str, engine: Engine) -> None:
    settings = make_settings(data_dir, db_url, auth={"session_hours": 2})
    add_user(engine, "vera", Role.VIEWER)
    with TestClient(create_app(settings)) as c:
        response = log_in(c, "vera")

    assert "Max-Age=7200" in response.headers["set-cookie"]
    with session_scope(engine) as session:
        row = session.scalars(select(WebSession)).one()
        assert timedelta(hours=2) - (row.expires_at - row.created_at) < timedelta(seconds=1)


def test_session_cookie_tampered_is_refused(session_client: TestClient) -> None:
    value = session_client.cookies[SESSION_COOKIE]
    session_client.cookies.set(SESSION_COOKIE, value[:-2] + ("AA" if value[-2:] != "AA" else "BB"))

    assert session_client.get("/api/jobs").status_code == 401


def test_session_of_disabled_user_ends(session_client: TestClient, engine: Engine) -> None:
    with session_scope(engine) as session:
        set_active(session, get_user(session, "olga"), False)  # type: ignore[arg-type]

    assert session_client.get("/api/jobs").status_code == 401


def test_logout_with_csrf_ends_session_server_side(
    session_client: TestClient, engine: Engine
) -> None:
    cookie = session_client.cookies[SESSION_COOKIE]
    token = csrf_of(session_client)

    response = session_client.post(
        "/logout", data={"csrf_token": token}, headers=HTML, follow_redirects=False
    )

    assert response.status_code == 303 and response.headers["location"] == "/login"
    with session_scope(engine) as session:
        assert session.scalars(select(WebSession)).all() == []
    # The old cookie, replayed, no longer works.
    replay = TestClient(session_client.app, cookies={SESSION_COOKIE: cookie})
    assert replay.get("/api/jobs").status_code == 401
    assert [r.action for r in audit_rows(engine)][-1] == "logout"


def test_logout_without_csrf_returns_403_and_keeps_session(session_client: TestClient) -> None:
    response = session_client.post("/logout", headers=HTML, follow_redirects=False)

    assert response.status_code == 403
    assert session_client.get("/api/jobs").status_code == 200


# ---- CSRF on forms -------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_form_post_with_session_missing_or_wrong_csrf_returns_403(
    session_client: TestClient, engine: Engine, token: str | None
) -> None:
    job_id = add_job(engine)
    data = {"next": "/"} | ({} if token is None else {"csrf_token": token})

    response = session_client.post(
        f"/jobs/{job_id}/process-now", data=data, headers=HTML, follow_redirects=False
    )

    assert response.status_code == 403
    assert job_state(engine, job_id) == JobState.WAITING
    assert audit_rows(engine, "process_now") == []


def test_form_post_with_session_and_right_csrf_acts(
    session_client: TestClient, engine: Engine
) -> None:
    job_id = add_job(engine)
    token = csrf_of(session_client)

    response = session_client.post(
        f"/jobs/{job_id}/process-now",
        data={"next": "/", "csrf_token": token},
        follow_redirects=False,
    )

    assert response.status_code == 303
    assert job_state(engine, job_id) == JobState.QUEUED


def test_json_api_with_session_cookie_needs_csrf_header(
    session_client: TestClient, engine: Engine
) -> None:
    job_id = add_job(engine)

    assert session_client.post(f"/api/jobs/{job_id}/process-now").status_code == 403
    token = csrf_of(session_client)
    ok = session_client.post(f"/api/jobs/{job_id}/process-now", headers={"x-csrf-token": token})
    assert ok.status_code == 200


def test_csrf_token_differs_per_session(app: FastAPI, engine: Engine) -> None:
    add_user(engine, "olga", Role.OPERATOR)
    tokens = []
    for _ in range(2):
        with TestClient(app) as c:
            log_in(c, "olga")
            tokens.append(csrf_of(c))

    assert tokens[0] != tokens[1]


# ---- roles -------------------------------------------------------------------------------------

VIEWER_OK = [("GET", "/api/jobs"), ("GET", "/api/jobs/{job}"), ("GET", "/"), ("GET", "/jobs/{job}")]
OPERATOR_OK = [
    ("POST", "/api/jobs/{job}/process-now"),
    ("GET", "/upload"),
    ("POST", "/api/instances"),
]
ADMIN_OK = [("GET", "/api/audit"), ("GET", "/admin")]


_UIDS = itertools.count(1)


def _call(client: TestClient, method: str, path: str, job_id: int) -> int:
    url = path.format(job=job_id)
    if url == "/api/instances":  # an empty body reaches the role check, then fails as 400
        dicom = {"content-type": "application/dicom"}
        return client.post(url, content=b"", headers=dicom).status_code
    return client.request(method, url, headers=HTML, follow_redirects=False).status_code


@pytest.mark.parametrize(
    ("role", "allowed", "forbidden"),
    [
        (Role.VIEWER, VIEWER_OK, OPERATOR_OK + ADMIN_OK),
        (Role.OPERATOR, VIEWER_OK + OPERATOR_OK, ADMIN_OK),
        (Role.ADMIN, VIEWER_OK + OPERATOR_OK + ADMIN_OK, []),
    ],
)
def test_role_allowed_actions_succeed_and_others_return_403(
    app: FastAPI,
    engine: Engine,
    role: Role,
    allowed: list[tuple[str, str]],
    forbidden: list[tuple[str, str]],
) -> None:
    with TestClient(app, headers=bearer(make_token(engine, role))) as c:
        for method, path in allowed:
            job_id = add_job(engine, study_uid=f"1.2.9.{next(_UIDS)}")
            assert _call(c, method, path, job_id) in (200, 400), (role, path)
        for method, path in forbidden:
            job_id = add_job(engine, study_uid=f"1.2.9.{next(_UIDS)}")
            assert _call(c, method, path, job_id) == 403, (role, path)
            assert job_state(engine, job_id) == JobState.WAITING


def test_viewer_dashboard_shows_no_action_buttons_operator_does(
    app: FastAPI, engine: Engine
) -> None:
    job_id = add_job(engine)
    with TestClient(app, headers=bearer(make_token(engine, Role.VIEWER))) as viewer:
        page = viewer.get(f"/jobs/{job_id}", headers=HTML).text
        assert "process-now" not in page and 'href="/upload"' not in page
    with TestClient(app, headers=bearer(make_token(engine, Role.OPERATOR))) as operator:
        page = operator.get(f"/jobs/{job_id}", headers=HTML).text
        assert f'action="/jobs/{job_id}/process-now"' in page and 'href="/upload"' in page
        assert 'href="/admin"' not in page


# ---- API tokens ----------------------------------------------------------------------------------


def test_token_revoked_is_refused(app: FastAPI, engine: Engine) -> None:
    token = make_token(engine, Role.OPERATOR, user="bot")
    with TestClient(app, headers=bearer(token)) as c:
        assert c.get("/api/jobs").status_code == 200
        with session_scope(engine) as session:
            revoke_token(session, "bot-token-0")
        response = c.get("/api/jobs")

    assert response.status_code == 401
    assert response.json()["detail"] == "invalid or revoked token"


def test_token_of_disabled_user_is_refused(app: FastAPI, engine: Engine) -> None:
    token = make_token(engine, Role.OPERATOR, user="bot")
    with session_scope(engine) as session:
        set_active(session, get_user(session, "bot"), False)  # type: ignore[arg-type]

    with TestClient(app, headers=bearer(token)) as c:
        assert c.get("/api/jobs").status_code == 401


@pytest.mark.parametrize(
    "header", ["Bearer wct_not-a-real-token", "Bearer ", "Basic YWRtaW46YWRtaW4=", "wct_x"]
)
def test_token_unknown_or_malformed_authorization_is_refused(anon: TestClient, header: str) -> None:
    assert anon.get("/api/jobs", headers={"authorization": header}).status_code == 401


def test_token_requests_stamp_last_used_and_audit_token_name(app: FastAPI, engine: Engine) -> None:
    job_id = add_job(engine)
    with TestClient(app, headers=bearer(make_token(engine, Role.VIEWER, user="bot"))) as c:
        c.get(f"/api/jobs/{job_id}")

    row = audit_rows(engine, "view_job")[0]
    assert (row.actor, row.token_name, row.target) == ("bot", "bot-token-0", f"job:{job_id}")


# ---- patient name ------------------------------------------------------------------------------


def _set_patient_name(engine: Engine, name: str) -> None:
    with session_scope(engine) as session:
        for study in session.scalars(select(Study)):
            study.patient_name = name


@pytest.mark.parametrize("page", ["/", "/jobs/{id}"])
def test_dashboard_patient_name_with_script_renders_escaped(
    app: FastAPI, engine: Engine, page: str
) -> None:
    job_id = add_job(engine)
    _set_patient_name(engine, "<script>alert(1)</script>^Eve")
    with TestClient(app, headers=bearer(make_token(engine, Role.VIEWER))) as c:
        html = c.get(page.format(id=job_id), headers=HTML).text

    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;, Eve" in html


def test_dashboard_and_api_show_patient_name(app: FastAPI, engine: Engine) -> None:
    job_id = add_job(engine)
    _set_patient_name(engine, "DOE^JANE^M")
    with TestClient(app, headers=bearer(make_token(engine, Role.VIEWER))) as c:
        assert "DOE, JANE M" in c.get(f"/jobs/{job_id}", headers=HTML).text
        assert "DOE, JANE M" in c.get("/", headers=HTML).text
        assert c.get(f"/api/jobs/{job_id}").json()["patient_name"] == "DOE^JANE^M"


# ---- admin pages -------------------------------------------------------------------------------


def test_admin_creates_user_via_form_and_audits(app: FastAPI, engine: Engine) -> None:
    add_user(engine, "root", Role.ADMIN)
    with TestClient(app) as c:
        log_in(c, "root")
        token = csrf_of(c, "/admin")
        response = c.post(
            "/admin/users",
            data={"name": "nina", "role": "operator", "password": PASSWORD, "csrf_token": token},
            follow_redirects=False,
        )
        assert response.status_code == 303
        short = c.post(
            "/admin/users",
            data={"name": "ned", "role": "viewer", "password": "short", "csrf_token": token},
        )
        assert short.status_code == 400 and "at least 12" in short.text
    with session_scope(engine) as session:
        assert get_user(session, "nina").role == "operator"  # type: ignore[union-attr]
        assert get_user(session, "ned") is None
    created = audit_rows(engine, "user_created")
    assert [(r.actor, r.target) for r in created] == [("root", "nina")]


def test_admin_token_shown_once_works_then_revoked(app: FastAPI, engine: Engine) -> None:
    add_user(engine, "root", Role.ADMIN)
    add_user(engine, "olga", Role.OPERATOR)
    with TestClient(app) as c:
        log_in(c, "root")
        csrf = csrf_of(c, "/admin")
        form = {"name": "pacs-script", "user": "olga", "csrf_token": csrf}
        page = c.post("/admin/tokens", data=form)
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        secret = re.search(r"(wct_[A-Za-z0-9_-]+)", page.text).group(1)  # type: ignore[union-attr]
        assert secret not in c.get("/admin", headers=HTML).text  # shown once only

        with TestClient(app, headers=bearer(secret)) as script:
            assert script.get("/api/jobs").status_code == 200
            assert script.get("/api/audit").status_code == 403  # acts as olga: operator
            revoked = c.post(
                "/admin/tokens/pacs-script/revoke",
                data={"csrf_token": csrf},
                follow_redirects=False,
            )
            assert revoked.status_code == 303
            assert script.get("/api/jobs").status_code == 401
    actions = [r.action for r in audit_rows(engine)]
    assert "token_created" in actions and "token_revoked" in actions
    with session_scope(engine) as session:
        stored = session.scalars(select(User)).all()
        assert all(secret not in u.password_hash for u in stored)


def test_api_audit_lists_events_newest_first_for_admin(app: FastAPI, engine: Engine) -> None:
    job_id = add_job(engine)
    with TestClient(app, headers=bearer(make_token(engine, Role.ADMIN, user="root"))) as c:
        c.get(f"/api/jobs/{job_id}")
        c.post(f"/api/jobs/{job_id}/process-now")
        body = c.get("/api/audit").json()
        filtered = c.get("/api/audit", params={"action": "process_now"}).json()

    assert [e["action"] for e in body["data"]][:2] == ["process_now", "view_job"]
    assert body["count"] == 2
    assert filtered["count"] == 1 and filtered["data"][0]["target"] == f"job:{job_id}"


# ---- audit rows per action ---------------------------------------------------------------------


def test_audit_rows_written_for_each_dashboard_action(
    session_client: TestClient, engine: Engine, data_dir: DataDir
) -> None:
    failed = add_job(engine, study_uid="1.2.7.1", state=JobState.FAILED)
    waiting = add_job(engine, study_uid="1.2.7.2")
    write_png(data_dir, failed, "001_0001_mask.png")
    csrf = csrf_of(session_client)

    session_client.get(f"/jobs/{failed}", headers=HTML)
    session_client.get(f"/jobs/{failed}/preview/001_0001_mask.png")
    session_client.post(f"/jobs/{failed}/retry", data={"csrf_token": csrf})
    session_client.post(f"/jobs/{waiting}/process-now", data={"csrf_token": csrf})

    rows = [(r.actor, r.action, r.target) for r in audit_rows(engine)]
    assert rows[0] == ("olga", "login", "olga")
    assert ("olga", "view_job", f"job:{failed}") in rows
    assert ("olga", "view_image", f"job:{failed}") in rows
    assert ("olga", "retry", f"job:{failed}") in rows
    assert ("olga", "process_now", f"job:{waiting}") in rows
    assert all(r.client for r in audit_rows(engine))


def test_audit_refused_action_writes_no_row(app: FastAPI, engine: Engine) -> None:
    job_id = add_job(engine, state=JobState.DONE)
    with TestClient(app, headers=bearer(make_token(engine, Role.OPERATOR))) as c:
        assert c.post(f"/api/jobs/{job_id}/retry").status_code == 409

    assert audit_rows(engine, "retry") == []


# ---- headers and logs --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/api/jobs", "/login", "/health"])
def test_security_headers_on_every_answer(anon: TestClient, path: str) -> None:
    headers = anon.get(path, headers=HTML, follow_redirects=False).headers

    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "same-origin"


def test_logs_never_contain_password_token_or_cookie(
    app: FastAPI, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = add_job(engine, state=JobState.FAILED)
    with caplog.at_level(logging.DEBUG):
        token = make_token(engine, Role.ADMIN, user="root")
        with TestClient(app) as c:
            c.get("/api/jobs", headers=bearer(token))
            c.get("/api/jobs", headers=bearer(token + "x"))
            log_in(c, "root", "a wrong password!")
            log_in(c, "root")
            cookie = c.cookies[SESSION_COOKIE]
            c.post(f"/jobs/{job_id}/retry", data={"csrf_token": csrf_of(c)})
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert text  # the requests above did log
    for secret in (PASSWORD, "a wrong password!", token, cookie, cookie.split(".")[0]):
        assert secret not in text


def test_login_page_form_csrf_cookie_is_strict_and_scoped(anon: TestClient) -> None:
    response = anon.get("/login")

    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{LOGIN_CSRF_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/login" in cookie


# ---- own account ------------------------------------------------------------------------------


def _change(client: TestClient, current: str, new: str, repeat: str | None = None) -> Any:
    return client.post(
        "/account/password",
        data={
            "current": current,
            "new": new,
            "repeat": new if repeat is None else repeat,
            "csrf_token": csrf_of(client, "/account"),
        },
        follow_redirects=False,
    )


def test_account_change_password_ends_other_sessions_keeps_this_one(
    app: FastAPI, engine: Engine
) -> None:
    add_user(engine, "olga", Role.OPERATOR)
    new_password = "a brand new long password"
    with TestClient(app) as other, TestClient(app) as this:
        log_in(other, "olga")
        log_in(this, "olga")

        response = _change(this, PASSWORD, new_password)

        assert response.status_code == 303
        assert this.get("/api/jobs").status_code == 200
        assert other.get("/api/jobs").status_code == 401
    with TestClient(app) as fresh:
        assert log_in(fresh, "olga", PASSWORD).status_code == 401
        assert log_in(fresh, "olga", new_password).status_code == 303
    assert [r.target for r in audit_rows(engine, "password_changed")] == ["olga"]


@pytest.mark.parametrize(
    ("current", "new", "repeat", "message"),
    [
        ("wrong current pw", "a brand new long password", None, "current password is wrong"),
        (PASSWORD, "a brand new long password", "something else entirely", "differ"),
        (PASSWORD, "short", None, "at least 12"),
    ],
)
def test_account_change_password_bad_input_returns_400_keeps_password(
    session_client: TestClient,
    engine: Engine,
    current: str,
    new: str,
    repeat: str | None,
    message: str,
) -> None:
    response = _change(session_client, current, new, repeat)

    assert response.status_code == 400 and message in response.text
    assert session_client.get("/api/jobs").status_code == 200
    assert audit_rows(engine, "password_changed") == []


def test_account_change_password_without_csrf_returns_403(session_client: TestClient) -> None:
    response = session_client.post(
        "/account/password",
        data={"current": PASSWORD, "new": "x" * 20, "repeat": "x" * 20},
        follow_redirects=False,
    )

    assert response.status_code == 403
