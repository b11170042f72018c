"""The radiologist workspace in a real browser (issue 29 items 1-2): headless Chromium (Debian's
/usr/bin/chromium through Playwright's `executable_path`, no browser download) against the app
on a loopback port, with log-in on.

A cine clip (8 frames, lesion on frame 6 only) is processed by the real worker and its AI
outputs are delivered to a real dcmtk storescp. A radiologist logs in, opens the job, scrubs
to the lesion frame, toggles the Grad-CAM, moves a vertex, undoes and redoes it, and sends the
correction; the corrected SEG arrives at storescp, passes dciodvfy, reads back with highdicom,
and its mask is the polygon the page sent, rasterised by dicom_io.polygons.

Screenshots go to the test's tmp_path, and to $WECARE_SCREENSHOT_DIR when set (docs/screenshots
holds the committed ones).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import uvicorn
from pydicom import dcmread
from scipy import ndimage
from sqlalchemy import Engine, select

from dicom_io.polygons import Polygon, polygons_to_mask
from service.config import Settings, load_settings
from service.exporter import export_once
from service.web.app import create_app
from service.worker import ModelProvider, work_once
from storage.db import session_scope
from storage.files import DataDir
from storage.models import Instance, Job, JobState, Role
from tests.dciodvfy import needs_dciodvfy, run_dciodvfy
from tests.integration.peers import free_port, storescp, wait_for
from tests.requirements import skip_unless
from tests.service.test_pipeline import ThresholdModel
from tests.service.test_web import PASSWORD, make_token
from tests.service.test_worker import _receive

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.integration,
    skip_unless(CHROMIUM is not None, "chromium not installed"),
    skip_unless(importlib.util.find_spec("playwright") is not None, "playwright not installed"),
]

FRAMES = 8
LESION_FRAME = 6
CENTER = (120, 170)  # (row, column) of the synthetic lesion
RADII = (30, 45)
RADIOLOGIST = "dr-lee"


@dataclass
class _Runtime:
    settings: Settings
    engine: Engine
    data_dir: DataDir
    models: ModelProvider
    listener_up: bool = True


@dataclass
class Site:
    base_url: str
    job_id: int
    sop_instance_uid: str
    received: Path  # storescp's folder
    settings: Settings
    model: ThresholdModel


def _serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="uvicorn-workspace", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture()
def site(engine: Engine, data_dir: DataDir, db_url: str, tmp_path: Path) -> Iterator[Site]:
    """A done cine job whose AI SEG and SR were delivered to storescp; the app serving it."""
    received = tmp_path / "storescp"
    with storescp(received) as (aet, port):
        settings = load_settings(
            None,
            storage={"data_dir": data_dir.root, "min_free_mb": 0, "database_url": db_url},
            destinations=[{"name": "pacs", "ae_title": aet, "host": "127.0.0.1", "port": port}],
            web={"time_zone": "Europe/Paris"},
            worker={"max_attempts": 2},
        )
        model = ThresholdModel()
        models = ModelProvider(None, "cpu", None, model=model)
        job_id = _receive(
            engine,
            data_dir,
            tmp_path,
            frames=FRAMES,
            lesion=CENTER,
            lesion_radii=RADII,
            lesion_frames=[LESION_FRAME - 1],
        )
        assert work_once(settings, engine, data_dir, models, "host:0") == job_id
        assert export_once(settings, engine) == 2  # the AI SEG and SR
        with session_scope(engine) as s:
            job = s.get(Job, job_id)
            assert job is not None and job.state == JobState.DONE
            uid = s.scalars(select(Instance.sop_instance_uid)).one()
        make_token(engine, Role.RADIOLOGIST, user=RADIOLOGIST)  # the user, with PASSWORD
        app = create_app(settings, _Runtime(settings, engine, data_dir, models))
        server, thread, base_url = _serve(app)
        try:
            yield Site(base_url, job_id, uid, received, settings, model)
        finally:
            server.should_exit = True
            thread.join(10)


@pytest.fixture()
def page() -> Iterator[Any]:
    """A Chromium page; any request to a host other than 127.0.0.1 fails the test."""
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})

            def route(r: Any) -> None:
                if urlsplit(r.request.url).hostname == "127.0.0.1":
                    r.continue_()
                else:
                    outside.append(r.request.url)
                    r.abort()

            tab.route("**/*", route)
            tab.errors = []  # type: ignore[attr-defined]
            tab.on("pageerror", lambda e: tab.errors.append(str(e)))  # type: ignore[attr-defined]
            tab.on(
                "console",
                lambda m: tab.errors.append(m.text) if m.type == "error" else None,  # type: ignore[attr-defined]
            )
            yield tab
        finally:
            browser.close()
    assert outside == []


def _log_in(page: Any, base_url: str, next_path: str) -> None:
    page.goto(f"{base_url}/login?next={next_path}")
    page.fill("#username", RADIOLOGIST)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}{next_path}")


def _save(page: Any, out: Path, name: str, selector: str | None = None) -> Path:
    path = out / name
    page.mouse.move(0, 0)  # no hover highlight on whatever lies under the last click
    if selector:
        page.locator(selector).screenshot(path=str(path))
    else:
        page.screenshot(path=str(path))
    keep = os.environ.get("WECARE_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


def _canvas_rgb(page: Any, x: float, y: float) -> list[int]:
    """The canvas colour at image pixel-centre (x, y), as drawn on screen."""
    return page.evaluate(
        """([x, y]) => {
            const c = document.getElementById("ws-canvas");
            const p = window.wecareWorkspace.toScreen(x, y);
            const d = window.devicePixelRatio || 1;
            return Array.from(c.getContext("2d")
                .getImageData(Math.round(p[0] * d), Math.round(p[1] * d), 1, 1).data).slice(0, 3);
        }""",
        [x, y],
    )


def _wait_frame_drawn(page: Any, frame: int) -> None:
    page.wait_for_function(
        """(f) => document.getElementById("ws-frame-label").textContent
            .startsWith("Frame " + f + " ")""",
        arg=frame,
    )
    # The frame's PNG is drawn once loaded: wait until the canvas is no longer the placeholder.
    page.wait_for_function(
        """() => {
            const c = document.getElementById("ws-canvas");
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let lit = 0;
            for (let i = 0; i < d.length; i += 400) if (d[i] > 20) lit++;
            return lit > 200;
        }"""
    )


def _canvas_box(page: Any) -> dict[str, float]:
    """The canvas's box in the viewport, scrolled into view (a click off-screen goes nowhere)."""
    canvas = page.locator("#ws-canvas")
    canvas.scroll_into_view_if_needed()
    return canvas.bounding_box()  # type: ignore[no-any-return]


