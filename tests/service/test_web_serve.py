"""The web app served by a real uvicorn on a loopback port, configured as `wecare serve` does
(service.web.app.server_config): concurrent log-ins against the throttle, X-Forwarded-For only
from trusted proxies, a slow request body cut off."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, select

from service.config import Settings
from service.web.app import create_app, server_config
from storage.db import session_scope
from storage.files import DataDir
from storage.models import AuditEvent, Role
from storage.users import create_user
from tests.integration.peers import free_port
from tests.service.test_web import PASSWORD, FakeRuntime, make_token

LOGIN_FORM_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_app(data_dir: DataDir, db_url: str, engine: Engine, **sections: Any) -> FastAPI:
    settings = Settings(
        storage={"data_dir": data_dir.root, "min_free_mb": 0, "database_url": db_url},
        **sections,
    )
    return create_app(settings, FakeRuntime(settings=settings, engine=engine, data_dir=data_dir))


@contextmanager
def served(app: FastAPI) -> Iterator[tuple[str, int]]:
    """Run `app` under uvicorn on a free loopback port; yield (host, port)."""
    port = free_port()
    settings: Settings = app.state.settings
    web = settings.web.model_copy(update={"host": "127.0.0.1", "port": port})
    server = uvicorn.Server(server_config(app, settings.model_copy(update={"web": web})))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(10)


def login_form(client: httpx.Client) -> str:
    """GET /login: sets the double-submit cookie on `client`, returns the form's token."""
    page = client.get("/login")
    assert page.status_code == 200
    match = LOGIN_FORM_TOKEN.search(page.text)
    assert match is not None
    return match.group(1)


def failed_logins(engine: Engine) -> list[AuditEvent]:
    with session_scope(engine) as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == "login_failed")))


# ---- log-in throttling -------------------------------------------------------------------------


def test_login_throttle_concurrent_wrong_passwords_at_most_limit_evaluated(
    data_dir: DataDir, db_url: str, engine: Engine
) -> None:
    with session_scope(engine) as session:
        create_user(session, "vera", Role.VIEWER, PASSWORD)
    app = make_app(data_dir, db_url, engine)
    attempts = 24
    codes: list[int] = []
    lock = threading.Lock()
    with served(app) as (host, port):
        base = f"http://{host}:{port}"
        clients = [httpx.Client(base_url=base, timeout=60) for _ in range(attempts)]
        tokens = [login_form(c) for c in clients]
        start = threading.Barrier(attempts)

        def attempt(i: int) -> None:
            start.wait()
            response = clients[i].post(
                "/login",
                data={"username": "vera", "password": f"wrong {i}", "csrf_token": tokens[i]},
            )
            with lock:
                codes.append(response.status_code)

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(attempts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for c in clients:
            c.close()

    assert len(codes) == attempts
    assert set(codes) <= {401, 429}
    evaluated = codes.count(401)
    assert evaluated == app.state.login_throttle.limit == 10
    assert codes.count(429) == attempts - 10
    assert len(failed_logins(engine)) == evaluated


# ---- client address: X-Forwarded-For only from a trusted proxy ---------------------------------


def wrong_login(client: httpx.Client, forwarded_for: str | None) -> int:
    headers = {"x-forwarded-for": forwarded_for} if forwarded_for else {}
    response = client.post(
        "/login",
        data={"username": "vera", "password": "wrong", "csrf_token": login_form(client)},
        headers=headers,
    )
    return response.status_code


def test_forwarded_for_from_untrusted_peer_ignored_by_throttle_and_audit(
    data_dir: DataDir, db_url: str, engine: Engine
) -> None:
    with session_scope(engine) as session:
        create_user(session, "vera", Role.VIEWER, PASSWORD)
    app = make_app(data_dir, db_url, engine)  # web.trusted_proxies empty: the default
    with served(app) as (host, port), httpx.Client(base_url=f"http://{host}:{port}") as c:
        # Each guess claims another address; all land in the real peer's one bucket.
        codes = [wrong_login(c, f"203.0.113.{i}") for i in range(11)]

    assert codes == [401] * 10 + [429]
    clients = {event.client for event in failed_logins(engine)}
    assert clients == {"127.0.0.1"}


def test_forwarded_for_from_trusted_proxy_gives_client_address(
    data_dir: DataDir, db_url: str, engine: Engine
) -> None:
    with session_scope(engine) as session:
        create_user(session, "vera", Role.VIEWER, PASSWORD)
    app = make_app(data_dir, db_url, engine, web={"trusted_proxies": ["127.0.0.1", "10.1.0.0/16"]})
    with served(app) as (host, port), httpx.Client(base_url=f"http://{host}:{port}") as c:
        # Right-most untrusted hop: the spoofed left entry is ignored, the proxy chain skipped.
        codes = [wrong_login(c, "198.51.100.66, 203.0.113.5, 10.1.2.3") for _ in range(10)]
        other = wrong_login(c, "203.0.113.9")  # another client behind the proxy: own bucket
        again = wrong_login(c, "203.0.113.5")
        direct = wrong_login(c, None)  # the proxy's own address: own bucket

    assert codes == [401] * 10
    assert (other, again, direct) == (401, 429, 401)
    clients = [event.client for event in failed_logins(engine)]
    assert clients == ["203.0.113.5"] * 10 + ["203.0.113.9", "127.0.0.1"]


# ---- a slow request body ------------------------------------------------------------------------


def slow_post(
    host: str, port: int, head: str, length: int, budget: float
) -> tuple[bytes, float, int]:
    """Send `head` (request line and headers), then the body a few bytes at a time, until the
    server answers and closes or `budget` seconds pass.

    Returns (what the server sent, seconds until it closed, body bytes sent)."""
    sent = 0
    reply = b""
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=budget) as sock:
        sock.sendall(head.encode() + f"content-length: {length}\r\n\r\n".encode())
        sock.settimeout(0.25)
        while time.monotonic() - started < budget:
            if sent < length:
                try:
                    sock.sendall(b"0" * 4)
                    sent += 4
                except OSError:  # closed by the server
                    pass
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:  # the server closed the connection
                break
            reply += chunk
        return reply, time.monotonic() - started, sent


@pytest.mark.parametrize("anonymous", [True, False], ids=["login_form", "upload_with_token"])
def test_request_body_slower_than_timeout_gets_408_and_connection_closed(
    data_dir: DataDir, db_url: str, engine: Engine, anonymous: bool
) -> None:
    app = make_app(data_dir, db_url, engine, web={"request_body_timeout_seconds": 1})
    if anonymous:  # the log-in form needs no account: anyone can open this one
        form = "application/x-www-form-urlencoded"
        head = f"POST /login HTTP/1.1\r\nhost: x\r\ncontent-type: {form}\r\n"
    else:
        token = make_token(engine, Role.OPERATOR)
        head = (
            f"POST /api/instances HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n"
            "content-type: application/dicom\r\n"
        )
    with served(app) as (host, port):
        reply, seconds, sent = slow_post(host, port, head, length=100_000, budget=8)

    status_line = reply.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 408 Request Timeout", reply[:300]
    assert b"connection: close" in reply.lower()
    assert 1 <= seconds < 4  # cut at the deadline, not when the client gives up
    assert sent < 100_000
