"""The HTML dashboard: the job list, one job's detail, the two buttons and the previews.

Server-rendered, works without JavaScript; pages of unfinished jobs reload themselves every few
seconds with a meta refresh. Buttons are forms that POST and redirect (303) back.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from service.ingest import StoreOutcome
from service.web.auth import CsrfDep, OperatorDep, ViewerDep, audit
from service.web.caution import job_caution
from service.web.deps import DataDirDep, SessionDep
from service.web.jobs import (
    count_by_state,
    deliveries,
    do_process_now,
    do_retry,
    get_job,
    list_jobs,
)
from service.web.not_processed import list_not_processed
from service.web.overview import build_overview
from service.web.preview_source import make_preview, renderable_previews
from service.web.routes.instances import check_upload_csrf, read_upload, store_upload
from service.web.routes.workspace import CSP_WORKSPACE
from service.web.schemas import is_preview_name, job_detail, job_public
from storage.audit import AuditAction
from storage.models import Job, JobState, utcnow

router = APIRouter(tags=["dashboard"], include_in_schema=False)

REFRESH_SECONDS = 5
PAGE_SIZE = 50

#: Model status of a validated model; anything else gets the warning banner.
FINAL_MODEL_STATUS = "final"

#: Messages after an action; the redirect carries only the key, never free text.
NOTICES = {
    "queued": ("ok", "Job queued: a worker will pick it up shortly."),
    "requeued": ("ok", "Job put back in the queue."),
    "exports_retried": ("ok", "Failed deliveries reset: the exporter will send them again now."),
    "sent_now": ("ok", "Pending deliveries will be tried now."),
    "refused": ("warn", "Nothing to do: the job's state changed or does not allow that action."),
    "missing": ("warn", "That job no longer exists."),
    "user_created": ("ok", "User created."),
    "user_disabled": ("ok", "User disabled: their sessions ended and their tokens stopped."),
    "token_revoked": ("ok", "Token revoked."),
}

_NEXT_RE = re.compile(r"^/(jobs/[0-9]+)?(\?[A-Za-z0-9=&_.-]*)?$")


def _back(next_url: str | None, notice: str) -> RedirectResponse:
    """303 to the page the button was on (only our own pages), with the notice key."""
    target = next_url if next_url and _NEXT_RE.fullmatch(next_url) else "/"
    path, _, query = target.partition("?")
    params = [p for p in query.split("&") if p and not p.startswith("notice=")]
    params.append(urlencode({"notice": notice}))
    return RedirectResponse(f"{path}?{'&'.join(params)}", status_code=status.HTTP_303_SEE_OTHER)


def _notice(key: str | None) -> tuple[str, str] | None:
    return NOTICES.get(key) if key else None


@router.get("/", summary="Job list")
def index(
    request: Request,
    session: SessionDep,
    _: ViewerDep,
    state: Annotated[JobState | None, Query()] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    notice: str | None = None,
    refresh: Annotated[
        int | None, Query(ge=0, le=3600, description="Reload every N s; 0 stops it")
    ] = None,
) -> Response:
    """The job list; it polls itself (meta refresh, no script: the CSP allows none) every
    REFRESH_SECONDS unless `?refresh=` says otherwise (`refresh=0`: off)."""
    jobs, count = list_jobs(session, state, PAGE_SIZE, offset)
    now = utcnow()
    every = REFRESH_SECONDS if refresh is None else refresh
    kept = (("state", state), ("offset", offset), ("refresh", refresh))
    refresh_query = urlencode({k: v for k, v in kept if v is not None and (v or k == "refresh")})
    context: dict[str, Any] = {
        "jobs": [job_public(j, now) for j in jobs],
        "deliveries": deliveries(session, [j.id for j in jobs]),
        "count": count,
        "counts": count_by_state(session),
        "state": state.value if state else None,
        "states": [s.value for s in JobState],
        "offset": offset,
        "page_size": PAGE_SIZE,
        "notice": _notice(notice),
        "refresh": every or None,
        "refresh_url": "/" + (f"?{refresh_query}" if refresh_query else ""),
        "here": "/" + (f"?{refresh_query}" if refresh_query else ""),
        "live_off_url": "/?"
        + urlencode({k: v for k, v in (*kept[:2], ("refresh", 0)) if v or k == "refresh"}),
        "final_status": FINAL_MODEL_STATUS,
        "now": now,
    }
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, "index.html", context
    )


@router.get("/overview", summary="Throughput, stage latency, class mix and failures")
def overview_page(
    request: Request,
    session: SessionDep,
    _: ViewerDep,
) -> Response:
    """Plots for IT and the lead radiologist, drawn on the server as SVG (no script)."""
    now = utcnow()
    context: dict[str, Any] = {"overview": build_overview(session, now), "now": now}
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, "overview.html", context
    )


@router.get("/not-processed", summary="Instances stored but not analysed")
def not_processed_page(
    request: Request,
    session: SessionDep,
    _: ViewerDep,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    listing = list_not_processed(session, PAGE_SIZE, offset)
    context: dict[str, Any] = {
        "rows": listing.data,
        "count": listing.count,
        "offset": offset,
        "page_size": PAGE_SIZE,
    }
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, "not_processed.html", context
    )


@router.get("/jobs/{job_id}", summary="Job detail")
def job_page(
    request: Request,
    job_id: int,
    session: SessionDep,
    data_dir: DataDirDep,
    _: ViewerDep,
    notice: str | None = None,
) -> Response:
    now = utcnow()
    job = job_detail(get_job(session, job_id), now)
    audit(session, request, AuditAction.VIEW_JOB, f"job:{job_id}")
    # Previews are made on demand; one that cannot be (no source on disk) shows a placeholder.
    row = session.get(Job, job.id)
    available = renderable_previews(session, data_dir, row) if row is not None else set()
    for result in job.results:
        if result.mask_png not in available:
            result.mask_url = None
        if result.cam_png not in available:
            result.cam_url = None
    finished = job.state in (JobState.DONE, JobState.FAILED)
    context: dict[str, Any] = {
        "job": job,
        "notice": _notice(notice),
        "refresh": None if finished else REFRESH_SECONDS,
        "refresh_url": f"/jobs/{job.id}",
        "here": f"/jobs/{job.id}",
        "final_status": FINAL_MODEL_STATUS,
        "device_caution": job_caution(session, job.id),
        "classes": sorted((job.probabilities or {}).items(), key=lambda kv: -kv[1]),
        "now": now,
    }
    response: Response = request.app.state.templates.TemplateResponse(request, "job.html", context)
    # The workspace (viewer and mask editor) runs the site's own script, nothing inline.
    response.headers["Content-Security-Policy"] = CSP_WORKSPACE
    return response


@router.post("/jobs/{job_id}/process-now", summary="Button: process now", dependencies=[CsrfDep])
def process_now_form(
    job_id: int,
    request: Request,
    session: SessionDep,
    _: OperatorDep,
    next: Annotated[str | None, Form()] = None,
) -> RedirectResponse:
    try:
        result = do_process_now(session, job_id)
    except HTTPException as exc:
        return _back(next, "missing" if exc.status_code == 404 else "refused")
    audit(session, request, AuditAction.PROCESS_NOW, f"job:{job_id}")
    return _back(next, result.action)


@router.post("/jobs/{job_id}/retry", summary="Button: retry", dependencies=[CsrfDep])
def retry_form(
    job_id: int,
    request: Request,
    session: SessionDep,
    _: OperatorDep,
    next: Annotated[str | None, Form()] = None,
) -> RedirectResponse:
    try:
        result = do_retry(session, job_id)
    except HTTPException as exc:
        return _back(next, "missing" if exc.status_code == 404 else "refused")
    audit(session, request, AuditAction.RETRY, f"job:{job_id}", detail=result.action)
    return _back(next, result.action)


@router.get("/upload", summary="Upload form")
def upload_form(request: Request, _: OperatorDep) -> Response:
    return _upload_page(request, None)


@router.post("/upload", summary="Upload a DICOM file from the form")
async def upload_from_form(request: Request, principal: OperatorDep) -> Response:
    """The dashboard's upload: same checks and storage path as POST /api/instances."""
    try:
        data, fields = await read_upload(request)
        check_upload_csrf(request, principal, fields)
    except HTTPException as exc:
        if exc.status_code == status.HTTP_403_FORBIDDEN:
            raise
        return _upload_page(request, None, error=str(exc.detail), status_code=exc.status_code)
    outcome = await run_in_threadpool(store_upload, request, data)
    code = (
        (status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK)
        if outcome.ok
        else status.HTTP_400_BAD_REQUEST
    )
    if outcome.status.name == "OUT_OF_RESOURCES":
        code = status.HTTP_507_INSUFFICIENT_STORAGE
    elif outcome.too_large:  # a deflate bomb: as POST /api/instances answers it
        code = status.HTTP_413_CONTENT_TOO_LARGE
    return _upload_page(request, outcome, status_code=code)


def _upload_page(
    request: Request,
    outcome: StoreOutcome | None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    context: dict[str, Any] = {
        "outcome": outcome,
        "error": error,
        "max_upload_mb": request.app.state.settings.web.max_upload_mb,
        "refresh": None,
        "now": utcnow(),
    }
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, "upload.html", context, status_code=status_code
    )


@router.get("/jobs/{job_id}/preview/{name}", summary="Preview PNG")
def preview(
    job_id: int,
    name: str,
    request: Request,
    session: SessionDep,
    data_dir: DataDirDep,
    _: ViewerDep,
) -> FileResponse:
    """`<data_dir>/outputs/<job>/preview/<name>`, made on first request; `name` must be a
    preview file name of the job's results, so nothing else on disk can be reached."""
    if not is_preview_name(name):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "not a preview name")
    # Rendered on first request from the stored source and SEG, then cached.
    path = make_preview(session, data_dir, int(job_id), name, request.app.state.runtime)
    if path is None or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "preview not found")
    audit(session, request, AuditAction.VIEW_IMAGE, f"job:{job_id}", detail=name)
    return FileResponse(
        path, media_type="image/png", headers={"Cache-Control": "private, max-age=300"}
    )
