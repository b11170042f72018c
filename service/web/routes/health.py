"""GET /health: is this node able to take studies? For load balancers and IT monitoring."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text

from service.web.deps import DataDirDep, EngineDep, RuntimeDep, SettingsDep

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
        None, description="How the loaded network runs: compiled, eager, or eager with the reason "
        "the compile failed (slower, results unchanged)",
    )


class HealthPublic(BaseModel):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "error"]
    disk: DiskPublic
    model: ModelHealthPublic
    listener: Literal["up", "down"]


@router.get(
    "/health",
    response_model=HealthPublic,
    summary="Health of database, disk, model, listener",
    responses={503: {"model": HealthPublic, "description": "Database or disk not usable"}},
)
def health(
    settings: SettingsDep, runtime: RuntimeDep, data_dir: DataDirDep, engine: EngineDep
) -> JSONResponse:
    """200 when the database answers and free disk is above the floor, 503 otherwise.

    `status` is `degraded` when anything is wrong, including a model that failed to load or a
    DICOM listener that is down (those do not make it 503: the dashboard still works)."""
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
        model = ModelHealthPublic(loaded=runtime.models.loaded, error=runtime.models.error,
                                  network=runtime.models.network)
        listener: Literal["up", "down"] = "up" if runtime.listener_up else "down"
    else:  # web app on its own: no model or listener in this process
        model = ModelHealthPublic(loaded=False, error=None)
        listener = "down"
    serving = database == "ok" and disk.ok
    fine = serving and model.error is None and (runtime is None or listener == "up")
    body = HealthPublic(
        status="ok" if fine else "degraded",
        database=database,
        disk=disk,
        model=model,
        listener=listener,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if serving else 503)
