"""GET /health: is this node able to take studies? For load balancers and IT monitoring."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text

from service.config import Settings
from service.web.deps import DataDirDep, EngineDep, RuntimeDep, SettingsDep
from service.web.destination_health import TTL_SECONDS, DestinationHealth

router = APIRouter(tags=["health"])

_MIB = 1024 * 1024


class DiskPublic(BaseModel):
    free_mb: int = Field(description="Free space where the data directory lives (MiB)")
    floor_mb: int = Field(description="Below this we refuse new studies (storage.min_free_mb)")
    ok: bool


class ModelHealthPublic(BaseModel):
    loaded: bool = Field(description="False until the first job loads it (not an error)")
    error: str | None = Field(None, description="Why loading failed, if it did")
    network: str | None = Field(
        None,
        description="How the loaded network runs: compiled, eager, or eager with the reason "
        "the compile failed (slower, results unchanged)",
    )


class DestinationHealthPublic(BaseModel):
    name: str = Field(description="The destination's name in the config")
    address: str = Field(description="Name and host:port (DICOM) or base URL (STOW-RS)")
    reachable: bool = Field(description="C-ECHO (DICOM) or HTTP GET (STOW-RS) succeeded")
    reason: str | None = Field(None, description="Why not, when unreachable")
    age_seconds: float = Field(description="How old this result is (checks are cached)")


class HealthPublic(BaseModel):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "error"]
    disk: DiskPublic
    model: ModelHealthPublic
    listener: Literal["up", "down"]
    destinations: list[DestinationHealthPublic] = Field(
        default_factory=list,
        description=f"Each destination's reachability, checked at most every "
        f"{TTL_SECONDS:.0f} s (cached)",
    )
    reasons: list[str] = Field(
        default_factory=list, description="Why the status is degraded (empty when ok)"
    )


def destination_health(request: Request, settings: Settings) -> DestinationHealth:
    """The app's one cache of destination checks (made on first use)."""
    state = request.app.state
    cache = getattr(state, "destination_health", None)
    if cache is None:
        cache = DestinationHealth(settings.destinations, settings.dicom.ae_title)
        state.destination_health = cache
    return cache  # type: ignore[no-any-return]


@router.get(
    "/health",
    response_model=HealthPublic,
    summary="Health of database, disk, model, listener",
    responses={503: {"model": HealthPublic, "description": "Database or disk not usable"}},
)
def health(
    request: Request,
    settings: SettingsDep,
    runtime: RuntimeDep,
    data_dir: DataDirDep,
    engine: EngineDep,
) -> JSONResponse:
    """200 when the database answers and free disk is above the floor, 503 otherwise.

    `status` is `degraded` when anything is wrong, including a model that failed to load, a
    DICOM listener that is down or a destination we cannot reach (those do not make it 503:
    the dashboard still works and the outbox keeps what it could not send)."""
    database: Literal["ok", "error"] = "ok"
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any failure means the database is not usable
        database = "error"
    try:
        free_mb = data_dir.free_bytes() // _MIB
    except OSError:
        free_mb = 0
    floor_mb = settings.storage.min_free_mb
    disk = DiskPublic(free_mb=free_mb, floor_mb=floor_mb, ok=free_mb >= floor_mb)
    if runtime is not None:
        model = ModelHealthPublic(
            loaded=runtime.models.loaded, error=runtime.models.error, network=runtime.models.network
        )
        listener: Literal["up", "down"] = "up" if runtime.listener_up else "down"
    else:  # web app on its own: no model or listener in this process
        model = ModelHealthPublic(loaded=False, error=None)
        listener = "down"
    now = time.monotonic()
    destinations = [
        DestinationHealthPublic(
            name=c.name,
            address=c.label,
            reachable=c.ok,
            reason=c.reason,
            age_seconds=round(max(now - c.checked_at, 0.0), 1),
        )
        for c in destination_health(request, settings).results()
    ]
    reasons = []
    if database != "ok":
        reasons.append("database not answering")
    if not disk.ok:
        reasons.append(f"free disk {free_mb} MiB below the floor of {floor_mb} MiB")
    if model.error is not None:
        reasons.append("model failed to load")
    if runtime is not None and listener != "up":
        reasons.append("DICOM listener down")
    reasons += [
        f"destination {d.address} unreachable: {d.reason}" for d in destinations if not d.reachable
    ]
    serving = database == "ok" and disk.ok
    body = HealthPublic(
        status="degraded" if reasons else "ok",
        database=database,
        disk=disk,
        model=model,
        listener=listener,
        destinations=destinations,
        reasons=reasons,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if serving else 503)