def _drag(page: Any, x: float, y: float, dx: float, dy: float) -> None:
    box = _canvas_box(page)
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.mouse.down()
    for k in range(1, 6):
        page.mouse.move(box["x"] + x + dx * k / 5, box["y"] + y + dy * k / 5)
    page.mouse.up()


def test_workspace_viewer_scrub_cam_and_vertex_edit_with_undo_redo(
    site: Site, page: Any, tmp_path: Path
) -> None:
    job_path = f"/jobs/{site.job_id}"
    _log_in(page, site.base_url, job_path)
    page.wait_for_selector("#workspace[data-ready=true]")
    # The page's CSP allows the site's own script only.
    csp = page.request.get(f"{site.base_url}{job_path}").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-eval" not in csp

    # Study, rule and times in the site's zone, as the radiologist reads them.
    assert page.inner_text("#ws-patient-id") == "CANARY-PID-0042"
    assert page.inner_text("#ws-scanner") == "Canary Ultrasound Inc. Canary 1"
    assert page.inner_text("#ws-laterality") == "Left"
    assert page.text_content("#ws-study-class") == "malignant"
    assert "most suspicious frame" in page.inner_text("#ws-class-rule")
    times = page.inner_text("#ws-times")
    assert "CET" in times or "CEST" in times

    # The clip opens on frame 1 (no lesion there); the scrubber marks frame 6.
    _wait_frame_drawn(page, 1)
    marks = page.eval_on_selector_all(".ws-mark", "ms => ms.map(m => m.dataset.frame)")
    assert marks == [str(LESION_FRAME)]
    assert "AI: no lesion" in page.inner_text("#ws-frame-lesions")
    dark = _canvas_rgb(page, CENTER[1], CENTER[0])
    assert max(dark) < 120  # speckle, no bright lesion on frame 1

    page.click("#ws-next-lesion")
    _wait_frame_drawn(page, LESION_FRAME)
    assert page.inner_text("#ws-frame-label") == f"Frame {LESION_FRAME} / {FRAMES}"
    assert "AI: 1 lesion" in page.inner_text("#ws-frame-lesions")
    # Frame 6 is past the first frames the job keeps rows for; its class is shown all the same.
    assert page.text_content("#ws-frame-class") == "malignant"
    assert page.locator("#ws-strip").is_visible()
    bright = _canvas_rgb(page, CENTER[1], CENTER[0])
    assert min(bright) > 180  # the full-resolution frame 6 with its bright lesion
    page.select_option("#ws-overlay", "fill")
    page.fill("#ws-opacity", "50")
    page.dispatch_event("#ws-opacity", "input")
    _save(page, tmp_path, "workspace-viewer.png", "#workspace")
    page.select_option("#ws-overlay", "outline")

    # Grad-CAM: fetched for this frame on demand, drawn red over the lesion.
    calls = site.model.cam_calls
    with page.expect_response(lambda r: f"/cam/{LESION_FRAME}.png" in r.url) as cam:
        page.check("#ws-cam")
    assert cam.value.status == 200
    page.wait_for_function(
        """([x, y]) => {
            const c = document.getElementById("ws-canvas");
            const p = window.wecareWorkspace.toScreen(x, y);
            const d = window.devicePixelRatio || 1;
            const v = c.getContext("2d").getImageData(
                Math.round(p[0] * d), Math.round(p[1] * d), 1, 1).data;
            return v[0] > v[2] + 60;
        }""",
        arg=[CENTER[1], CENTER[0]],
    )
    assert site.model.cam_calls == calls + 1
    _save(page, tmp_path, "workspace-gradcam.png", "#ws-canvas")
    page.uncheck("#ws-cam")

    # Move a vertex 20 screen pixels right; undo and redo (keys and buttons).
    before = page.evaluate("() => window.wecareWorkspace.lesions()")
    assert len(before) == 1 and len(before[0]) >= 8
    rightmost = max(range(len(before[0])), key=lambda i: before[0][i][0])
    vx, vy = before[0][rightmost]
    sx, sy = page.evaluate("([x, y]) => window.wecareWorkspace.toScreen(x, y)", [vx, vy])
    scale = page.evaluate("() => window.wecareWorkspace.state.scale")
    _drag(page, sx, sy, 20, 0)
    moved = page.evaluate("() => window.wecareWorkspace.lesions()")
    assert moved[0][rightmost][0] == pytest.approx(vx + 20 / scale, abs=0.6)
    assert moved[0][rightmost][1] == pytest.approx(vy, abs=0.6)
    assert page.inner_text("#ws-edited") == f"Edited: frame {LESION_FRAME}"
    page.keyboard.press("Control+z")
    assert page.evaluate("() => window.wecareWorkspace.lesions()") == before
    page.keyboard.press("Control+y")
    assert page.evaluate("() => window.wecareWorkspace.lesions()") == moved
    page.click("#ws-undo")
    assert page.evaluate("() => window.wecareWorkspace.lesions()") == before
    page.click("#ws-redo")
    assert page.evaluate("() => window.wecareWorkspace.lesions()") == moved
    # Add a vertex by double-clicking an edge, then delete it with the Delete key.
    poly = moved[0]
    longest = max(
        range(len(poly)),
        key=lambda i: np.hypot(*np.subtract(poly[i], poly[(i + 1) % len(poly)])),
    )
    a, b = poly[longest], poly[(longest + 1) % len(poly)]
    mx, my = page.evaluate(
        "([x, y]) => window.wecareWorkspace.toScreen(x, y)", [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2]
    )
    box = _canvas_box(page)
    page.mouse.dblclick(box["x"] + mx, box["y"] + my)
    assert len(page.evaluate("() => window.wecareWorkspace.lesions()")[0]) == len(moved[0]) + 1
    page.keyboard.press("Delete")
    assert page.evaluate("() => window.wecareWorkspace.lesions()") == moved
    # Zoom in (buttons, then the wheel over the lesion) and pan by dragging empty image.
    scale = page.evaluate("() => window.wecareWorkspace.state.scale")
    page.click("#ws-zoom-in")
    box = _canvas_box(page)
    cx, cy = page.evaluate("([x, y]) => window.wecareWorkspace.toScreen(x, y)", [170, 120])
    page.mouse.move(box["x"] + cx, box["y"] + cy)
    page.mouse.wheel(0, -200)
    zoomed = page.evaluate("() => window.wecareWorkspace.state.scale")
    assert zoomed > 1.4 * scale
    # The wheel zooms about the pointer: the lesion centre stays under it.
    after = page.evaluate("([x, y]) => window.wecareWorkspace.toScreen(x, y)", [170, 120])
    assert after == pytest.approx([cx, cy], abs=1.0)
    tx = page.evaluate("() => window.wecareWorkspace.state.tx")
    _drag(page, 30, 30, 40, 0)  # a corner of the image, away from any vertex
    assert page.evaluate("() => window.wecareWorkspace.state.tx") == pytest.approx(tx + 40, abs=1)
    assert page.evaluate("() => window.wecareWorkspace.lesions()") == moved  # panning edits nothing
    _save(page, tmp_path, "workspace-editor.png", "#workspace")
    assert page.errors == []  # type: ignore[attr-defined]


