#!/usr/bin/env python3
"""Vendor the API docs' front-end files (Swagger UI, ReDoc) from the npm registry.

The site has no internet: /docs and /redoc must load their script and style from the package
itself, never a CDN. This script fetches the pinned packages with `npm pack`, checks each
tarball against the registry's published integrity (sha512, `npm view … dist.integrity`),
extracts the few files the pages need into service/web/static/vendor/ and writes
VENDORED.json (versions, integrity, sha256 of every file). Idempotent: when every file's
sha256 already matches VENDORED.json for the pinned versions it does nothing (no network).

Usage: python scripts/vendor_frontend.py [--check]   (--check: verify only, exit 1 on drift)
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO / "service" / "web" / "static" / "vendor"
MANIFEST = VENDOR / "VENDORED.json"

#: package → (pinned version, {file in the tarball: name under vendor/<package>/}).
PINS: dict[str, tuple[str, dict[str, str]]] = {
    "swagger-ui-dist": (
        "5.36.0",
        {
            "package/swagger-ui-bundle.js": "swagger-ui-bundle.js",
            "package/swagger-ui.css": "swagger-ui.css",
            "package/LICENSE": "LICENSE",
        },
    ),
    "redoc": (
        "2.5.4",  # 3.x ships OpenTelemetry to a Redocly host; 2.x sends nothing
        {
            "package/bundles/redoc.standalone.js": "redoc.standalone.js",
            "package/LICENSE": "LICENSE",
        },
    ),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def up_to_date() -> bool:
    """True when VENDORED.json names the pinned versions and every file's sha256 matches."""
    if not MANIFEST.is_file():
        return False
    manifest = json.loads(MANIFEST.read_text())
    for package, (version, files) in PINS.items():
        entry = manifest.get(package)
        if not entry or entry.get("version") != version:
            return False
        for name in files.values():
            path = VENDOR / package / name
            if not path.is_file() or entry["files"].get(name) != sha256(path):
                return False
    return True


def registry_integrity(package: str, version: str) -> str:
    """The tarball's integrity as the registry publishes it ('sha512-<base64>')."""
    out = subprocess.run(
        ["npm", "view", f"{package}@{version}", "dist.integrity"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not out.startswith("sha512-"):
        raise SystemExit(f"{package}@{version}: no sha512 integrity in the registry metadata")
    return out


def fetch(package: str, version: str, work: Path) -> dict[str, object]:
    """npm pack, check the integrity, extract the pinned files; the manifest entry."""
    expected = registry_integrity(package, version)
    subprocess.run(
        ["npm", "pack", f"{package}@{version}", "--pack-destination", str(work)],
        check=True,
        capture_output=True,
        text=True,
    )
    [tarball] = work.glob(f"{package}-{version}.tgz")
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != expected:
        raise SystemExit(f"{package}@{version}: tarball {digest} != registry {expected}")
    _, files = PINS[package]
    out_dir = VENDOR / package
    out_dir.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    with tarfile.open(tarball) as tar:
        for member, name in files.items():
            source = tar.extractfile(member)
            if source is None:
                raise SystemExit(f"{package}@{version}: {member} missing from the tarball")
            (out_dir / name).write_bytes(source.read())
            hashes[name] = sha256(out_dir / name)
    return {"version": version, "integrity": expected, "files": hashes}


def main(argv: list[str]) -> int:
    if up_to_date():
        print("vendored front-end files are up to date")
        return 0
    if "--check" in argv:
        print("vendored front-end files differ from the pins: run scripts/vendor_frontend.py")
        return 1
    manifest: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for package, (version, _) in PINS.items():
            manifest[package] = fetch(package, version, Path(tmp))
            print(f"vendored {package}@{version}")
    MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
