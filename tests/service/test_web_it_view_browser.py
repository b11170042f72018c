"""The IT view in headless Chromium driven by Playwright (Debian's /usr/bin/chromium through
`executable_path`, no browser download): /docs and /redoc render from the package's own files
with every request to a host other than 127.0.0.1 aborted (and none attempted), and the
overview and job list render their plots and delivery column.

Screenshots land in the test's tmp_path (and in $WECARE_SCREENSHOT_DIR when set, to look at).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image
from sqlalchemy import Engine

from storage.db import session_scope
from storage.models import Job, JobState, OutboxState
from tests.requirements import skip_unless
from tests.service.test_web import add_job
from tests.service.test_web_browser import CHROMIUM, app_under_test, base_url

__all__ = ["app_under_test", "base_url"]  # fixtures, used by name

pytestmark = [
    pytest.mark.integration,
    skip_unless(CHROMIUM is not None, "chromium not installed"),
    skip_unless(importlib.util.find_spec("playwright") is not None, "playwright not installed"),
]


class Guarded:
    """A Playwright page whose requests to anything but 127.0.0.1 are aborted and recorded."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.outside: list[str] = []
        self.csp_errors: list[str] = []
        page.route("**/*", self._route)
        page.on(
            "console",
            lambda m: (
                self.csp_errors.append(m.text) if "Content Security Policy" in m.text else None
            ),
        )

    def _route(self, route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()


@pytest.fixture()
def browser_page() -> Iterator[Guarded]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            yield Guarded(page)
        finally:
            browser.close()


def _save(page: Any, out: Path, full_page: bool = False) -> Path:
    page.screenshot(path=str(out), full_page=full_page)
    keep = os.environ.get("WECARE_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(keep) / out.name)
    with Image.open(out) as image:
        assert image.size[0] == page.viewport_size["width"]
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20  # not blank
    return out


def test_api_docs_in_chromium_render_offline_from_vendored_files(
    base_url: str, browser_page: Guarded, tmp_path: Path
) -> None:
    page = browser_page.page
    page.goto(f"{base_url}/docs")
    title = page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
    assert title is not None and "WeCare" in title.inner_text()
    page.wait_for_selector(".opblock-tag-section", timeout=10_000)  # the operations list
    assert "/api/jobs" in page.inner_text(".swagger-ui")
    _save(page, tmp_path / "api-docs.png")
    assert browser_page.csp_errors == []  # Swagger UI needs nothing the docs CSP forbids

    page.goto(f"{base_url}/redoc")
    heading = page.wait_for_selector("h1", timeout=20_000)
    assert heading is not None and "WeCare" in heading.inner_text()
    _save(page, tmp_path / "api-redoc.png")

    assert browser_page.outside == []  # nothing tried to leave the machine
    # ReDoc 2 always draws Redocly's logo from its CDN in the sidebar footer (it hides the img
    # on error); the docs CSP (img-src 'self' data:) stops it before any request is made.
    assert all("cdn.redoc.ly/redoc/logo-mini.svg" in e for e in browser_page.csp_errors), (
        browser_page.csp_errors
    )


def test_overview_and_job_list_in_chromium_show_plots_and_deliveries(
    base_url: str, engine: Engine, browser_page: Guarded, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    for n in range(18):
        job_id = add_job(
            engine,
            state=JobState.FAILED if n % 7 == 3 else JobState.DONE,
            study_uid=f"1.2.826.0.1.3680043.8.498.2{n:03d}",
            accession=f"ACC-2{n:03d}",
            outbox=[("PACS", OutboxState.SENT)],
            error="export failed" if n % 7 == 3 else None,
            error_code="export_failed" if n % 7 == 3 else None,
        )
        with session_scope(engine) as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.created_at = now - timedelta(hours=n % 6, minutes=5)
            job.finished_at = now - timedelta(hours=n % 6)
            job.predicted_class = ("normal", "benign", "malignant", "benign")[n % 4]
            job.stage_seconds = {
                "decode": 0.2 + 0.05 * n,
                "inference": 1.0 + 0.3 * (n % 5),
                "seg_sr": 0.5 + 0.1 * (n % 3),
            }
    stuck = add_job(
        engine,
        state=JobState.EXPORTING,
        study_uid="1.2.826.0.1.3680043.8.498.2999",
        accession="ACC-2999",
        outbox=[("PACS", OutboxState.PENDING), ("ARCHIVE", OutboxState.SENT)],
    )
    with session_scope(engine) as s:
        job = s.get(Job, stuck)
        assert job is not None
        for output in job.outputs:
            for item in output.outbox:
                if item.destination == "PACS":
                    item.last_error = "PACS (10.20.30.40:104): no association (unreachable)"
        job.created_at = now  # newest: first in the list

    page = browser_page.page
    page.goto(f"{base_url}/overview")
    for plot in ("plot-throughput", "plot-latency", "plot-classes", "plot-failures"):
        assert page.locator(f"#{plot} svg rect").count() > 0, plot
    _save(page, tmp_path / "overview.png", full_page=True)

    page.set_viewport_size({"width": 1700, "height": 700})  # the list is wide
    page.goto(f"{base_url}/?refresh=0")
    row = page.locator(f"#job-{stuck}")
    assert "PACS (10.20.30.40:104): no association" in row.inner_text()
    assert "pending" in row.locator("td.delivery").inner_text()
    _save(page, tmp_path / "job-list-delivery.png")
    assert browser_page.outside == []
