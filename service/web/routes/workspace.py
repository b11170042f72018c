"""The radiologist workspace's read endpoints: the workspace JSON and each frame as PNG.

`/jobs/{id}` (routes.pages) is the page; its script (static/workspace/) reads these. Frames
are addressed by the source image's SOP Instance UID, as the review endpoint is: a UID that
is not one of this job's images is a 404, whatever study it belongs to.
"""

from __future__ import annotations

import re
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from service.web.auth import ViewerDep, audit
from service.web.deps import DataDirDep, SessionDep
from service.web.jobs import get_job
from service.web.workspace import JobImage, build_workspace, cam_png, find_image, frame_png
from service.web.workspace_schemas import WorkspacePublic
from storage.audit import AuditAction

router = APIRouter(tags=["jobs"])

#: Scripts from this site only (the workspace's own files), nothing inline, canvas images
#: from this site; the rest as every page (service.web.app.CSP).
CSP_WORKSPACE = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
UidPath = Annotated[str, Path(max_length=64, description="Source image SOP Instance UID")]
FramePath = Annotated[int, Path(ge=1, le=100_000, description="1-based frame number")]
_PNG_HEADERS = {"Cache-Control": "private, max-age=300"}


def _zone(request: Request) -> ZoneInfo:
    return ZoneInfo(request.app.state.settings.web.time_zone)


@router.get(
    "/api/jobs/{job_id}/workspace",
    response_model=WorkspacePublic,
    summary="Radiologist workspace: every image and frame, AI outlines, study rule",
)
def workspace(
    job_id: int,
    request: Request,
    session: SessionDep,
    data_dir: DataDirDep,
    principal: ViewerDep,
) -> WorkspacePublic:
    """What the viewer and mask editor on /jobs/{id} show; `can_edit` for a radiologist (or
    above) on a done job, with the CSRF token the review POST needs (sessions only)."""
    job = get_job(session, job_id)
    runtime = request.app.state.runtime
    result = build_workspace(session, job, principal, _zone(request), runtime, data_dir)
    audit(session, request, AuditAction.VIEW_JOB, f"job:{job_id}", detail="workspace")
    return result


def _image(session: Session, job_id: int, sop_instance_uid: str) -> JobImage:
    if not _UID_RE.fullmatch(sop_instance_uid):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such image in this job")
    job = get_job(session, job_id)
    image = find_image(session, job, sop_instance_uid)
    if image is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such image in this job")
    return image


@router.get(
    "/api/jobs/{job_id}/images/{sop_instance_uid}/frames/{frame}.png",
    summary="One frame of a job's image at full resolution (PNG)",
    response_class=FileResponse,
)
def frame(
    job_id: int,
    sop_instance_uid: UidPath,
    frame: FramePath,
    request: Request,
    session: SessionDep,
    data_dir: DataDirDep,
    _: ViewerDep,
) -> FileResponse:
    """Decoded by dicom_io as the pipeline decodes it, 8-bit grey, cached beside the job's
    previews (`outputs/<job>/preview/full_<image>_<frame>.png`)."""
    image = _image(session, job_id, sop_instance_uid)
    path = frame_png(data_dir, job_id, image, frame)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such frame in this image")
    audit(
        session,
        request,
        AuditAction.VIEW_IMAGE,
        f"job:{job_id}",
        detail=f"image {image.index} frame {frame}",
    )
    return FileResponse(path, media_type="image/png", headers=_PNG_HEADERS)


@router.get(
    "/api/jobs/{job_id}/images/{sop_instance_uid}/cam/{frame}.png",
    summary="Grad-CAM of one frame of a job's image (PNG, made on first request)",
    response_class=FileResponse,
)
def cam(
    job_id: int,
    sop_instance_uid: UidPath,
    frame: FramePath,
    request: Request,
    session: SessionDep,
    data_dir: DataDirDep,
    _: ViewerDep,
) -> FileResponse:
    """The model's Grad-CAM of the predicted class over the frame (service.previews); 404
    when the model is not available to this web process."""
    image = _image(session, job_id, sop_instance_uid)
    runtime = request.app.state.runtime
    path = cam_png(data_dir, job_id, image, frame, runtime)
    if path is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, "no Grad-CAM for this frame (no such frame, or no model)"
        )
    audit(
        session,
        request,
        AuditAction.VIEW_IMAGE,
        f"job:{job_id}",
        detail=f"image {image.index} frame {frame} cam",
    )
    return FileResponse(path, media_type="image/png", headers=_PNG_HEADERS)