def test_workspace_brush_adds_a_second_lesion_and_eraser_removes_it(site: Site, page: Any) -> None:
    _log_in(page, site.base_url, f"/jobs/{site.job_id}")
    page.wait_for_selector("#workspace[data-ready=true]")
    page.click("#ws-next-lesion")
    _wait_frame_drawn(page, LESION_FRAME)
    ai = page.evaluate("() => window.wecareWorkspace.lesions()")[0]
    page.click("#ws-tool-brush")
    # Paint a blob well away from the AI lesion (image pixel (60, 60)).
    sx, sy = page.evaluate("() => window.wecareWorkspace.toScreen(60, 60)")
    _drag(page, sx, sy, 25, 10)
    after = page.evaluate("() => window.wecareWorkspace.lesions()")
    assert len(after) == 2  # the AI lesion and the painted one, each a polygon
    assert after[0] == ai  # a stroke away from the AI outline leaves its vertices alone
    painted = after[1]
    xs, ys = [v[0] for v in painted], [v[1] for v in painted]
    assert min(xs) < 60 < max(xs) and min(ys) < 60 < max(ys)
    page.click("#ws-tool-eraser")
    page.evaluate("() => { window.wecareWorkspace.state.brush = 40; }")
    _drag(page, sx, sy, 25, 10)
    assert len(page.evaluate("() => window.wecareWorkspace.lesions()")) == 1
    page.keyboard.press("Control+z")
    assert len(page.evaluate("() => window.wecareWorkspace.lesions()")) == 2
    page.keyboard.press("Control+z")
    assert page.evaluate("() => window.wecareWorkspace.lesions()") == [ai]
    # A stroke across the AI outline's right edge grows that lesion: still one, re-traced.
    page.click("#ws-tool-brush")
    page.evaluate("() => { window.wecareWorkspace.state.brush = 8; }")
    right = max(x for x, _ in ai)
    sx, sy = page.evaluate("([x, y]) => window.wecareWorkspace.toScreen(x, y)", [right, CENTER[0]])
    _drag(page, sx, sy, 10, 0)
    (grown,) = page.evaluate("() => window.wecareWorkspace.lesions()")
    assert max(x for x, _ in grown) > right + 5
    assert page.errors == []  # type: ignore[attr-defined]


