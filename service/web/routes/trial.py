"""Try it without a PACS (issue 29 item 4): upload one PNG, JPEG or DICOM file, see the result
in the job page's viewer, marked "Not sent to any PACS".

`/try` is the page (drag and drop or a file picker); `POST /api/try` runs the bundled model on
the file in process (service/trial.py: no job, no outbox, nothing sent) and answers the trial's
id; `/try/{id}` shows it with the workspace viewer, fed by `GET /api/try/{id}/workspace` (the
same WorkspacePublic as a job's, `trial` true, nothing editable) and the frame and Grad-CAM
PNGs below it. Radiologist role or above (it runs the model); a trial is readable only by a
role at least that of whoever uploaded it, and only for 24 h.
"""

from __future__ import annotations

import hashlib
import threading
from http import HTTPStatus
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from dicom_io.routing import RoutingRules
from inference.study import CLASSES
from service.errors import JobError
from service.trial import (
    CLASS_RULE,
    TRIAL_TTL,
    Trial,
    TrialError,
    TrialImage,
    cam_png,
    create_trial,
    frame_png,
    load_trial,
)
from service.web.auth import Principal, RadiologistDep, audit
from service.web.routes.instances import check_upload_csrf, read_upload
from service.web.routes.pages import FINAL_MODEL_STATUS
from service.web.routes.workspace import CSP_WORKSPACE  # the same viewer script
from service.web.schemas import ErrorPublic
from service.web.workspace import format_local
from service.web.workspace_schemas import (
    FrameResultPublic,
    StudyInfoPublic,
    WorkspaceImagePublic,
    WorkspacePublic,
)
from storage.audit import AuditAction
from storage.db import session_scope
from storage.models import Role, utcnow

router = APIRouter(tags=["trial"])

_MIB = 1024 * 1024
#: Raw bodies accepted besides a multipart form with a 'file' field.
_PICTURE_TYPES = ("image/png", "image/jpeg")
_DICOM_TYPES = ("application/dicom", "application/octet-stream")
_NOT_FOUND = "trial not found or expired (a trial is kept 24 h)"
_PNG_HEADERS = {"Cache-Control": "private, max-age=300"}
_MODEL_LOCK = threading.Lock()


class TrialUploadPublic(BaseModel):
    """The answer to an upload: where to see it, or why it was not analysed."""

    trial_id: str | None = Field(description="None when the file was not analysed")
    analysed: bool
    not_analysed_reason: str | None = Field(
        None, description="Why a DICOM file was left alone (routing: not breast, ...)"
    )
    predicted_class: str | None = None
    url: str | None = Field(None, description="The page showing the result")
    workspace_url: str | None = None
    expires: str | None = Field(None, description="ISO 8601 UTC; the trial is deleted then")


# ---- the model -----------------------------------------------------------------------------


class _LockedModel:
    """The shared model, one predict at a time (Grad-CAM hooks are not thread-safe)."""

    def __init__(self, model: Any, lock: Any) -> None:
        self._model, self._lock = model, lock
        self.version: str = model.version
        self.status: str = model.status
        self.meta: dict[str, Any] = getattr(model, "meta", None) or {}

    def predict(self, images: Any, with_cam: bool = False) -> list[Any]:
        if self._lock is None:
            return self._model.predict(images, with_cam=with_cam)  # type: ignore[no-any-return]
        with self._lock:
            return self._model.predict(images, with_cam=with_cam)  # type: ignore[no-any-return]


def _provider(request: Request) -> Any:
    """The service's model provider (`wecare serve`), or one of the web app's own, built from
    the worker settings on first use (`wecare web` on its own has no worker)."""
    runtime = request.app.state.runtime
    models = getattr(runtime, "models", None)
    if models is not None and hasattr(models, "get"):
        return models
    with _MODEL_LOCK:
        provider = getattr(request.app.state, "trial_models", None)
        if provider is None:
            from service.worker import ModelProvider  # the model stack only when a trial runs

            worker = request.app.state.settings.worker
            provider = ModelProvider(
                worker.weights,
                worker.device,
                worker.torch_threads,
                precision=worker.precision,
                compile_mode="off",  # a trial is one image: no 30-60 s compile on first use
                scope_check=worker.scope_check,
            )
            request.app.state.trial_models = provider
    return provider


