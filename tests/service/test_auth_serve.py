"""The real `wecare serve` process with log-in on: anonymous refused, first admin logs in, a
token made by the CLI works for scripts, and no secret reaches the logs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.factories import make_us_image
from tests.integration.peers import REPO_ROOT, wecare

pytestmark = pytest.mark.integration


def test_serve_with_auth_anonymous_refused_initial_admin_and_token_work(tmp_path: Path) -> None:
    with wecare(tmp_path, {}, auth={"enabled": True}) as server:
        base = f"http://127.0.0.1:{server.web_port}"
        with httpx.Client(base_url=base, timeout=30) as anon:
            assert anon.get("/health").status_code == 200
            refused = anon.get("/api/jobs")
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            page = anon.get("/", headers={"accept": "text/html"})
            assert page.status_code == 303 and page.headers["location"].startswith("/login")

        password_file = server.data_dir / "initial-admin-password"
        assert password_file.stat().st_mode & 0o077 == 0
        password = password_file.read_text().strip()

        with httpx.Client(base_url=base, timeout=30) as browser:
            form = browser.get("/login").text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
            wrong = browser.post(
                "/login", data={"username": "admin", "password": "nope", "csrf_token": csrf}
            )
            assert wrong.status_code == 401
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', wrong.text).group(1)  # type: ignore[union-attr]
            ok = browser.post(
                "/login", data={"username": "admin", "password": password, "csrf_token": csrf}
            )
            assert ok.status_code == 303
            assert browser.get("/api/jobs").status_code == 200
            assert browser.get("/admin", headers={"accept": "text/html"}).status_code == 200

        config = tmp_path / "wecare.toml"
        created = subprocess.run(
            [sys.executable, "-m", "service.cli", "token", "create", "uploader", "--user", "admin"]
            + ["--config", str(config)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=120,
            check=True,
        )
        token = created.stdout.strip().splitlines()[-1]
        assert token.startswith("wct_")
        with httpx.Client(
            base_url=base, timeout=60, headers={"authorization": f"Bearer {token}"}
        ) as script:
            upload = script.post(
                "/api/instances",
                content=make_us_image(tmp_path / "us.dcm").read_bytes(),
                headers={"content-type": "application/dicom"},
            )
            assert upload.status_code == 201
            audit = script.get("/api/audit", params={"action": "upload"}).json()
            assert audit["count"] == 1 and audit["data"][0]["token_name"] == "uploader"

        logs = server.log_text()
        for path in (server.data_dir / "logs").glob("*"):
            logs += path.read_text(errors="replace")
    assert str(password_file) in logs  # the path is logged, the password never
    assert password not in logs
    assert token not in logs