def test_workspace_viewer_role_sees_no_editor(site: Site, page: Any, engine: Engine) -> None:
    make_token(engine, Role.VIEWER, user="viewer-1")
    page.goto(f"{site.base_url}/login?next=/jobs/{site.job_id}")
    page.fill("#username", "viewer-1")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#workspace[data-ready=true]")
    assert page.locator("#ws-editor").is_hidden()
    assert page.locator("#ws-send").count() == 0
    assert page.locator(".ws-mark").count() == 1


@needs_dciodvfy
def test_workspace_edit_and_send_corrected_seg_reaches_storescp_as_the_polygon_sent(
    site: Site, page: Any, tmp_path: Path
) -> None:
    import highdicom as hd

    _log_in(page, site.base_url, f"/jobs/{site.job_id}")
    page.wait_for_selector("#workspace[data-ready=true]")
    page.click("#ws-next-lesion")
    _wait_frame_drawn(page, LESION_FRAME)
    lesion = page.evaluate("() => window.wecareWorkspace.lesions()")[0]
    top = min(range(len(lesion)), key=lambda i: lesion[i][1])
    sx, sy = page.evaluate("([x, y]) => window.wecareWorkspace.toScreen(x, y)", lesion[top])
    _drag(page, sx, sy, 0, -25)  # pull the top of the outline up
    body = page.evaluate("() => window.wecareWorkspace.payload('edit')")
    assert body["action"] == "edit" and body["origin"] == "ai"
    assert body["sop_instance_uid"] == site.sop_instance_uid
    (sent,) = body["frames"]
    assert sent["frame"] == LESION_FRAME
    before = {p.name for p in site.received.iterdir()}

    page.click("#ws-send")
    page.click("#ws-confirm-yes")
    started = time.monotonic()
    page.wait_for_selector(".ws-status.ok, .ws-status.error", timeout=30_000)
    status = page.inner_text("#ws-status")
    assert "Sent." in status, status
    # The page reloads the workspace: the frame now shows the review and its SEG.
    page.wait_for_selector("#ws-frame-review")
    review_text = page.inner_text("#ws-frame-review")
    assert f"corrected by {RADIOLOGIST}" in review_text and (
        "CET" in review_text or "CEST" in review_text
    )
    _save(page, tmp_path, "workspace-sent.png", "#workspace")

    from storage.db import make_engine

    engine = make_engine(site.settings.storage.resolved_database_url())
    try:
        files = wait_for(
            lambda: (export_once(site.settings, engine), _new(site.received, before))[1] or None,
            30,
            what="the corrected SEG and SR at storescp",
        )
    finally:
        engine.dispose()
    elapsed = time.monotonic() - started
    files = _new(site.received, before)  # the SR may have arrived in the same round
    segs = [f for f in files if dcmread(f, stop_before_pixels=True).Modality == "SEG"]
    srs = [f for f in files if dcmread(f, stop_before_pixels=True).Modality == "SR"]
    assert len(segs) == 1, files
    assert len(srs) == 1, files
    assert dcmread(srs[0]).SOPInstanceUID in status
    seg_file = segs[0]
    errors, _ = run_dciodvfy(seg_file)
    assert errors == []
    seg = hd.seg.segread(seg_file)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert seg.SOPInstanceUID in status
    array = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=site.sop_instance_uid,
        source_frame_numbers=[LESION_FRAME],
        assert_missing_frames_are_empty=True,
    )
    mask = np.asarray(array)[0, ..., 0].astype(bool)
    polygon = Polygon(tuple((float(x), float(y)) for x, y in sent["lesions"][0]))
    expected = polygons_to_mask([polygon], mask.shape).astype(bool)
    assert np.array_equal(mask, expected)
    print(f"send -> corrected SEG at storescp: {elapsed:.2f} s")


