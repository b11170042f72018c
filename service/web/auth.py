"""Who is asking: log-in sessions, API tokens, roles, CSRF, the first admin and the audit helper.

Deny by default: `authenticate_requests` (middleware) resolves every request to a `Principal`
before any route runs; only /login, /health (auth.anonymous_health) and /metrics
(auth.anonymous_metrics) are answered without one. Routes then state the role they need with
`ViewerDep`, `RadiologistDep`, `OperatorDep` or `AdminDep`, and HTML forms add `CsrfDep`.

- Browser: `POST /login` opens a server-side session (storage.users.open_session); the cookie
  holds its random id, signed with auth.session_secret (HttpOnly, SameSite=Lax, Secure over
  https). Log-out deletes the row; it expires after auth.session_hours.
- Scripts: `Authorization: Bearer wct_…` (storage.users.create_token), acting as its user.
- CSRF: every form carries the session's synchronizer token (`csrf_token` field, or the
  `X-CSRF-Token` header), compared in constant time; a bearer request carries no ambient
  credential, so needs none. This is on top of the cross-site Origin check in app.py.

Never logged: passwords, tokens, cookies, session ids.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from itsdangerous import BadSignature, Signer
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.config import Settings
from storage.audit import AuditAction, record
from storage.db import session_scope
from storage.files import make_private_dirs
from storage.models import Role
from storage.users import (
    count_users,
    create_user,
    find_session,
    find_token,
    new_password,
    same_secret,
)

log = logging.getLogger(__name__)

SESSION_COOKIE = "wecare_session"
LOGIN_CSRF_COOKIE = "wecare_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
INITIAL_ADMIN = "admin"
INITIAL_PASSWORD_FILE = "initial-admin-password"
SECRET_FILE = "session-secret"


@dataclass(frozen=True)
class Principal:
    """The user behind a request and how they proved it."""

    name: str
    role: Role
    via: Literal["session", "token", "open"]  # open: auth.enabled is false
    token_name: str | None = None
    csrf_token: str | None = None  # the session's synchronizer token (sessions only)
    session_secret: str | None = None  # the cookie's session id (sessions only, for log-out)

    def can(self, role: Role | str) -> bool:
        return self.role.allows(role)


OPEN_PRINCIPAL = Principal(name="anonymous", role=Role.ADMIN, via="open")


# ---- secrets and first run -----------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only (0600), fsynced."""
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def load_session_secret(settings: Settings) -> str:
    """auth.session_secret, or the one generated into `<data_dir>/session-secret` (0600)."""
    if settings.auth.session_secret:
        return settings.auth.session_secret
    path = Path(settings.storage.data_dir) / SECRET_FILE
    try:
        secret = path.read_text().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(48)
    _write_private(path, secret + "\n")
    log.info("generated the session signing key in %s", path)
    return secret


def ensure_initial_admin(settings: Settings, session: Session) -> Path | None:
    """When no user exists, create `admin` with a random password written to
    `<data_dir>/initial-admin-password` (0600); return that path, or None if users exist.

    The file is written before the commit, so the account never exists without it."""
    if count_users(session) > 0:
        return None
    password = new_password()
    path = Path(settings.storage.data_dir) / INITIAL_PASSWORD_FILE
    create_user(session, INITIAL_ADMIN, Role.ADMIN, password)
    record(session, AuditAction.USER_CREATED, actor="system", target=INITIAL_ADMIN)
    _write_private(path, password + "\n")
    return path


def bootstrap(settings: Settings, engine: Engine) -> None:
    """Start-up of the web app: warn when auth is off, else make sure someone can log in."""
    if not settings.auth.enabled:
        log.warning(
            "auth.enabled is false: the dashboard and API are open to anyone who can reach "
            "them (closed test rigs only)"
        )
        return
    try:
        with session_scope(engine) as session:
            path = ensure_initial_admin(settings, session)
    except SQLAlchemyError as exc:
        # Another node may have created it first, or the database is not there yet.
        log.warning("could not check for a first user: %s", type(exc).__name__)
        return
    if path is not None:
        log.warning(
            "no users yet: created user %r; its password is in %s (log in, then create "
            "named users and delete that file)",
            INITIAL_ADMIN,
            path,
        )


# ---- resolving a request to a principal ----------------------------------------------------


def _public(request: Request, settings: Settings) -> bool:
    path = request.url.path
    if path in ("/login", "/favicon.ico"):
        return True
    if path == "/health":
        return settings.auth.anonymous_health
    if path == "/metrics":
        return settings.auth.anonymous_metrics
    return False


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _resolve(request: Request, bearer: str | None) -> Principal | None:
    """Look the token or the session cookie up (blocking: run in a thread)."""
    app = request.app
    with session_scope(app.state.engine) as session:
        if bearer is not None:
            token = find_token(session, bearer)
            if token is None:
                return None
            return Principal(
                name=token.user.name, role=Role(token.user.role), via="token", token_name=token.name
            )
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        try:
            secret = app.state.signer.unsign(cookie).decode()
        except (BadSignature, UnicodeDecodeError):
            return None
        row = find_session(session, secret)
        if row is None:
            return None
        return Principal(
            name=row.user.name,
            role=Role(row.user.role),
            via="session",
            csrf_token=row.csrf_token,
            session_secret=secret,
        )


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api") and "text/html" in request.headers.get(
        "accept", ""
    )


