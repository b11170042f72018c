"""The FastAPI app: JSON API under /api, /health, /metrics and the HTML dashboard.

`create_app(settings, runtime)` builds everything; nothing connects at import. Run inside
`wecare serve` it gets the running service (`runtime`, for the model and listener state);
run on its own (`wecare web`) it builds its own engine from the settings.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service.config import Settings
from service.errors import JobError
from service.web.auth import LoginThrottle, authenticate_requests, bootstrap, make_signer
from service.web.deps import RuntimeView
from service.web.routes import admin, auth, docs, health, instances, jobs, metrics, pages, workspace
from service.web.routes import review as review_routes
from service.web.routes import trial as trial_routes
from storage.db import make_engine
from storage.errors import DiskFullError, InvalidUIDError, StorageError
from storage.files import DataDir

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
#: Vendored front-end files (scripts/vendor_frontend.py) and the docs page's start-up script.
STATIC_DIR = Path(__file__).resolve().parent / "static"

DESCRIPTION = """\
WeCare receives breast-ultrasound studies from the PACS over DICOM, segments and classifies
them, and sends a DICOM SEG and a TID 1500 SR back. This API shows every job and lets IT
push a waiting study into the queue or retry a failed one.

Every route except /health (and /metrics when configured) needs a user: scripts send
`Authorization: Bearer <token>` (`wecare token create NAME --user USER`). Roles: viewer reads,
operator also retries, processes now and uploads, admin also reads the audit trail.