def _new(folder: Path, before: set[str]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name not in before)


def test_workspace_send_refused_outline_shows_the_servers_reason(site: Site, page: Any) -> None:
    """A new lesion clicked on one line has no area: the server's 422 reason is shown as is."""
    _log_in(page, site.base_url, f"/jobs/{site.job_id}")
    page.wait_for_selector("#workspace[data-ready=true]")
    page.click("#ws-next-lesion")
    _wait_frame_drawn(page, LESION_FRAME)
    page.click("#ws-tool-new")
    box = _canvas_box(page)
    points = [
        page.evaluate("([x, y]) => window.wecareWorkspace.toScreen(x, y)", [x, 40])
        for x in (40, 60, 80)
    ]
    for sx, sy in points:
        page.mouse.click(box["x"] + sx, box["y"] + sy)
    page.keyboard.press("Enter")
    assert len(page.evaluate("() => window.wecareWorkspace.lesions()")) == 2
    page.click("#ws-send")
    page.click("#ws-confirm-yes")
    page.wait_for_selector(".ws-status.ok, .ws-status.error", timeout=30_000)
    status = page.inner_text("#ws-status")
    assert status.startswith("Refused (422): ") and "encloses no area" in status, status


def _shapes(rows: int, columns: int) -> dict[str, np.ndarray]:
    """Painted masks a radiologist might leave: an ellipse, an L, two blobs, a thin stroke."""
    yy, xx = np.mgrid[:rows, :columns]
    ellipse = ((yy - 120) / 37) ** 2 + ((xx - 150) / 58) ** 2 <= 1
    ell = np.zeros((rows, columns), dtype=bool)
    ell[40:120, 40:60] = True
    ell[100:120, 40:140] = True
    two = (((yy - 60) / 15) ** 2 + ((xx - 250) / 20) ** 2 <= 1) | (
        ((yy - 200) / 25) ** 2 + ((xx - 80) / 12) ** 2 <= 1
    )
    stroke = np.abs(yy - 0.4 * xx - 60) <= 2.5
    stroke &= (xx > 150) & (xx < 300)
    return {"ellipse": ellipse, "l-shape": ell, "two blobs": two, "thin stroke": stroke}