def trial_model(request: Request) -> _LockedModel:
    """The bundled model behind its predict lock; 503 when it cannot be loaded."""
    provider = _provider(request)
    try:
        model = provider.get()
    except JobError:
        raise HTTPException(
            HTTPStatus.SERVICE_UNAVAILABLE, "the model is not available: see /health"
        ) from None
    return _LockedModel(model, getattr(provider, "predict_lock", None))


# ---- upload --------------------------------------------------------------------------------


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"file larger than {limit // _MIB} MiB"
    )


async def _read(request: Request) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and form fields; a raw PNG/JPEG body is read here with the same limit
    (web.max_upload_mb, by Content-Length first, then as it streams), the rest by the
    upload API's own reader."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data" or content_type in _DICOM_TYPES:
        return await read_upload(request)
    if content_type not in _PICTURE_TYPES:
        raise HTTPException(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "send a multipart form with a 'file' field, or the file as the body with "
            "Content-Type image/png, image/jpeg or application/dicom",
        )
    limit = int(request.app.state.settings.web.max_upload_mb) * _MIB
    try:
        declared = int(request.headers.get("content-length", "0"))
    except ValueError:
        raise HTTPException(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
    if declared > limit:
        raise _too_large(limit)
    chunks, received = [], 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks), {}


def _target(trial_id: str | None) -> str:
    """The audit target: a hash of the id (the id itself opens the trial)."""
    if trial_id is None:
        return "trial"
    return "trial:" + hashlib.sha256(trial_id.encode()).hexdigest()[:12]


def _audit(request: Request, action: AuditAction, target: str, detail: str) -> None:
    with session_scope(request.app.state.engine) as session:
        audit(session, request, action, target, detail=detail)


def _audit_outcome(request: Request, trial: Trial) -> None:
    """An upload event: the kind and outcome, never the file's name (it may name a patient)."""
    if trial.analysed:
        _audit(request, AuditAction.UPLOAD, _target(trial.trial_id), f"trial {trial.kind}")
    else:
        code = (trial.not_analysed_reason or "").split(":")[0]
        _audit(request, AuditAction.UPLOAD, "trial", f"trial {trial.kind}: not analysed {code}")


def _run(request: Request, data: bytes, principal: Principal) -> Trial:
    state = request.app.state
    settings = state.settings
    rules: RoutingRules = settings.routing.rules()
    return create_trial(
        state.data_dir,
        data,
        trial_model(request),
        owner=principal.name,
        owner_role=principal.role.value,
        rules=rules,
        max_inflated_bytes=settings.dicom.max_inflated_mb * _MIB,
    )