Results are decision support for a radiologist, not a diagnosis.
"""

TAGS = [
    {"name": "jobs", "description": "One job per processing of a study: state, results, outputs."},
    {"name": "instances", "description": "Upload a DICOM file, stored like one from the PACS."},
    {"name": "admin", "description": "Audit trail (admin role)."},
    {"name": "health", "description": "Health check and Prometheus metrics for IT monitoring."},
    {"name": "dashboard", "description": "Server-rendered HTML pages."},
]


def create_app(settings: Settings, runtime: RuntimeView | None = None) -> FastAPI:
    """Build the web app.

    Parameters
    ----------
    settings
        Validated settings; the database URL and data directory come from `settings.storage`
        unless `runtime` provides them.
    runtime
        The running service (service.runtime.Runtime), read for the model and DICOM listener
        state on /health. None when the web app runs on its own.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(bootstrap, settings, app.state.engine)
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="WeCare",
        summary="Breast-ultrasound AI for the PACS: jobs, results and deliveries",
        description=DESCRIPTION,
        version="0.1.0",
        openapi_tags=TAGS,
        docs_url=None,  # routes.docs serves /docs and /redoc from vendored files, not a CDN
        redoc_url=None,
    )
    engine = getattr(runtime, "engine", None)
    if engine is None:
        engine = make_engine(settings.storage.resolved_database_url())
    data_dir = getattr(runtime, "data_dir", None)
    if data_dir is None:
        data_dir = DataDir(settings.storage.data_dir, settings.storage.min_free_mb * 1024 * 1024)
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.engine = engine
    app.state.data_dir = data_dir
    app.state.templates = make_templates()
    app.state.metrics_registry = metrics.make_registry(engine)
    app.state.signer = make_signer(settings)
    app.state.login_throttle = LoginThrottle()

    # The last added runs first: the real client address (so every layer, the log-in throttle
    # and the audit see it), headers on every answer, the cross-site check, auth, and
    # innermost the body deadline (its 408 must reach the routes' error handling unwrapped:
    # the middlewares above run the app in task groups that wrap exceptions in groups).
    app.add_middleware(BodyDeadline, seconds=settings.web.request_body_timeout_seconds)
    app.middleware("http")(authenticate_requests)
    app.middleware("http")(_refuse_cross_site_writes)
    app.middleware("http")(_security_headers)
    if settings.web.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.web.trusted_proxies)
    app.include_router(jobs.router)
    app.include_router(instances.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(auth.router)
    app.include_router(pages.router)
    app.include_router(workspace.router)
    app.include_router(trial_routes.router)
    app.include_router(review_routes.router)
    app.include_router(admin.pages)
    app.include_router(docs.router)
    app.mount(docs.STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")
    _add_error_handlers(app)
    return app


def server_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """How `wecare serve` runs the app under uvicorn.

    uvicorn's own proxy-header handling is off: by default it believes X-Forwarded-For from
    127.0.0.1, so any local process (or a proxy we do not know of) could pick the client
    address the log-in throttle and the audit trail see. The app does it itself, only for
    web.trusted_proxies."""
    return uvicorn.Config(
        app,
        host=settings.web.host,
        port=settings.web.port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )


class BodyDeadline:
    """ASGI middleware: a request body must arrive within `seconds` of the request's start.

    uvicorn bounds idle keep-alive connections but not a body trickling in, so a slow upload
    could hold a connection (and its buffers) open for as long as the client likes. Past the
    deadline the reader gets HTTPException 408 (answered through the usual error handlers) and
    the answer carries `Connection: close`, so uvicorn drops the connection."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.seconds
        body_done = timed_out = started = False

        async def receive_in_time() -> Message:
            nonlocal body_done, timed_out
            if body_done or timed_out:  # after the body: waiting for a disconnect is fine
                return await receive()
            try:
                with anyio.fail_after(max(deadline - anyio.current_time(), 0)):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                raise HTTPException(HTTPStatus.REQUEST_TIMEOUT, "request body too slow") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_closing(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if timed_out:
                    headers = [
                        (k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"
                    ]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, receive_in_time, send_closing)
        except Exception:
            if not timed_out:
                raise
            if not started:  # the 408 escaped the handlers (e.g. wrapped): answer it here
                await JSONResponse(
                    {"detail": "request body too slow", "code": "request_timeout"},
                    status_code=HTTPStatus.REQUEST_TIMEOUT,
                )(scope, receive, send_closing)


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: Our pages: no scripts at all, inline styles (templates use style attributes), own images.
CSP = (
    "default-src 'self'; script-src 'none'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
#: Swagger UI (/docs) and ReDoc (/redoc): scripts only from this site (vendored files, the
#: start-up a static file, nothing inline), nothing from any other host; the UIs inject
#: styles and ReDoc runs its search in a blob: worker.
CSP_API_DOCS = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


async def _security_headers(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """CSP, no MIME sniffing, no framing, no referrer leaving the site, on every answer."""
    response = await call_next(request)
    docs = request.url.path in ("/docs", "/redoc")
    response.headers.setdefault("Content-Security-Policy", CSP_API_DOCS if docs else CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    # Pages carry patient names: no shared or disk caches (previews set their own, private).
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _is_cross_site(request: Request) -> bool:
    """True for a browser request sent by another site (CSRF), by Sec-Fetch-Site or Origin.

    Requests without either header (curl, scripts, old browsers) are not cross-site.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:  # modern browsers; survives proxies that rewrite Host
        return fetch_site == "cross-site"
    origin = request.headers.get("origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc != request.headers.get("host")


async def _refuse_cross_site_writes(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Another web page must not press our buttons (on top of the forms' CSRF tokens)."""
    if request.method not in _SAFE_METHODS and _is_cross_site(request):
        return JSONResponse(
            {"detail": "cross-site request refused", "code": "cross_site"},
            status_code=HTTPStatus.FORBIDDEN,
        )
    return await call_next(request)


def _domain_error(exc: Exception) -> tuple[HTTPStatus, str]:
    """HTTP status and stable code of a domain error."""
    if isinstance(exc, JobError):
        return HTTPStatus.CONFLICT, exc.code
    if isinstance(exc, DiskFullError):
        return HTTPStatus.SERVICE_UNAVAILABLE, "disk_full"
    if isinstance(exc, InvalidUIDError):
        return HTTPStatus.BAD_REQUEST, "invalid_uid"
    if isinstance(exc, OperationalError):
        return HTTPStatus.SERVICE_UNAVAILABLE, "database_unavailable"
    return HTTPStatus.INTERNAL_SERVER_ERROR, "storage_error"


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api") and "text/html" in request.headers.get(
        "accept", ""
    )


def _add_error_handlers(app: FastAPI) -> None:
    async def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
        status, code = _domain_error(exc)
        # The message of our own errors carries no PHI (UID hashes at most); a database
        # error's text may hold SQL and parameters, so it is not echoed.
        detail = str(exc) if isinstance(exc, JobError | StorageError) else status.phrase
        return JSONResponse({"detail": detail, "code": code}, status_code=status)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        if _wants_html(request):
            return app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
                request,
                "error.html",
                {"status_code": exc.status_code, "detail": exc.detail, "refresh": None},
                status_code=exc.status_code,
            )
        return JSONResponse(
            {"detail": exc.detail, "code": code},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    for cls in (JobError, StorageError, OperationalError):
        app.add_exception_handler(cls, on_domain_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(HTTPException, on_http_error)


# ---- templates -------------------------------------------------------------------------------


def make_templates() -> Jinja2Templates:
    """Jinja2 templates (autoescape on) with the few formatting filters the pages use."""
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    env = templates.env
    assert env.autoescape, "templates must autoescape"
    env.filters["duration"] = format_duration
    env.filters["utc"] = format_utc
    env.filters["short_uid"] = short_uid
    env.filters["pct"] = format_pct
    env.filters["bar"] = bar_width
    env.filters["person_name"] = person_name
    return templates


def person_name(value: str | None) -> str:
    """DICOM PN 'DOE^JANE^M' → 'DOE, JANE M' (first component group only); '–' when unset."""
    if not value:
        return "–"
    family, _, rest = value.split("=")[0].partition("^")
    given = " ".join(p for p in rest.split("^") if p)
    return f"{family}, {given}" if family and given else (family or given or "–")


def format_duration(seconds: float | None) -> str:
    """'0.4 s', '12 s', '3 min 05 s', '2 h 04 min'; '–' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def format_utc(value: datetime | None) -> str:
    """'2026-11-23 19:15:02 UTC'; '–' when unset."""
    if value is None:
        return "–"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def short_uid(uid: str | None, keep: int = 14) -> str:
    """The end of a UID (where UIDs differ), '…'-prefixed when cut."""
    if not uid:
        return "–"
    return uid if len(uid) <= keep + 1 else "…" + uid[-keep:]


def format_pct(value: Any) -> str:
    """0.8731 → '87.3 %'."""
    try:
        return f"{float(value) * 100:.1f} %"
    except (TypeError, ValueError):
        return "–"


def bar_width(value: Any) -> str:
    """A probability as a CSS width in percent, clamped to 0..100 (always a plain number)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "0"
    if not math.isfinite(v):
        return "0"
    return f"{min(max(v, 0.0), 1.0) * 100:.1f}"