def test_workspace_brush_tracing_rasterises_back_on_the_server_to_the_painted_pixels(
    site: Site, page: Any
) -> None:
    """The editor's raster -> polygon tracing (JS) against dicom_io.polygons.polygons_to_mask:
    what the server stores is what was painted, but for pixels along the outline."""
    _log_in(page, site.base_url, f"/jobs/{site.job_id}")
    page.wait_for_selector("#workspace[data-ready=true]")
    rows, columns = 256, 320
    for name, painted in _shapes(rows, columns).items():
        traced = page.evaluate(
            """([bits, rows, columns]) => window.wecareWorkspace.trace(
                Uint8Array.from(bits), rows, columns)""",
            [painted.astype(np.uint8).ravel().tolist(), rows, columns],
        )
        components = 2 if name == "two blobs" else 1
        assert len(traced) == components, name
        server = polygons_to_mask(
            [Polygon(tuple((x, y) for x, y in poly)) for poly in traced], (rows, columns)
        ).astype(bool)
        iou = (server & painted).sum() / (server | painted).sum()
        assert iou > (0.9 if name == "thin stroke" else 0.97), (name, iou)
        # Every disagreeing pixel lies on the painted region's edge (one pixel either side).

        edge = ndimage.binary_dilation(painted) & ~ndimage.binary_erosion(painted)
        assert not ((server ^ painted) & ~edge).any(), name


