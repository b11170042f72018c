"""Average the weights of a run's last epochs (stochastic weight averaging of the cosine tail).

``python -m inference.average runs/x/epochs/ep_070.pt ... --out runs/x/swa.pt``

The epochs near the end of a cosine schedule sit around one minimum; their mean usually lies
nearer its centre than any single epoch (Izmailov et al., UAI 2018). Batch-norm statistics of an
averaged network are not the average of the epochs' statistics, so they are recomputed with
``torch.optim.swa_utils.update_bn`` over the training images (no augmentation). The result is a
checkpoint in the training format, so ``python -m inference.export export`` takes it as it is.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, update_bn

from inference.data import run_split_arrays
from inference.networks import build_network
from inference.transforms import network_input


def _batches(images: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """Normalised (B, 1, S, S) float batches of (N, S, S) uint8 images, in order."""
    for i in range(0, len(images), batch_size):
        yield network_input(images[i : i + batch_size])


def average_checkpoints(
    paths: Sequence[Path], out: Path, bn_images: np.ndarray | None = None, batch_size: int = 32,
) -> dict:
    """Write the mean of the checkpoints' weights to ``out``; returns the written checkpoint.

    Parameters
    ----------
    paths : sequence of Path
        Training checkpoints of **one** run (same architecture and image size).
    bn_images : (N, S, S) uint8, optional
        Images to recompute batch-norm statistics on (the run's training images); without them
        the averaged running statistics are kept.
    """
    if not paths:
        raise ValueError("need at least one checkpoint to average")
    cks = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    first = cks[0]
    for p, ck in zip(paths, cks, strict=True):
        if (ck["arch"], ck["image_size"]) != (first["arch"], first["image_size"]):
            raise ValueError(f"{p}: arch/image size differ from {paths[0]}")
    net = build_network(first["arch"])
    swa = AveragedModel(net, use_buffers=True)
    for ck in cks:
        net.load_state_dict(ck["model"])
        swa.update_parameters(net)
    if bn_images is not None:
        update_bn(_batches(bn_images, batch_size), swa)
    state = {k.removeprefix("module."): v for k, v in swa.state_dict().items()
             if k != "n_averaged"}
    net.load_state_dict(state)
    epochs = [int(ck["epoch"]) for ck in cks]
    result = {
        "model": net.state_dict(), "arch": first["arch"], "image_size": first["image_size"],
        "classes": first["classes"], "epoch": max(epochs), "averaged_epochs": epochs,
        "bn_recomputed": bn_images is not None, "metrics": first.get("metrics", {}),
        "config": first["config"], "saved_at": datetime.now(UTC).isoformat(),
        "init_source": first.get("init_source"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, out)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: average, recompute BN on the run's training split, print val metrics."""
    p = argparse.ArgumentParser(prog="python -m inference.average", description=__doc__)
    p.add_argument("checkpoints", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num-threads", type=int, default=2)
    p.add_argument("--no-bn-update", action="store_true")
    args = p.parse_args(argv)
    from inference.train import validation_metrics

    torch.set_num_threads(args.num_threads)
    ck = torch.load(args.checkpoints[0], map_location="cpu", weights_only=False)
    cfg = ck["config"]
    train_arrays, val_arrays = run_split_arrays(cfg, int(ck["image_size"]))
    bn = None if args.no_bn_update else train_arrays["images"]
    result = average_checkpoints(args.checkpoints, args.out, bn)
    net = build_network(result["arch"])
    net.load_state_dict(result["model"])
    metrics, _ = validation_metrics(net, val_arrays, bool(cfg.get("flip_tta", False)))
    result["metrics"] = metrics
    torch.save(result, args.out)
    print(json.dumps({"out": str(args.out), "averaged_epochs": result["averaged_epochs"],
                      "val": metrics}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
