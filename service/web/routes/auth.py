"""Log-in and log-out pages.

The log-in form is protected against login CSRF by a double-submit token: a random value in a
short-lived HttpOnly cookie that the form must echo (there is no session yet to hold one).
"""

from __future__ import annotations

import re
import secrets
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from service.web.auth import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    CsrfDep,
    PrincipalDep,
    audit,
    session_lifetime,
)
from service.web.deps import SessionDep
from storage.audit import AuditAction
from storage.db import session_scope
from storage.models import utcnow
from storage.users import (
    UserError,
    authenticate,
    close_session,
    get_user,
    open_session,
    purge_expired_sessions,
    same_secret,
    set_password,
)

router = APIRouter(tags=["dashboard"], include_in_schema=False)

#: Where a log-in may send the browser afterwards: our own paths only (no //host, no scheme).
_NEXT_RE = re.compile(r"^/(?!/)[A-Za-z0-9/_.?=&%-]*$")


def _safe_next(next_url: str | None) -> str:
    return next_url if next_url and _NEXT_RE.fullmatch(next_url) else "/"


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _login_page(
    request: Request, next_url: str, error: str | None, status_code: int = 200
) -> Response:
    token = secrets.token_urlsafe(32)
    context: dict[str, Any] = {
        "next": next_url,
        "error": error,
        "login_csrf": token,
        "refresh": None,
        "now": None,
    }
    response: Response = request.app.state.templates.TemplateResponse(
        request, "login.html", context, status_code=status_code
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/login",
    )
    return response


@router.get("/login", summary="Log-in page")
def login_form(request: Request, next: str | None = None) -> Response:
    return _login_page(request, _safe_next(next), None)


@router.post("/login", summary="Log in")
async def login(
    request: Request,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD, max_length=200)] = "",
    next: Annotated[str | None, Form()] = None,
) -> Response:
    next_url = _safe_next(next)
    if not same_secret(csrf_token, request.cookies.get(LOGIN_CSRF_COOKIE)):
        return _login_page(
            request, next_url, "The form expired; please try again.", HTTPStatus.FORBIDDEN
        )
    throttle = request.app.state.login_throttle
    client = request.client.host if request.client else "?"
    slot = throttle.reserve(client)  # counted as a failure until the password proves right
    if slot is None:
        return _login_page(
            request,
            next_url,
            "Too many failed log-ins from this address; wait a few minutes.",
            HTTPStatus.TOO_MANY_REQUESTS,
        )
    settings = request.app.state.settings

    def attempt() -> str | None:
        with session_scope(request.app.state.engine) as session:
            user = authenticate(session, username, password)
            if user is None:
                # Name the account only if it exists: a password typed into the name field
                # must not land in the audit trail.
                known = get_user(session, username) if username else None
                audit(
                    session,
                    request,
                    AuditAction.LOGIN_FAILED,
                    known.name if known else "unknown user",
                    actor=known.name if known else "",
                )
                return None
            purge_expired_sessions(session)
            new = open_session(session, user, session_lifetime(settings))
            audit(session, request, AuditAction.LOGIN, user.name, actor=user.name)
            return new.secret

    try:
        secret = await run_in_threadpool(attempt)
    except Exception:  # not evaluated (database down): give the slot back. A cancelled
        throttle.release(client, slot)  # request keeps it: its guess may have been tried.
        raise
    if secret is None:
        return _login_page(request, next_url, "Wrong name or password.", HTTPStatus.UNAUTHORIZED)
    throttle.succeeded(client)
    response = RedirectResponse(next_url, status_code=HTTPStatus.SEE_OTHER)
    _set_session_cookie(request, response, secret)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


def _set_session_cookie(request: Request, response: Response, secret: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        request.app.state.signer.sign(secret).decode(),
        max_age=int(session_lifetime(request.app.state.settings).total_seconds()),
        httponly=True,
        samesite="lax",
        secure=_secure(request),
        path="/",
    )


def _account_page(
    request: Request,
    *,
    error: str | None = None,
    notice: tuple[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    context: dict[str, Any] = {"error": error, "notice": notice, "refresh": None, "now": utcnow()}
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, "account.html", context, status_code=status_code
    )


@router.get("/account", summary="Own account: change password")
def account(request: Request, principal: PrincipalDep, changed: int = 0) -> Response:
    notice = ("ok", "Password changed; other sessions were logged out.") if changed else None
    return _account_page(request, notice=notice)


@router.post("/account/password", summary="Change own password", dependencies=[CsrfDep])
def change_password(
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    current: Annotated[str, Form(max_length=1000)],
    new: Annotated[str, Form(max_length=1000)],
    repeat: Annotated[str, Form(max_length=1000)],
) -> Response:
    """Needs the current password; ends every session of the user, then opens a new one for
    this browser (a stolen session cannot outlive a password change)."""
    if principal.via != "session":
        raise HTTPException(HTTPStatus.FORBIDDEN, "log in with a password to change it")
    if authenticate(session, principal.name, current) is None:
        return _account_page(
            request, error="The current password is wrong.", status_code=HTTPStatus.BAD_REQUEST
        )
    if new != repeat:
        return _account_page(
            request, error="The new passwords differ.", status_code=HTTPStatus.BAD_REQUEST
        )
    user = get_user(session, principal.name)
    assert user is not None
    try:
        set_password(session, user, new)
    except UserError as exc:
        return _account_page(request, error=str(exc), status_code=HTTPStatus.BAD_REQUEST)
    new_session = open_session(session, user, session_lifetime(request.app.state.settings))
    audit(session, request, AuditAction.PASSWORD_CHANGED, user.name)
    response = RedirectResponse("/account?changed=1", status_code=HTTPStatus.SEE_OTHER)
    _set_session_cookie(request, response, new_session.secret)
    return response


@router.post("/logout", summary="Log out", dependencies=[CsrfDep])
def logout(request: Request, principal: PrincipalDep) -> Response:
    if principal.session_secret:
        with session_scope(request.app.state.engine) as session:
            close_session(session, principal.session_secret)
            audit(session, request, AuditAction.LOGOUT, principal.name)
    response = RedirectResponse("/login", status_code=HTTPStatus.SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
