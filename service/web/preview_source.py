"""Where a dashboard preview comes from: the job's result row, its source file and SEG(s).

The pipeline stores no preview images; `service.previews.render_preview` makes one when a
page asks for it. This module finds what it needs in the database (read only) and caches the
PNG under `outputs/<job>/preview/`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.previews import render_preview
from storage.files import DataDir
from storage.models import Instance, Job, Output

log = logging.getLogger(__name__)

#: One preview rendered at a time per process: a page of 20 rows must not start 20 decodes.
_RENDER_LOCK = threading.Lock()


def _row_for(job: Job, name: str) -> dict[str, Any] | None:
    for row in job.results or []:
        if isinstance(row, dict) and name in (row.get("mask_png"), row.get("cam_png")):
            return row
    return None


def _source_path(session: Session, job: Job, sop_instance_uid: str) -> Path | None:
    path = session.scalar(
        select(Instance.path).where(
            Instance.study_id == job.study_id,
            Instance.sop_instance_uid == sop_instance_uid,
            Instance.conflict_of_id.is_(None),
        )
    )
    return Path(path) if path and Path(path).is_file() else None


def renderable_previews(session: Session, data_dir: DataDir, job: Job) -> set[str]:
    """Names of the job's previews that exist or can be made (their source is on disk)."""
    preview_dir = data_dir.outputs / str(job.id) / "preview"
    names = {p.name for p in preview_dir.glob("*.png")} if preview_dir.is_dir() else set()
    for row in job.results or []:
        if not isinstance(row, dict) or not row.get("sop_instance_uid"):
            continue
        if _source_path(session, job, str(row["sop_instance_uid"])) is not None:
            names.update(n for n in (row.get("mask_png"), row.get("cam_png")) if n)
    return names


def _model(runtime: Any) -> Any:
    """The service's model behind its predict lock, or None (web app on its own, no model)."""
    models = getattr(runtime, "models", None)
    if models is None or not hasattr(models, "get"):
        return None
    try:
        model = models.get()
    except Exception:  # noqa: BLE001 - no Grad-CAM then; /health says why
        log.warning("Grad-CAM preview: the model is not available")
        return None
    lock = getattr(models, "predict_lock", None)

    class _Locked:
        def predict(self, images: Any, with_cam: bool = False) -> Any:
            if lock is None:
                return model.predict(images, with_cam=with_cam)
            with lock:
                return model.predict(images, with_cam=with_cam)

    return _Locked()


def make_preview(
    session: Session, data_dir: DataDir, job_id: int, name: str, runtime: Any
) -> Path | None:
    """The cached or newly rendered preview `name` of job `job_id`, or None if it cannot be."""
    preview_dir = data_dir.outputs / str(int(job_id)) / "preview"
    cached = preview_dir / name
    if cached.is_file():
        return cached
    job = session.get(Job, job_id)
    if job is None:
        return None
    row = _row_for(job, name)
    if row is None or not row.get("sop_instance_uid") or not row.get("frame"):
        return None
    source = _source_path(session, job, str(row["sop_instance_uid"]))
    if source is None:
        return None
    segs = [
        Path(p)
        for p in session.scalars(
            select(Output.path).where(Output.job_id == job.id, Output.kind == "seg")
        )
        if Path(p).is_file()
    ]
    model = _model(runtime) if name.endswith("_cam.png") else None
    with _RENDER_LOCK:
        try:
            return render_preview(
                preview_dir,
                name,
                source=source,
                sop_instance_uid=str(row["sop_instance_uid"]),
                frame_number=int(row["frame"]),
                seg_paths=segs,
                model=model,
            )
        except Exception as exc:  # noqa: BLE001 - a preview that cannot be made is a 404
            log.warning("preview of job %d not rendered: %s", job_id, type(exc).__name__)
            return None
