"""The /try page in headless Chromium (Playwright driving Debian's /usr/bin/chromium): a
radiologist logs in, drops a PNG on the drop zone, and sees the job page's viewer with the
"Not sent to any PACS" banner and the lesion outline drawn on the canvas.

Two models: the bundled one on a BUSI malignant image (../shared datasets; its screenshot is
docs/screenshots/try.png) and the transparent threshold model of test_pipeline on a generated
picture (always available), whose outline is known.

Screenshots land in the test's tmp_path (and in $WECARE_SCREENSHOT_DIR when set, to look at).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image
from sqlalchemy import Engine

from service.config import Settings
from service.web.app import create_app
from service.worker import ModelProvider
from storage.db import session_scope
from storage.files import DataDir
from storage.models import Role
from storage.users import create_user
from tests.requirements import SHARED_DIR, require_or_skip, skip_unless
from tests.service.test_pipeline import ThresholdModel
from tests.service.test_trial import picture
from tests.service.test_web import PASSWORD, FakeRuntime
from tests.service.test_web_browser import CHROMIUM, base_url
from tests.service.test_web_it_view_browser import Guarded, _save, browser_page

__all__ = ["base_url", "browser_page"]  # fixtures, used by name

pytestmark = [
    pytest.mark.integration,
    skip_unless(CHROMIUM is not None, "chromium not installed"),
    skip_unless(importlib.util.find_spec("playwright") is not None, "playwright not installed"),
]

BUSI_IMAGE = SHARED_DIR / "datasets" / "busi" / "malignant" / "malignant_1.png"

#: Yellow canvas pixels: the viewer's AI outline (255, 220, 0) at 60 % or more over a grey frame.
_COUNT_OUTLINE = """() => {
  const c = document.getElementById("ws-canvas");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] > 200 && d[i + 1] > 170 && d[i] - d[i + 2] > 100) n++;
  }
  return n;
}"""

_DROP = """([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type: "image/png" }));
  return dt;
}"""


@pytest.fixture(params=["bundled", "threshold"])
def model_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def app_under_test(model_kind: str, data_dir: DataDir, db_url: str, engine: Engine) -> FastAPI:
    """The app with log-in on and a radiologist 'rita'; the model as parametrized."""
    if model_kind == "bundled":
        require_or_skip(BUSI_IMAGE.is_file(), "BUSI dataset absent", shared=BUSI_IMAGE)
        models = ModelProvider(None, "cpu", None, compile_mode="off")
    else:
        models = ModelProvider(None, "cpu", None, model=ThresholdModel())
    settings = Settings(
        storage={"data_dir": data_dir.root, "min_free_mb": 0, "database_url": db_url},
        web={"time_zone": "Europe/Paris"},
    )
    with session_scope(engine) as session:
        create_user(session, "rita", Role.RADIOLOGIST, PASSWORD)
    runtime = FakeRuntime(settings=settings, engine=engine, data_dir=data_dir, models=models)  # type: ignore[arg-type]
    return create_app(settings, runtime)


def _log_in(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/login")
    page.fill("#username", "rita")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")


def test_drop_png_on_try_page_shows_viewer_with_banner_and_outline(
    model_kind: str, base_url: str, browser_page: Guarded, tmp_path: Path
) -> None:
    if model_kind == "bundled":
        data, name = BUSI_IMAGE.read_bytes(), "scan.png"
    else:
        data, name = picture()[0], "synthetic.png"
    page = browser_page.page
    _log_in(page, base_url)
    page.goto(f"{base_url}/try")
    assert "Not sent to any PACS" in page.inner_text("#trial-banner")

    transfer = page.evaluate_handle(_DROP, [base64.b64encode(data).decode(), name])
    page.dispatch_event("#drop-zone", "dragenter", {"dataTransfer": transfer})
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})

    page.wait_for_url(f"{base_url}/try/*", timeout=60_000)
    page.wait_for_selector("#workspace[data-ready=true]", timeout=20_000)
    assert page.is_visible("#ws-trial")
    assert "Not sent to any PACS" in page.inner_text("#ws-trial")
    assert "Not sent to any PACS" in page.inner_text("#trial-banner")
    lesions = page.evaluate("() => window.wecareWorkspace.lesions()")
    assert lesions and all(len(poly) >= 3 for poly in lesions)
    deadline = time.monotonic() + 20
    while page.evaluate(_COUNT_OUTLINE) <= 40 and time.monotonic() < deadline:
        page.wait_for_timeout(200)  # the frame PNG loads, then the outline is drawn over it
    assert page.evaluate(_COUNT_OUTLINE) > 40  # the outline is on the canvas
    # The frame on the canvas is the uploaded picture at full resolution.
    with Image.open(io.BytesIO(data)) as img:
        size = img.size
    src = page.get_attribute("#workspace", "data-src")
    assert src is not None
    frame = page.request.get(base_url + src.replace("/workspace", "/images/1/frames/1.png"))
    assert frame.ok and Image.open(io.BytesIO(frame.body())).size == size
    if model_kind == "threshold":
        _, expected = picture()
        ys, xs = np.nonzero(expected)
        vertices = np.array([v for poly in lesions for v in poly])
        assert vertices[:, 0].min() == pytest.approx(xs.min(), abs=1.5)
        assert vertices[:, 0].max() == pytest.approx(xs.max(), abs=1.5)
        assert vertices[:, 1].min() == pytest.approx(ys.min(), abs=1.5)
        assert vertices[:, 1].max() == pytest.approx(ys.max(), abs=1.5)
    with page.expect_response(lambda r: "/cam/1.png" in r.url, timeout=30_000) as cam:
        page.check("#ws-cam")  # Grad-CAM toggle: made on first request by the same model
    assert cam.value.ok and cam.value.headers["content-type"] == "image/png"
    page.uncheck("#ws-cam")
    if model_kind == "bundled":  # docs/screenshots/try.png with WECARE_SCREENSHOT_DIR
        _save(page, tmp_path / "try.png", full_page=True)
    else:
        page.screenshot(path=str(tmp_path / "try-threshold.png"), full_page=True)
    assert browser_page.outside == [] and browser_page.csp_errors == []
