"""Dashboard previews made on demand: a processed job's mask and Grad-CAM PNGs, then cached.

The job is processed by the real worker (threshold model); the web app serves the preview
URLs of its result rows, rendering them from the stored source and SEG the first time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine

from service.web.app import create_app
from service.worker import ModelProvider, work_once
from storage.db import session_scope
from storage.files import DataDir
from storage.models import Job
from tests.service.test_pipeline import ThresholdModel
from tests.service.test_web import bearer, make_settings, make_token
from tests.service.test_worker import _receive, _settings


@dataclass
class _Runtime:
    """What the web app reads of service.runtime.Runtime, with a real ModelProvider."""

    settings: object
    engine: Engine
    data_dir: DataDir
    models: ModelProvider
    listener_up: bool = True


def test_preview_mask_and_cam_rendered_on_first_request_then_cached(
    engine: Engine, data_dir: DataDir, db_url: str, tmp_path: Path
) -> None:
    model = ThresholdModel()
    models = ModelProvider(None, "cpu", None, model=model)
    job_id = _receive(engine, data_dir, tmp_path)
    work_once(_settings(destinations=False), engine, data_dir, models, "host:0")
    preview_dir = data_dir.outputs / str(job_id) / "preview"
    assert not preview_dir.exists() and model.cam_calls == 0  # nothing made in the job
    with session_scope(engine) as s:
        row = (s.get(Job, job_id).results or [])[0]  # type: ignore[union-attr]
    settings = make_settings(data_dir, database_url=db_url)
    app = create_app(settings, _Runtime(settings, engine, data_dir, models))
    with TestClient(app, headers=bearer(make_token(engine))) as client:
        page = client.get(f"/jobs/{job_id}").text
        assert f'src="/jobs/{job_id}/preview/{row["mask_png"]}"' in page
        assert f'src="/jobs/{job_id}/preview/{row["cam_png"]}"' in page

        mask = client.get(f"/jobs/{job_id}/preview/{row['mask_png']}")
        assert mask.status_code == 200 and mask.headers["content-type"] == "image/png"
        rgb = np.asarray(Image.open(io.BytesIO(mask.content)).convert("RGB"))
        tinted = int((rgb[..., 0] > rgb[..., 2] + 20).sum())
        assert tinted > 0.9 * row["lesion_area_px"]  # the SEG's lesion, outlined
        assert (preview_dir / row["mask_png"]).read_bytes() == mask.content

        cam = client.get(f"/jobs/{job_id}/preview/{row['cam_png']}")
        assert cam.status_code == 200 and model.cam_calls == 1
        again = client.get(f"/jobs/{job_id}/preview/{row['cam_png']}")
        assert again.content == cam.content and model.cam_calls == 1  # served from the cache

        assert client.get(f"/jobs/{job_id}/preview/009_0001_mask.png").status_code == 404
