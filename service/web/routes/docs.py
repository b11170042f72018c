"""/docs (Swagger UI) and /redoc from the package's own vendored files, never a CDN.

The hospital network has no internet: FastAPI's default pages load from a CDN and stay blank
there. These pages load scripts and styles from /static (scripts/vendor_frontend.py vendors
them from npm, pinned and integrity-checked); Swagger UI's start-up is a static file, so the
pages' CSP (app.CSP_API_DOCS) allows only this site's scripts, no inline ones. Both need a
logged-in user, like every page.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.web.auth import ViewerDep

router = APIRouter(include_in_schema=False)

STATIC_URL = "/static"


def _page(request: Request, template: str) -> Response:
    context = {
        "title": request.app.title,
        "openapi_url": request.app.openapi_url,
        "static": STATIC_URL,
    }
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, template, context
    )


@router.get("/docs")
def swagger_ui(request: Request, _: ViewerDep) -> Response:
    return _page(request, "api_docs.html")


@router.get("/redoc")
def redoc(request: Request, _: ViewerDep) -> Response:
    return _page(request, "redoc.html")
