"""Admin: users, API tokens, the audit trail and the effective configuration (admin role)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request, status
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field

from service.config import masked
from service.web.auth import AdminDep, CsrfDep, audit
from service.web.deps import SessionDep
from service.web.routes.pages import NOTICES
from storage.audit import AuditAction, recent
from storage.models import AuditEvent, Role, utcnow
from storage.users import (
    UserError,
    create_token,
    create_user,
    get_user,
    list_tokens,
    list_users,
    revoke_token,
    set_active,
)

router = APIRouter(tags=["admin"])
pages = APIRouter(tags=["dashboard"], include_in_schema=False)


class AuditEventPublic(BaseModel):
    """One audit event: who (user, and token when by script), did what, to what, from where."""

    id: int
    at: datetime
    actor: str | None = Field(None, description="User name; null for an unknown user")
    token_name: str | None = Field(None, description="API token used, if any")
    action: str = Field(description="login, login_failed, view_job, retry, upload, ...")
    target: str | None = Field(None, description="job:<id>, user name, sop:<uid hash>")
    client: str | None = Field(None, description="Client IP address")
    detail: str | None = None


class AuditEventsPublic(BaseModel):
    data: list[AuditEventPublic]
    count: int


def _event(row: AuditEvent) -> AuditEventPublic:
    return AuditEventPublic.model_validate(row, from_attributes=True)


@router.get("/api/audit", response_model=AuditEventsPublic, summary="Audit trail, newest first")
def read_audit(
    request: Request,
    session: SessionDep,
    _: AdminDep,
    action: Annotated[str | None, Query(description="Only this action")] = None,
    actor: Annotated[str | None, Query(description="Only this user")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AuditEventsPublic:
    """Who viewed, retried, uploaded, logged in or changed users and tokens (admin role)."""
    rows, count = recent(session, limit=limit, offset=offset, action=action, actor=actor)
    result = AuditEventsPublic(data=[_event(r) for r in rows], count=count)
    audit(session, request, AuditAction.VIEW_AUDIT)
    return result


def _page(request: Request, session: Any, **extra: Any) -> Response:
    rows, count = recent(session, limit=100)
    context: dict[str, Any] = {
        "users": list_users(session),
        "tokens": list_tokens(session),
        "events": [_event(r) for r in rows],
        "event_count": count,
        "roles": [r.value for r in Role],
        "config": masked(request.app.state.settings),
        "refresh": None,
        "now": utcnow(),
        "notice": None,
        "error": None,
        "new_token": None,
        **extra,
    }
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, "admin.html", context, status_code=extra.get("status_code", 200)
    )


def _done(notice: str) -> RedirectResponse:
    return RedirectResponse(f"/admin?notice={notice}", status_code=status.HTTP_303_SEE_OTHER)


@pages.get("/admin", summary="Admin page")
def admin_page(
    request: Request, session: SessionDep, _: AdminDep, notice: str | None = None
) -> Response:
    return _page(request, session, notice=NOTICES.get(notice) if notice else None)


@pages.post("/admin/users", summary="Create a user", dependencies=[CsrfDep])
def add_user(
    request: Request,
    session: SessionDep,
    _: AdminDep,
    name: Annotated[str, Form(max_length=64)],
    role: Annotated[str, Form(max_length=16)],
    password: Annotated[str, Form(max_length=1000)],
) -> Response:
    try:
        create_user(session, name, role, password)
    except UserError as exc:
        return _page(request, session, error=str(exc), status_code=400)
    audit(session, request, AuditAction.USER_CREATED, name, detail=f"role {role}")
    return _done("user_created")


@pages.post("/admin/users/{name}/disable", summary="Disable a user", dependencies=[CsrfDep])
def disable_user(name: str, request: Request, session: SessionDep, admin: AdminDep) -> Response:
    user = get_user(session, name)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such user")
    if user.name == admin.name:
        return _page(request, session, error="you cannot disable yourself", status_code=400)
    set_active(session, user, False)
    audit(session, request, AuditAction.USER_DISABLED, name)
    return _done("user_disabled")


@pages.post("/admin/tokens", summary="Create an API token", dependencies=[CsrfDep])
def add_token(
    request: Request,
    session: SessionDep,
    _: AdminDep,
    name: Annotated[str, Form(max_length=64)],
    user: Annotated[str, Form(max_length=64)],
) -> Response:
    owner = get_user(session, user)
    if owner is None:
        return _page(request, session, error=f"no user named {user}", status_code=400)
    try:
        row, secret = create_token(session, name, owner)
    except UserError as exc:
        return _page(request, session, error=str(exc), status_code=400)
    audit(session, request, AuditAction.TOKEN_CREATED, name, detail=f"for {owner.name}")
    # Shown once, on this response only (not a redirect: it must not land in a URL).
    response = _page(request, session, new_token=(row.name, secret))
    response.headers["Cache-Control"] = "no-store"
    return response


@pages.post("/admin/tokens/{name}/revoke", summary="Revoke an API token", dependencies=[CsrfDep])
def remove_token(name: str, request: Request, session: SessionDep, _: AdminDep) -> Response:
    try:
        revoke_token(session, name)
    except UserError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such token") from None
    audit(session, request, AuditAction.TOKEN_REVOKED, name)
    return _done("token_revoked")
