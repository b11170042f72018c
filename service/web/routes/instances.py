"""Upload API and form: a DICOM Part 10 file stored through the listener's own durable path.

`POST /api/instances` takes the file as the raw body (`Content-Type: application/dicom`) or as
the `file` field of a multipart form; `/upload` is the dashboard form. Both go through
service.ingest.store_encoded, so an upload is fsynced and committed before 201, and a re-sent
instance adds no row and no job (200). Size is capped by web.max_upload_mb: first by
Content-Length, then while the body streams in.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import Message

from service.ingest import StoreContext, StoreOutcome, StoreStatus, store_encoded
from service.logs import uid_hash
from service.web.auth import CSRF_FIELD, CSRF_HEADER, OperatorDep, Principal, ViewerDep, audit
from service.web.deps import SessionDep
from service.web.not_processed import SkippedInstancesPublic, list_not_processed
from service.web.schemas import ErrorPublic
from storage.audit import AuditAction
from storage.db import session_scope
from storage.users import same_secret

router = APIRouter(tags=["instances"])

_MIB = 1024 * 1024
#: Room for the multipart boundaries and part headers around the file itself.
_MULTIPART_SLACK = 64 * 1024
DICOM_TYPES = ("application/dicom", "application/octet-stream")


class UploadPublic(BaseModel):
    """The stored instance."""

    sop_instance_uid: str
    created: bool = Field(description="False: we already had it (re-sent), nothing was added")
    not_processed_reason: str | None = Field(
        None, description="Stored but not processed, and why (e.g. not ultrasound, our own SEG)"
    )


class BodyTooLarge(Exception):
    """The body went past the upload limit while streaming."""


def _limit_bytes(request: Request) -> int:
    return int(request.app.state.settings.web.max_upload_mb) * _MIB


def _limited(request: Request, limit: int) -> Request:
    """A copy of `request` whose body raises BodyTooLarge after `limit` bytes."""
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge
        return message

    return Request(request.scope, receive)


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"file larger than {limit // _MIB} MiB"
    )


async def read_upload(request: Request) -> tuple[bytes, dict[str, Any]]:
    """The uploaded file's bytes and the other form fields (empty for a raw body).

    413 past web.max_upload_mb, 415 for another content type, 400 without a file."""
    limit = _limit_bytes(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = content_type == "multipart/form-data"
    if not multipart and content_type not in DICOM_TYPES:
        raise HTTPException(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "send application/dicom or a multipart form with a 'file' field",
        )
    wire_limit = limit + (_MULTIPART_SLACK if multipart else 0)
    try:
        declared = int(request.headers.get("content-length", "0"))
    except ValueError:
        raise HTTPException(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
    if declared > wire_limit:
        raise _too_large(limit)
    limited = _limited(request, wire_limit)
    try:
        if not multipart:
            return await limited.body(), {}
        form = await limited.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(HTTPStatus.BAD_REQUEST, "no 'file' field in the form")
        data = await upload.read(limit + 1)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        await form.close()
    except BodyTooLarge:
        raise _too_large(limit) from None
    if len(data) > limit:
        raise _too_large(limit)
    return data, fields


def store_upload(request: Request, data: bytes) -> StoreOutcome:
    """Store through the listener's path (calling AE title None) and audit the outcome."""
    state = request.app.state
    settings = state.settings
    inflated = settings.dicom.max_inflated_mb * _MIB
    ctx = StoreContext(state.data_dir, state.engine, inflated, settings.routing.rules())
    outcome = store_encoded(ctx, data, calling_ae_title=None)
    target = f"sop:{uid_hash(outcome.sop_instance_uid)}" if outcome.sop_instance_uid else None
    with session_scope(state.engine) as session:
        if outcome.ok:
            audit(
                session,
                request,
                AuditAction.UPLOAD,
                target,
                detail="new" if outcome.created else "re-sent",
            )
        else:
            audit(session, request, AuditAction.UPLOAD_REFUSED, target, detail=outcome.status.name)
    return outcome


_STATUS_HTTP = {
    StoreStatus.OUT_OF_RESOURCES: (HTTPStatus.INSUFFICIENT_STORAGE, "out_of_resources"),
    StoreStatus.CANNOT_UNDERSTAND: (HTTPStatus.BAD_REQUEST, "cannot_understand"),
    StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS: (HTTPStatus.BAD_REQUEST, "mismatch"),
}


def outcome_response(outcome: StoreOutcome) -> JSONResponse:
    """201 new, 200 re-sent, 507 out of resources (disk floor, database), 400 unreadable, 413
    a deflated data set inflating beyond dicom.max_inflated_mb."""
    if outcome.ok:
        assert outcome.sop_instance_uid is not None
        body = UploadPublic(
            sop_instance_uid=outcome.sop_instance_uid,
            created=outcome.created,
            not_processed_reason=outcome.reason,
        )
        return JSONResponse(
            body.model_dump(), status_code=HTTPStatus.CREATED if outcome.created else HTTPStatus.OK
        )
    status, code = _STATUS_HTTP.get(outcome.status, (HTTPStatus.BAD_REQUEST, "cannot_understand"))
    if outcome.too_large:  # a deflate bomb: too large once inflated, not unreadable
        status, code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large"
    return JSONResponse(
        {"detail": outcome.reason or status.phrase, "code": code}, status_code=status
    )


@router.post(
    "/api/instances",
    response_model=UploadPublic,
    status_code=HTTPStatus.CREATED,
    summary="Upload one DICOM file",
    responses={
        200: {"model": UploadPublic, "description": "Already stored (re-sent): nothing added"},
        400: {"model": ErrorPublic, "description": "Not a readable DICOM Part 10 file"},
        413: {
            "model": ErrorPublic,
            "description": "Over web.max_upload_mb, or inflates beyond dicom.max_inflated_mb",
        },
        415: {"model": ErrorPublic, "description": "Neither application/dicom nor multipart"},
        507: {"model": ErrorPublic, "description": "Disk below its floor or database down"},
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "application/dicom": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            },
            "required": True,
        }
    },
)
async def upload_instance(request: Request, principal: OperatorDep) -> Response:
    """Store a DICOM Part 10 file exactly as the DICOM listener would (operator role).

    A new processable instance joins its study's waiting job like one sent by the PACS."""
    data, fields = await read_upload(request)
    check_upload_csrf(request, principal, fields)
    outcome = await run_in_threadpool(store_upload, request, data)
    return outcome_response(outcome)


def check_upload_csrf(request: Request, principal: Principal, fields: dict[str, Any]) -> None:
    """An upload sent with the session cookie must carry the session's CSRF token, as a form
    field or header (checked here, after the size-limited parse, not by a dependency that
    would parse the body first)."""
    sent = fields.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if principal.via == "session" and not same_secret(sent, principal.csrf_token):
        raise HTTPException(HTTPStatus.FORBIDDEN, "missing or wrong CSRF token")


@router.get(
    "/api/instances",
    response_model=SkippedInstancesPublic,
    summary="Instances stored but not analysed, with the reason",
)
def read_not_processed(
    session: SessionDep,
    _: ViewerDep,
    processed: Annotated[
        bool, Query(description="Only false is supported: instances we store but do not analyse")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> SkippedInstancesPublic:
    """Other modalities, our own SEG/SR coming back, objects without pixels: newest first."""
    if processed:
        raise HTTPException(400, "only processed=false is supported; processed images are in jobs")
    return list_not_processed(session, limit, offset)