@router.post(
    "/api/try",
    response_model=TrialUploadPublic,
    status_code=HTTPStatus.CREATED,
    summary="Try the model on one PNG, JPEG or DICOM file (not sent to any PACS)",
    responses={
        200: {"model": TrialUploadPublic, "description": "A DICOM file left alone, and why"},
        403: {"model": ErrorPublic, "description": "Below the radiologist role, or no CSRF"},
        413: {"model": ErrorPublic, "description": "Over web.max_upload_mb, or a bomb"},
        415: {"model": ErrorPublic, "description": "Neither PNG, JPEG nor DICOM"},
        422: {"model": ErrorPublic, "description": "Of that kind, but cannot be decoded"},
        503: {"model": ErrorPublic, "description": "The model is not available"},
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                "application/dicom": {"schema": {"type": "string", "format": "binary"}},
            },
            "required": True,
        }
    },
)
async def post_trial(request: Request, principal: RadiologistDep) -> Response:
    """Analyse the file now, in this process, with the bundled model; keep the result 24 h.

    Nothing is stored as an instance, no job is made, nothing is sent. A DICOM file meets the
    same checks as one from the PACS: a non-breast image is not analysed (200, with the
    reason). A PNG or JPEG has no calibration: sizes in pixels only."""
    try:
        data, fields = await _read(request)
    except HTTPException as exc:
        if exc.status_code in (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, 415):
            await run_in_threadpool(
                _audit, request, AuditAction.UPLOAD_REFUSED, "trial", f"trial: {exc.status_code}"
            )
        raise
    check_upload_csrf(request, principal, fields)
    try:
        trial = await run_in_threadpool(_run, request, data, principal)
    except TrialError as exc:
        detail = f"trial: {int(exc.status)}"
        await run_in_threadpool(_audit, request, AuditAction.UPLOAD_REFUSED, "trial", detail)
        return JSONResponse(
            {"detail": exc.message, "code": _CODES.get(int(exc.status), "trial_refused")},
            status_code=exc.status,
        )
    await run_in_threadpool(_audit_outcome, request, trial)
    if not trial.analysed:
        body = TrialUploadPublic(
            trial_id=None, analysed=False, not_analysed_reason=trial.not_analysed_reason
        )
        return JSONResponse(body.model_dump(), status_code=HTTPStatus.OK)
    assert trial.trial_id is not None
    body = TrialUploadPublic(
        trial_id=trial.trial_id,
        analysed=True,
        predicted_class=trial.predicted_class,
        url=f"/try/{trial.trial_id}",
        workspace_url=f"/api/try/{trial.trial_id}/workspace",
        expires=trial.expires.isoformat(),
    )
    return JSONResponse(body.model_dump(), status_code=HTTPStatus.CREATED)


_CODES = {413: "too_large", 415: "unsupported_media_type", 422: "unprocessable", 404: "not_found"}


# ---- reading a trial -------------------------------------------------------------------------


def _trial_for(request: Request, trial_id: str, principal: Principal) -> Trial:
    """The trial, if this principal may read it: 404 otherwise, whether it exists or not."""
    trial = load_trial(request.app.state.data_dir, trial_id)
    if trial is None or not principal.can(Role(trial.owner_role)):
        raise HTTPException(HTTPStatus.NOT_FOUND, _NOT_FOUND)
    return trial


def _class_rule(trial: Trial) -> str:
    """The study rule in words, with the frame that decided, as the job's workspace says it
    (service.web.workspace.class_rule), and when the class had to follow the outlines."""
    image = trial.image
    probabilities = trial.probabilities
    if image is None or probabilities is None or trial.predicted_class is None:
        return CLASS_RULE
    p = float(probabilities.get("malignant", 0.0))
    deciding = next(
        (
            r
            for r in image.results
            if r.probabilities
            and all(abs(r.probabilities.get(c, -1.0) - v) < 5e-4 for c, v in probabilities.items())
        ),
        None,
    )
    where = f" (frame {deciding.frame})" if deciding is not None and image.frames > 1 else ""
    counted = f"{image.frames} frame{'s were' if image.frames != 1 else ' was'} analysed"
    top = max(probabilities, key=lambda name: float(probabilities[name]))
    if top == trial.predicted_class:
        called = f"is classed {trial.predicted_class}."
    else:  # the class was made to agree with the outlines (inference.study.agree_with_masks)
        called = (
            f"was most probably {top} ({100 * float(probabilities[top]):.1f} %), but the class "
            f"given is {trial.predicted_class}: the class follows the lesion outlines (an image "
            "with an outline is benign or malignant, one without is normal)."
        )
    return (
        f"{CLASS_RULE} Here {counted}; the deciding frame{where} has a {100 * p:.1f} % "
        f"probability of malignancy and {called}"
    )


