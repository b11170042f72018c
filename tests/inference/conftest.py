"""Tiny synthetic datasets in the BUSI and BUS-BRA layouts (a few KB, generated per test)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]

# One intra-op thread: the suite runs beside training jobs on a 2-core box, where more threads
# only add contention.
torch.set_num_threads(1)


def _lesion_image(rng: np.random.Generator, size: tuple[int, int], lesion: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Speckle background, plus a dark ellipse when ``lesion``: (uint8 image, bool mask)."""
    h, w = size
    img = rng.normal(140, 25, size=(h, w))
    mask = np.zeros((h, w), dtype=bool)
    if lesion:
        yy, xx = np.mgrid[:h, :w]
        cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
        ry, rx = rng.uniform(0.12, 0.2) * h, rng.uniform(0.12, 0.25) * w
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        img[mask] = rng.normal(40, 10, size=int(mask.sum()))
    return np.clip(img, 0, 255).astype(np.uint8), mask


def make_busi(root: Path, per_class: int = 4, size: tuple[int, int] = (48, 56), seed: int = 0
              ) -> Path:
    """Write a BUSI-layout folder: ``<class>/<class>_<n>.png``, masks, ``manifest.csv``."""
    rng = np.random.default_rng(seed)
    rows = []
    group = 0
    for label in ("normal", "benign", "malignant"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(1, per_class + 1):
            img, mask = _lesion_image(rng, size, lesion=label != "normal")
            name = f"{label}/{label}_{n}"
            Image.fromarray(img).save(root / f"{name}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / f"{name}_mask.png")
            rows.append({"image": f"{name}.png", "mask": f"{name}_mask.png", "label": label,
                         "group": group, "original_name": f"{label} ({n})",
                         "lesion_masks": int(label != "normal")})
            group += 1
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


SCANNERS = ("GE Logiq 5 @10-12MHz", "GE Logiq 7 @10-14MHz")  # as BUS-BRA writes them


def make_busbra(root: Path, cases: int = 4, size: tuple[int, int] = (40, 44), seed: int = 1
                ) -> Path:
    """Write a BUS-BRA-layout folder: ``Images/``, ``Masks/``, ``bus_data.csv`` (2 sides/case)."""
    rng = np.random.default_rng(seed)
    (root / "Images").mkdir(parents=True, exist_ok=True)
    (root / "Masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for case in range(1, cases + 1):
        pathology = "malignant" if case % 2 else "benign"
        for side in ("l", "r"):
            img, mask = _lesion_image(rng, size, lesion=True)
            ident = f"{case:04d}-{side}"
            Image.fromarray(img).save(root / "Images" / f"bus_{ident}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "Masks" / f"mask_{ident}.png")
            rows.append({"ID": f"bus_{ident}", "Case": case, "Histology": "x",
                         "Pathology": pathology, "BIRADS": 4,
                         "Device": SCANNERS[(case - 1) // 2 % 2],
                         "Width": size[1], "Height": size[0],
                         "Side": "left" if side == "l" else "right", "BBOX": "[0,0,1,1]"})
    with open(root / "bus_data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture
def busi_dir(tmp_path: Path) -> Path:
    """A 12-image synthetic BUSI folder."""
    return make_busi(tmp_path / "busi")


@pytest.fixture
def busbra_dir(tmp_path: Path) -> Path:
    """An 8-image synthetic BUS-BRA folder (4 patients)."""
    return make_busbra(tmp_path / "busbra")


def datasets_dir() -> Path | None:
    """The shared datasets folder: $WECARE_DATASETS, else ../shared/datasets next to the repo."""
    env = os.environ.get("WECARE_DATASETS")
    path = Path(env) if env else REPO.parent / "shared" / "datasets"
    return path if (path / "busi" / "manifest.csv").is_file() else None
