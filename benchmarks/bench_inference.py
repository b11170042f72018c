"""Throughput of the bundled model on CPU: segmentation + classification, batch 1 and batch 8.

Run: ``python benchmarks/bench_inference.py [--threads N] [--seconds S] [--size H W]
[--precision P] [--compile C] [--weights model.pt] [--no-flip-tta] [--no-fold-bn]``. Images
are 256x256 float32 by default (``--size 300 400`` for a typical B-mode crop), so the figure
includes the resize to the model grid, the resize of the mask back and post-processing (and the
flip test-time augmentation when the model's settings ask for it): what the service pays per
frame. ``--compile`` defaults to the service's ``auto`` (``torch.compile`` on CPU when a C++
compiler is installed); the compile itself is timed apart, at warm-up, as the service does it
at start-up. Prints measured figures only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import numpy as np
import torch

from inference.compiled import COMPILE_MODES
from inference.model import PRECISIONS, Model


def _rate(model: Model, batch: int, seconds: float, with_cam: bool,
          size: tuple[int, int] = (256, 256)) -> tuple[float, int]:
    """Images per second over repeated calls of ``predict`` on ``batch`` images (after warm-up)."""
    rng = np.random.default_rng(0)
    images = [rng.random(size, dtype=np.float32) for _ in range(batch)]
    model.predict(images, with_cam=with_cam)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.predict(images, with_cam=with_cam)
        n += batch
    return n / (time.perf_counter() - t0), n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="inference arithmetic (auto: what the service picks on this CPU)")
    p.add_argument("--compile", choices=COMPILE_MODES, default="auto",
                   help="torch.compile the network (auto: what the service picks here)")
    p.add_argument("--weights", default=None, help="model.pt (default: the bundled one)")
    p.add_argument("--no-flip-tta", action="store_true",
                   help="measure without the flip test-time augmentation the model asks for")
    p.add_argument("--no-fold-bn", action="store_true",
                   help="keep BatchNorms unfolded (to measure what folding saves)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = Model.load(args.weights, device="cpu", precision=args.precision,
                       fold_bn=not args.no_fold_bn, compile=args.compile)
    warm_up_s = model.warm_up()
    print(f"network: {model.compile_state} (warm-up {warm_up_s:.1f} s)", flush=True)
    if args.no_flip_tta:
        pp = {**model.meta.get("postprocess", {}), "flip_tta": False}
        model = dataclasses.replace(model, meta={**model.meta, "postprocess": pp})
    results = []
    for with_cam in (False, True):
        for batch in (1, 8):
            rate, n = _rate(model, batch, args.seconds, with_cam, tuple(args.size))
            results.append({"batch": batch, "with_cam": with_cam, "images_per_s": round(rate, 1),
                            "images": n})
            print(f"batch {batch:>2} cam={str(with_cam):<5} {rate:7.1f} img/s ({n} images)",
                  flush=True)
    print(json.dumps({"model": model.version, "image_size": model.image_size,
                      "input_size": list(args.size),
                      "flip_tta": bool(model.postprocess["flip_tta"]),
                      "members": model.members, "precision": model.precision,
                      "network": model.compile_state, "warm_up_s": round(warm_up_s, 1),
                      "fold_bn": not args.no_fold_bn,
                      "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                      "torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