async def authenticate_requests(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Middleware: set `request.state.principal` or answer 401 / redirect to the log-in page."""
    settings: Settings = request.app.state.settings
    request.state.principal = None
    if not settings.auth.enabled:
        request.state.principal = OPEN_PRINCIPAL
        return await call_next(request)
    if _public(request, settings):
        return await call_next(request)
    bearer = _bearer(request)
    try:
        principal = await run_in_threadpool(_resolve, request, bearer)
    except SQLAlchemyError:
        return JSONResponse(
            {"detail": "database unavailable", "code": "database_unavailable"},
            status_code=HTTPStatus.SERVICE_UNAVAILABLE,
        )
    if principal is None:
        if bearer is None and _wants_html(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(
                f"/login?next={quote(target, safe='')}", status_code=HTTPStatus.SEE_OTHER
            )
        detail = "invalid or revoked token" if bearer is not None else "log-in required"
        return JSONResponse(
            {"detail": detail, "code": "unauthorized"},
            status_code=HTTPStatus.UNAUTHORIZED,
            headers={"WWW-Authenticate": 'Bearer realm="wecare"'},
        )
    request.state.principal = principal
    return await call_next(request)


# ---- dependencies --------------------------------------------------------------------------


def current_principal(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise HTTPException(HTTPStatus.UNAUTHORIZED, "log-in required")
    return principal


def require(role: Role) -> Callable[[Request], Principal]:
    """A dependency giving the principal, or 403 when its role is below `role`."""

    def dependency(request: Request) -> Principal:
        principal = current_principal(request)
        if not principal.can(role):
            raise HTTPException(HTTPStatus.FORBIDDEN, f"needs the {role.value} role")
        return principal

    return dependency


async def check_csrf(request: Request) -> None:
    """403 unless a session-authenticated write carries the session's CSRF token."""
    principal = current_principal(request)
    if principal.via != "session":
        return
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not same_secret(sent, principal.csrf_token):
        raise HTTPException(HTTPStatus.FORBIDDEN, "missing or wrong CSRF token")


PrincipalDep = Annotated[Principal, Depends(current_principal)]
ViewerDep = Annotated[Principal, Depends(require(Role.VIEWER))]
RadiologistDep = Annotated[Principal, Depends(require(Role.RADIOLOGIST))]
OperatorDep = Annotated[Principal, Depends(require(Role.OPERATOR))]
AdminDep = Annotated[Principal, Depends(require(Role.ADMIN))]
CsrfDep = Depends(check_csrf)


def audit(
    session: Session,
    request: Request,
    action: AuditAction,
    target: str | None = None,
    *,
    detail: str | None = None,
    actor: str | None = None,
) -> None:
    """Record `action` by the request's principal in `session` (the action's transaction)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    record(
        session,
        action,
        actor=actor if actor is not None else (principal.name if principal else None),
        token_name=principal.token_name if principal else None,
        target=target,
        client=request.client.host if request.client else None,
        detail=detail,
    )


# ---- log-in throttling ---------------------------------------------------------------------


class LoginThrottle:
    """At most `limit` failed log-ins per client address in `window_seconds` (in memory).

    Check and count are one step (`reserve`, under a lock): an attempt is counted as a failure
    before its password is verified, so concurrent guesses cannot all pass the check while the
    first ones are still being hashed. A success clears the address; an attempt that never got
    an answer (an error) gives its slot back (`release`)."""

    #: Addresses tracked at most; past this, expired ones go, then the oldest.
    MAX_KEYS = 10_000

    def __init__(self, limit: int = 10, window_seconds: float = 300) -> None:
        self.limit = limit
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and now - times[0] > self.window:
            times.popleft()
        return times

    def _bound(self, now: float) -> None:
        """Keep memory bounded under a spray of addresses without wiping live counts."""
        if len(self._failures) < self.MAX_KEYS:
            return
        for key in [k for k, t in self._failures.items() if not t or now - t[-1] > self.window]:
            del self._failures[key]
        while len(self._failures) >= self.MAX_KEYS:
            del self._failures[next(iter(self._failures))]

    def blocked(self, key: str) -> bool:
        with self._lock:
            return len(self._recent(key, time.monotonic())) >= self.limit

    def reserve(self, key: str) -> float | None:
        """Count one attempt from `key` now; None (not counted) when `key` is blocked.

        Returns the slot, to `release` if the attempt ends without an answer."""
        with self._lock:
            now = time.monotonic()
            if key not in self._failures:
                self._bound(now)
            times = self._recent(key, now)
            if len(times) >= self.limit:
                return None
            times.append(now)
            return now

    def release(self, key: str, slot: float) -> None:
        """Give back a slot taken by `reserve` (the attempt was not evaluated)."""
        with self._lock:
            times = self._failures.get(key)
            if times is not None and slot in times:
                times.remove(slot)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


def make_signer(settings: Settings) -> Signer | None:
    """The cookie signer, or None when auth is off (no sessions then)."""
    if not settings.auth.enabled:
        return None
    return Signer(load_session_secret(settings), salt="wecare-session")


def session_lifetime(settings: Settings) -> timedelta:
    return timedelta(hours=settings.auth.session_hours)