def test_workspace_accept_then_reject_are_recorded_and_shown(site: Site, page: Any) -> None:
    """Accept sends the AI outline as the radiologist's (a SEG and an SR); reject sends an SR
    saying no lesion (no SEG); each answer's UIDs are shown, and the frame shows the latest."""
    _log_in(page, site.base_url, f"/jobs/{site.job_id}")
    page.wait_for_selector("#workspace[data-ready=true]")
    page.click("#ws-next-lesion")
    _wait_frame_drawn(page, LESION_FRAME)
    answers = []
    for action, button in (("accept", "#ws-accept"), ("reject", "#ws-reject")):
        with page.expect_response(lambda r: r.url.endswith("/review")) as answer:
            page.click(button)
            assert "image 1" in page.inner_text("#ws-confirm")
            page.click("#ws-confirm-yes")
        assert answer.value.status == 202, (action, answer.value.text())
        body = answer.value.json()
        answers.append(body)
        page.wait_for_selector(".ws-status.ok")
        status = page.inner_text("#ws-status")
        assert body["sr_sop_instance_uid"] in status
        if body["seg_sop_instance_uid"]:
            assert body["seg_sop_instance_uid"] in status
        page.wait_for_function(
            "(w) => (document.getElementById('ws-frame-review') || {}).textContent?.includes(w)",
            arg="accepted" if action == "accept" else "rejected",
        )
    accepted, rejected = answers
    assert accepted["seg_sop_instance_uid"] and rejected["seg_sop_instance_uid"] is None
    assert accepted["sr_sop_instance_uid"] != rejected["sr_sop_instance_uid"]
    assert page.errors == []  # type: ignore[attr-defined]


def test_workspace_values_from_dicom_are_shown_as_text_never_run(
    site: Site, page: Any, engine: Engine
) -> None:
    """A patient ID or scanner name carrying markup is shown as those characters."""
    with session_scope(engine) as s:
        path = Path(s.scalars(select(Instance.path)).one())
    ds = dcmread(path)
    ds.PatientID = '<img src=x onerror="window.pwned=1">'
    ds.ManufacturerModelName = "<script>window.pwned=2</script>"
    ds.save_as(path, enforce_file_format=True)
    _log_in(page, site.base_url, f"/jobs/{site.job_id}")
    page.wait_for_selector("#workspace[data-ready=true]")
    assert page.inner_text("#ws-patient-id") == ds.PatientID
    assert page.inner_text("#ws-scanner").endswith(ds.ManufacturerModelName)
    assert page.evaluate("() => window.pwned") is None
    assert page.locator("#ws-side img, #ws-side script").count() == 0


def test_workspace_two_images_tabs_and_frame_strip(
    site: Site, page: Any, engine: Engine, data_dir: DataDir, tmp_path: Path
) -> None:
    """A study of a single-frame image and a clip: one tab each; the clip's class strip
    jumps to the frame clicked; edits are kept per image."""
    from tests.service.test_workspace import store_study, two_image_study

    job_id = store_study(engine, data_dir, two_image_study(tmp_path / "two"))
    models = ModelProvider(None, "cpu", None, model=ThresholdModel())
    assert work_once(site.settings, engine, data_dir, models, "host:0") == job_id
    export_once(site.settings, engine)
    _log_in(page, site.base_url, f"/jobs/{job_id}")
    page.wait_for_selector("#workspace[data-ready=true]")
    tabs = page.locator(".ws-image-tab")
    assert tabs.count() == 2
    assert page.locator("#ws-scrubber").is_hidden()  # image 1: a single frame
    assert page.text_content("#ws-frame-class") == "malignant"
    assert page.inner_text("#ws-laterality") == "Both"
    tabs.nth(1).click()
    _wait_frame_drawn(page, 1)
    assert page.inner_text("#ws-frame-label") == "Frame 1 / 5"
    assert page.eval_on_selector_all(".ws-mark", "ms => ms.map(m => m.dataset.frame)") == [
        "2",
        "3",
    ]
    strip = page.locator("#ws-strip").bounding_box()
    page.mouse.click(strip["x"] + strip["width"] * 0.25, strip["y"] + strip["height"] / 2)
    _wait_frame_drawn(page, 2)  # a quarter of the way along 5 frames: frame 2
    assert page.text_content("#ws-frame-class") == "malignant"
    page.click("#ws-prev")
    assert page.text_content("#ws-frame-class") == "normal"
    assert page.errors == []  # type: ignore[attr-defined]