def workspace(trial: Trial, time_zone: str) -> WorkspacePublic:
    """The trial as the viewer's WorkspacePublic: no job, nothing editable, nothing sent."""
    assert trial.trial_id is not None and trial.image is not None
    zone = ZoneInfo(time_zone)
    base = f"/api/try/{trial.trial_id}"
    image = trial.image
    study = trial.study
    return WorkspacePublic(
        job_id=None,
        trial=True,
        study=StudyInfoPublic(
            patient_id=study.patient_id,
            study_date=study.study_date,
            body_part=study.body_part,
            manufacturer=study.manufacturer,
            model_name=study.model_name,
            laterality=study.laterality,
            study_instance_uid=study.study_instance_uid,
        ),
        predicted_class=trial.predicted_class,
        probabilities=trial.probabilities,
        class_rule=_class_rule(trial),
        times={
            "uploaded": format_local(trial.created, zone) or "",
            "expires": format_local(trial.expires, zone) or "",
        },
        time_zone=time_zone,
        caution=trial.caution,
        can_edit=False,
        csrf_token=None,
        review_url=None,
        images=[
            WorkspaceImagePublic(
                index=1,
                sop_instance_uid=image.sop_instance_uid,
                rows=image.rows,
                columns=image.columns,
                frames=image.frames,
                pixel_spacing_mm=image.pixel_spacing_mm,
                lesion_frames=image.lesion_frames,
                frame_url=f"{base}/images/1/frames/{{frame}}.png",
                cam_url=f"{base}/images/1/cam/{{frame}}.png",
                results=[
                    FrameResultPublic(
                        frame=r.frame,
                        predicted_class=r.predicted_class,
                        probabilities=r.probabilities,
                        long_axis_mm=r.long_axis_mm,
                        short_axis_mm=r.short_axis_mm,
                        descriptors=r.descriptors,
                        lesions=r.lesions,
                    )
                    for r in image.results
                ],
                frame_probabilities=_frame_probabilities(image),
            )
        ],
    )


def _frame_probabilities(image: TrialImage) -> list[list[float]] | None:
    """Every frame's [normal, benign, malignant], for the viewer's class strip; None when a
    frame has none (outside the model's scope), as a job's workspace does."""
    scores = [r.probabilities for r in image.results]
    if len(scores) != image.frames or any(p is None for p in scores):
        return None
    return [[float(p.get(name, 0.0)) for name in CLASSES] for p in scores if p is not None]


@router.get(
    "/api/try/{trial_id}/workspace",
    response_model=WorkspacePublic,
    responses={404: {"model": ErrorPublic, "description": "No such trial, or expired"}},
    summary="One trial upload as the workspace viewer reads it",
)
def read_trial_workspace(
    trial_id: str, request: Request, principal: RadiologistDep
) -> WorkspacePublic:
    """The same shape as a job's workspace, with `trial` true, no job, nothing to edit."""
    trial = _trial_for(request, trial_id, principal)
    with session_scope(request.app.state.engine) as session:
        audit(session, request, AuditAction.VIEW_JOB, _target(trial_id), detail="trial")
    return workspace(trial, request.app.state.settings.web.time_zone)


def _png(request: Request, trial_id: str, image: int, principal: Principal) -> Trial:
    if image != 1:
        raise HTTPException(HTTPStatus.NOT_FOUND, "a trial has one image")
    return _trial_for(request, trial_id, principal)


def _serve(make: Any, *args: Any) -> FileResponse:
    try:
        path = make(*args)
    except TrialError as exc:
        raise HTTPException(exc.status, exc.message) from None
    return FileResponse(path, media_type="image/png", headers=_PNG_HEADERS)


