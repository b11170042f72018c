"""Our SEG in a real viewer: OHIF 3.13.2 on Orthanc (DICOMweb), headless Chromium.

`shared/tools/viewer-check/run_check.sh SOURCE SEG OUT.png` (beside the checkout, as in
CI; `WECARE_VIEWER_CHECK` may point at it) loads a source and the SEG the pipeline made
for it and screenshots the viewer. The check, per kind of SEG we make:

1. Find where the image is drawn: the synthetic sources have a grey speckle background
   (R = G = B between 30 and 100) that nothing else in OHIF's dark-blue UI has; the
   columns and rows where most pixels are such grey give the drawn image's box, hence a
   scale per axis (x and y separately: the viewer may not keep square pixels).
2. Find the overlay: yellow pixels (our segment's CIELab colour blended over grey,
   R − B > 80 and G − B > 60) inside that box.
3. Project the model's mask bounding box into screenshot coordinates with that scale,
   dilate it by 3 % of the drawn image size (outline width, rounding), and require
   ≥ 80 % of the overlay pixels inside it, the overlay to cover ≥ 50 % of the projected
   mask area, and the overlay centroid within 3 % of the projected mask centroid.

The screenshots are written to `WECARE_VIEWER_SHOTS` when set (to look at them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from service.pipeline import SourceImage, process_study
from tests.factories import lesion_mask, make_us_image
from tests.requirements import require_or_skip, skip_unless
from tests.service.test_pipeline import ThresholdModel

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(
    os.environ.get(
        "WECARE_VIEWER_CHECK", ROOT.parent / "shared" / "tools" / "viewer-check" / "run_check.sh"
    )
)
ROWS, COLUMNS = 192, 256
CENTER, RADII = (60, 170), (25, 40)  # off centre: a misplaced overlay cannot pass

# (id, make_us_image arguments, frames with the lesion). The first runs in CI.
KINDS = [
    ("single-frame-grey", {"photometric": "MONOCHROME2"}, None),
    ("single-frame-rgb", {"photometric": "RGB"}, None),
    ("single-frame-palette", {"photometric": "PALETTE COLOR"}, None),
    ("single-frame-jpeg-ybr422", {"photometric": "RGB", "transfer_syntax": "jpeg-baseline"}, None),
    ("multi-frame-clip", {"photometric": "MONOCHROME2", "frames": 6}, [2, 3, 4]),
]

pytestmark = [
    pytest.mark.integration,
    skip_unless(SCRIPT.exists(), f"viewer check script absent: {SCRIPT}", shared=SCRIPT),
    skip_unless(shutil.which("chromium") is not None, "chromium not installed"),
    skip_unless(Path("/usr/sbin/Orthanc").exists(), "Orthanc not installed"),
]


def _screenshot(source: Path, seg: Path, png: Path) -> np.ndarray:
    from PIL import Image

    done = subprocess.run(
        ["bash", str(SCRIPT), str(source), str(seg), str(png)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if done.returncode == 2 and "missing:" in done.stdout:
        require_or_skip(False, done.stdout.strip())  # OHIF not fetchable (offline, no cache)
    assert done.returncode == 0, done.stdout + done.stderr
    shots = os.environ.get("WECARE_VIEWER_SHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(shots) / png.name)
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def _drawn_image_box(shot: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the grey speckle image in the screenshot."""
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    grey = (abs(r - g) < 10) & (abs(g - b) < 10) & (r > 30) & (r < 110)
    columns = np.nonzero(grey.sum(axis=0) > 0.5 * grey.sum(axis=0).max())[0]
    left, right = int(columns.min()), int(columns.max()) + 1
    band = grey[:, left:right]
    rows = np.nonzero(band.sum(axis=1) > 0.5 * band.sum(axis=1).max())[0]
    return int(rows.min()), int(rows.max()) + 1, left, right


def _check_overlay(shot: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    top, bottom, left, right = _drawn_image_box(shot)
    scale_y, scale_x = (bottom - top) / mask.shape[0], (right - left) / mask.shape[1]
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    overlay = (r - b > 80) & (g - b > 60)
    overlay[:top] = overlay[bottom:] = False
    overlay[:, :left] = overlay[:, right:] = False
    ys, xs = np.nonzero(overlay)
    assert len(ys) > 100, "no overlay drawn over the image"
    rows, cols = np.nonzero(mask)
    margin_y, margin_x = 0.03 * (bottom - top), 0.03 * (right - left)
    y0, y1 = top + rows.min() * scale_y - margin_y, top + (rows.max() + 1) * scale_y + margin_y
    x0, x1 = left + cols.min() * scale_x - margin_x, left + (cols.max() + 1) * scale_x + margin_x
    inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    projected_area = mask.sum() * scale_x * scale_y
    centre_y, centre_x = top + (rows.mean() + 0.5) * scale_y, left + (cols.mean() + 0.5) * scale_x
    figures = {
        "inside": float(inside.mean()),
        "coverage": float(inside.sum() / projected_area),
        "centroid_dy": float(abs(ys.mean() - centre_y) / (bottom - top)),
        "centroid_dx": float(abs(xs.mean() - centre_x) / (right - left)),
        "scale_x": scale_x,
        "scale_y": scale_y,
    }
    assert figures["inside"] >= 0.8, figures
    assert figures["coverage"] >= 0.5, figures
    assert figures["centroid_dy"] < 0.03 and figures["centroid_dx"] < 0.03, figures
    return figures


@pytest.mark.parametrize(
    ("kwargs", "lesion_frames"),
    [
        pytest.param(kw, frames, id=name, marks=[] if index == 0 else [pytest.mark.slow])
        for index, (name, kw, frames) in enumerate(KINDS)
    ],
)
def test_ohif_shows_our_seg_overlay_on_the_lesion(
    tmp_path: Path, kwargs: dict, lesion_frames: list[int] | None
) -> None:
    extra = {"lesion_frames": [n - 1 for n in lesion_frames]} if lesion_frames else {}
    source = make_us_image(
        tmp_path / "source.dcm",
        rows=ROWS,
        columns=COLUMNS,
        lesion=CENTER,
        lesion_radii=RADII,
        **kwargs,
        **extra,
    )
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    result = process_study(
        [SourceImage(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), source)],
        ThresholdModel(),
        tmp_path / "out",
        explain=False,
    )
    (seg,) = [o.path for o in result.outputs if o.kind == "seg"]
    if lesion_frames:
        seg_ds = pydicom.dcmread(seg)
        assert int(seg_ds.NumberOfFrames) == len(lesion_frames)
    started = time.perf_counter()
    shot = _screenshot(source, seg, tmp_path / f"{tmp_path.name}.png")
    # The model's mask: the lesion inside the 10-pixel-margin tissue region.
    mask = lesion_mask(ROWS, COLUMNS, CENTER, RADII)
    figures = _check_overlay(shot, mask)
    print(f"viewer check {time.perf_counter() - started:.1f} s: {figures}")
