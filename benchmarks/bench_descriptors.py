"""Time of the BI-RADS descriptors per lesion (``describe_lesion``) on real BUSI lesions.

Run: ``python benchmarks/bench_descriptors.py [--images N] [--label L] [--rows R --columns C]
[--repeats K] [--spacing MM] [--baseline OLD_DESCRIPTORS_PY] [--datasets DIR]``.

Takes the first N images of one BUSI class with their ground-truth masks (the manifest's
merged mask) and times ``describe_lesion`` on each, twice: at the native size and resized to
R x C (image bilinear, mask nearest; 600 x 800 by default, the study benchmark's
``bench_pipeline.py`` size), with the spacing given (0.1 mm by default). Each figure is the
best of K passes over all lesions (the machine is shared: the best pass is the least
disturbed), in ms per lesion. With ``--baseline`` (a copy of an older
``inference/descriptors.py``, e.g. from ``git show REV:inference/descriptors.py``) the same
lesions are timed with it in the same process, passes interleaved, and the speedup printed.
Prints measured figures only, then one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inference.descriptors import describe_lesion  # noqa: E402

Lesion = tuple[np.ndarray, np.ndarray]


def _lesions(root: Path, label: str, count: int, size: tuple[int, int] | None) -> list[Lesion]:
    """(uint8 image, bool mask) of the first `count` `label` images with a lesion mask."""
    out: list[Lesion] = []
    with (root / "manifest.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row["label"] != label or len(out) >= count:
                continue
            with Image.open(root / row["image"]) as image, Image.open(root / row["mask"]) as mask:
                grey, lesion = image.convert("L"), mask.convert("L")
                if size is not None:
                    grey = grey.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                    lesion = lesion.resize((size[1], size[0]), Image.Resampling.NEAREST)
                pair = (np.asarray(grey, dtype=np.uint8), np.asarray(lesion) > 0)
            if np.count_nonzero(pair[1]) >= 20:
                out.append(pair)
    return out


def _best_ms(describe: Callable[..., Any], lesions: Sequence[Lesion], spacing: float) -> float:
    """One pass over `lesions`: ms per lesion."""
    t0 = time.perf_counter()
    for image, mask in lesions:
        describe(image, mask, spacing, spacing)
    return (time.perf_counter() - t0) * 1000.0 / len(lesions)


def _load_baseline(path: Path) -> Callable[..., Any]:
    """``describe_lesion`` of an older copy of the module, imported under another name."""
    spec = importlib.util.spec_from_file_location("baseline_descriptors", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.WEIGHTS_DIR = REPO / "inference" / "weights"  # its heads: ours, not beside the copy
    return module.describe_lesion  # type: ignore[no-any-return]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--datasets",
        type=Path,
        default=Path(os.environ.get("WECARE_DATASETS", "/work/shared/datasets")),
    )
    p.add_argument("--label", default="malignant", choices=("benign", "malignant"))
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--rows", type=int, default=600)
    p.add_argument("--columns", type=int, default=800)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--spacing", type=float, default=0.1, help="mm per pixel, both axes")
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="an older inference/descriptors.py to time on the same lesions",
    )
    args = p.parse_args()
    baseline = _load_baseline(args.baseline) if args.baseline else None
    results = []
    for name, size in (
        ("native", None),
        (f"{args.rows}x{args.columns}", (args.rows, args.columns)),
    ):
        lesions = _lesions(args.datasets / "busi", args.label, args.images, size)
        if not lesions:
            raise SystemExit(f"no {args.label} lesion under {args.datasets / 'busi'}")
        load = os.getloadavg()[0]
        describe_lesion(*lesions[0], args.spacing, args.spacing)  # warm-up (head file, caches)
        if baseline is not None:
            baseline(*lesions[0], args.spacing, args.spacing)
        now, old = [], []
        for _ in range(args.repeats):
            now.append(_best_ms(describe_lesion, lesions, args.spacing))
            if baseline is not None:
                old.append(_best_ms(baseline, lesions, args.spacing))
        row: dict[str, Any] = {
            "size": name,
            "lesions": len(lesions),
            "ms_per_lesion": round(min(now), 2),
            "load_avg_1min": round(load, 2),
        }
        line = f"{name:>9}: {len(lesions)} lesions, {min(now):7.2f} ms per lesion"
        if old:
            row["baseline_ms_per_lesion"] = round(min(old), 2)
            row["speedup"] = round(min(old) / min(now), 2)
            line += f" (baseline {min(old):7.2f} ms, speedup {min(old) / min(now):.2f}x)"
        print(line + f", load {load:.2f}", flush=True)
        results.append(row)
    print(
        json.dumps(
            {
                "label": args.label,
                "spacing_mm": args.spacing,
                "repeats": args.repeats,
                "cpu": platform.processor() or platform.machine(),
                "numpy": np.__version__,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