@router.get(
    "/api/try/{trial_id}/images/{image}/frames/{frame}.png",
    summary="One frame of a trial upload, full resolution",
    response_class=FileResponse,
)
def read_trial_frame(
    trial_id: str, image: int, frame: int, request: Request, principal: RadiologistDep
) -> FileResponse:
    """8-bit grey at full resolution: the picture itself, or the DICOM frame as the pipeline
    decodes it (a clip's frames met on the way are cached)."""
    trial = _png(request, trial_id, image, principal)
    response = _serve(frame_png, request.app.state.data_dir, trial, frame)
    _audit(request, AuditAction.VIEW_IMAGE, _target(trial_id), f"trial frame {frame}")
    return response


@router.get(
    "/api/try/{trial_id}/images/{image}/cam/{frame}.png",
    summary="Grad-CAM of one frame of a trial upload, over the frame",
    response_class=FileResponse,
)
def read_trial_cam(
    trial_id: str, image: int, frame: int, request: Request, principal: RadiologistDep
) -> FileResponse:
    """Made on first request by the same model (one more pass, with gradients), then cached."""
    trial = _png(request, trial_id, image, principal)
    response = _serve(cam_png, request.app.state.data_dir, trial, frame, trial_model(request))
    _audit(request, AuditAction.VIEW_IMAGE, _target(trial_id), f"trial frame {frame} cam")
    return response


# ---- pages ---------------------------------------------------------------------------------


def _page(
    request: Request,
    trial: Trial | None,
    *,
    error: str | None = None,
    not_analysed: str | None = None,
    status_code: int = HTTPStatus.OK,
) -> Response:
    settings = request.app.state.settings
    zone = ZoneInfo(settings.web.time_zone)
    context: dict[str, Any] = {
        "trial": trial,
        "workspace_url": f"/api/try/{trial.trial_id}/workspace" if trial else None,
        "uploaded": format_local(trial.created, zone) if trial else None,
        "expires": format_local(trial.expires, zone) if trial else None,
        "error": error,
        "not_analysed": not_analysed,
        "max_upload_mb": settings.web.max_upload_mb,
        "ttl_hours": int(TRIAL_TTL.total_seconds() // 3600),
        "final_status": FINAL_MODEL_STATUS,
        "refresh": None,
        "now": utcnow(),
    }
    response = request.app.state.templates.TemplateResponse(
        request, "try.html", context, status_code=status_code
    )
    response.headers["Content-Security-Policy"] = CSP_WORKSPACE
    return response  # type: ignore[no-any-return]


@router.get("/try", summary="Try the model without a PACS", include_in_schema=False)
def try_page(request: Request, _: RadiologistDep) -> Response:
    return _page(request, None)


@router.post("/try", summary="The /try page's form", include_in_schema=False)
async def try_form(request: Request, principal: RadiologistDep) -> Response:
    """The page's upload (drop zone or file picker): the trial's page on success (303), the
    form again with the reason otherwise."""
    try:
        data, fields = await _read(request)
        check_upload_csrf(request, principal, fields)
    except HTTPException as exc:
        if exc.status_code == HTTPStatus.FORBIDDEN:
            raise
        return _page(request, None, error=str(exc.detail), status_code=exc.status_code)
    try:
        trial = await run_in_threadpool(_run, request, data, principal)
    except TrialError as exc:
        await run_in_threadpool(
            _audit, request, AuditAction.UPLOAD_REFUSED, "trial", f"trial: {int(exc.status)}"
        )
        return _page(request, None, error=exc.message, status_code=exc.status)
    await run_in_threadpool(_audit_outcome, request, trial)
    if not trial.analysed:
        return _page(request, None, not_analysed=trial.not_analysed_reason)
    return RedirectResponse(f"/try/{trial.trial_id}", status_code=HTTPStatus.SEE_OTHER)


@router.get("/try/{trial_id}", summary="A trial upload's result", include_in_schema=False)
def trial_page(trial_id: str, request: Request, principal: RadiologistDep) -> Response:
    return _page(request, _trial_for(request, trial_id, principal))
