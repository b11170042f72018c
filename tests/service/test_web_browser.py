"""The dashboard in a real browser: uvicorn on a free loopback port, headless Chromium.

Screenshots land in the test's tmp_path (and in $WECARE_SCREENSHOT_DIR when set, to look at).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image
from sqlalchemy import Engine

from service.config import AuthSettings
from service.web.app import create_app
from storage.files import DataDir
from storage.models import JobState, OutboxState
from tests.integration.peers import free_port
from tests.requirements import skip_unless
from tests.service.test_web import FakeModels, FakeRuntime, add_job, make_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.integration,
    skip_unless(CHROMIUM is not None, "chromium not installed"),
]


@pytest.fixture()
def base_url(app_under_test: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app_under_test, host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture()
def app_under_test(
    request: pytest.FixtureRequest, data_dir: DataDir, db_url: str, engine: Engine
) -> FastAPI:
    """The app; log-in is off (the CLI browser cannot log in) unless a test parametrizes this
    fixture indirectly with True, to see what an anonymous browser gets."""
    with_auth = bool(getattr(request, "param", False))
    settings = make_settings(data_dir, database_url=db_url).model_copy(
        update={"auth": AuthSettings(enabled=with_auth)}
    )
    runtime = FakeRuntime(
        settings=settings, engine=engine, data_dir=data_dir, models=FakeModels(loaded=True)
    )
    return create_app(settings, runtime)


def _ultrasound_like(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A speckled (H, W) 0..1 image with a dark oval 'lesion' and its (H, W) bool mask."""
    rng = np.random.default_rng(seed)
    h, w = 240, 320
    yy, xx = np.mgrid[0:h, 0:w]
    image = 0.25 + 0.35 * rng.random((h, w)) * np.exp(-yy / 400)
    mask = ((yy - 120) / 40) ** 2 + ((xx - 170) / 65) ** 2 <= 1
    image[mask] *= 0.25
    return np.clip(image, 0, 1), mask


def _write_previews(data_dir: DataDir, job_id: int) -> None:
    for index in range(2):
        image, mask = _ultrasound_like(index)
        gray = (image * 255).astype(np.uint8)
        rgb = np.stack([gray] * 3, axis=-1).astype(np.float32)
        rgb[mask] = 0.65 * rgb[mask] + 0.35 * np.array([255.0, 60.0, 60.0])
        heat = np.exp(
            -(
                ((np.mgrid[0:240, 0:320][0] - 120) / 50) ** 2
                + ((np.mgrid[0:240, 0:320][1] - 170) / 80) ** 2
            )
        )[..., None]
        cam = 0.55 * np.stack([gray] * 3, axis=-1) + 0.45 * 255 * np.concatenate(
            [heat, 1 - np.abs(2 * heat - 1), 1 - heat], axis=-1
        )
        for name, pixels in (
            (f"{index:03d}_0001_mask.png", rgb),
            (f"{index:03d}_0001_cam.png", cam),
        ):
            path = data_dir.outputs / str(job_id) / "preview" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
            path.write_bytes(buf.getvalue())


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--disable-dev-shm-usage",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _screenshot(url: str, out: Path, height: int = 900) -> Path:
    result = _chromium(
        f"--screenshot={out}", f"--window-size=1280,{height}", "--virtual-time-budget=3000", url
    )
    assert out.is_file(), result.stderr[-2000:]
    keep = os.environ.get("WECARE_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(keep) / out.name)
    return out


def _distinct_colours(png: Path) -> int:
    with Image.open(png) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])


def test_dashboard_in_chromium_job_list_and_detail_render(
    base_url: str, engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    waiting = add_job(
        engine,
        study_uid="1.2.826.0.1.3680043.8.498.1001",
        accession="ACC-1001",
        created_at=now - timedelta(seconds=4),
    )
    failed = add_job(
        engine,
        study_uid="1.2.826.0.1.3680043.8.498.1002",
        accession="ACC-1002",
        state=JobState.FAILED,
        error="export failed (pacs: peer answered 0xA700)",
        error_code="export_failed",
        outbox=[("pacs", OutboxState.FAILED)],
        created_at=now - timedelta(minutes=30),
    )
    done = add_job(
        engine,
        study_uid="1.2.826.0.1.3680043.8.498.1003",
        accession="ACC-1003",
        state=JobState.DONE,
        model_status="checkpoint: training in progress",
        outbox=[("pacs", OutboxState.SENT), ("archive", OutboxState.SENT)],
        created_at=now - timedelta(minutes=5),
    )
    _write_previews(data_dir, done)

    dom = _chromium("--dump-dom", "--virtual-time-budget=2000", f"{base_url}/").stdout
    assert f'id="job-{done}"' in dom and "ACC-1003" in dom
    assert f'action="/jobs/{waiting}/process-now"' in dom
    assert f'action="/jobs/{failed}/retry"' in dom

    index_png = _screenshot(f"{base_url}/", tmp_path / "dashboard-index.png")
    detail_png = _screenshot(f"{base_url}/jobs/{done}", tmp_path / "dashboard-job.png", height=1800)

    for png in (index_png, detail_png):
        assert png.stat().st_size > 20_000
        with Image.open(png) as image:
            assert image.size[0] == 1280
        assert _distinct_colours(png) > 50  # text, badges and images, not a blank page
    detail_dom = _chromium(
        "--dump-dom", "--virtual-time-budget=2000", f"{base_url}/jobs/{done}"
    ).stdout
    assert "Model not validated for clinical use" in detail_dom
    assert f"/jobs/{done}/preview/000_0001_cam.png" in detail_dom


@pytest.mark.parametrize("app_under_test", [True], indirect=True, ids=["auth"])
def test_login_page_in_chromium_anonymous_browser_lands_on_login_form(
    base_url: str, engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    add_job(engine, study_uid="1.2.826.0.1.3680043.8.498.2001", accession="ACC-2001")

    dom = _chromium("--dump-dom", "--virtual-time-budget=2000", f"{base_url}/").stdout

    assert 'id="login-form"' in dom  # redirected from the job list to the log-in page
    assert 'type="password"' in dom and 'name="csrf_token"' in dom
    assert "ACC-2001" not in dom  # nothing of the job list leaks
    png = _screenshot(f"{base_url}/login", tmp_path / "dashboard-login.png", height=700)
    with Image.open(png) as image:
        assert image.size[0] == 1280
    assert _distinct_colours(png) > 10  # a rendered form, not a blank or error page
