"""Is this image like the breast ultrasound the model learnt from? An in-distribution score.

A PACS forwards every ultrasound study. Header routing (:mod:`dicom_io.routing`) stops what is
labelled as another body part; this catches what is not labelled, or labelled wrongly: the
image itself is compared with the training images in the classifier's feature space.

Score: the Mahalanobis distance of the classifier's pooled features (the 256 values before its
last layer, on the image and the predicted lesion map) from the training images' mean, with a
Ledoit-Wolf shrunk covariance. Threshold: the ``percentile`` (99) of the distances of the
*validation* images of the sources trained on, so about 1 % of in-scope images from those
sources are refused; images from the unseen vendor (all of UCLM) and from the non-breast files
of pydicom-data and deid-data measure what it does elsewhere (``python -m inference.scope``).

Stored beside the weights as ``scope.npz`` with the sha256 of the ``model.pt`` it was fitted
for; a mismatch turns the check off with a warning rather than scoring with the wrong features.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

log = logging.getLogger(__name__)

SCOPE_FILE = "scope.npz"
DEFAULT_PERCENTILE = 99.0


def classifier_modules(net: nn.Module) -> list[nn.Module]:
    """The MONAI ResNet classifier(s) of a ``cascade`` or ``separate`` network (one per
    ensemble member), in order; empty for architectures without one."""
    return [m for name, m in net.named_modules()
            if name.split(".")[-1] == "classifier" and hasattr(m, "avgpool")]


def pooled_features(net: nn.Module, x: torch.Tensor, seg_prob: torch.Tensor | None
                    ) -> np.ndarray:
    """(B, 256 x members) pooled classifier features for normalised input ``x`` (B, 1, S, S);
    ``seg_prob`` (B, 1, S, S) is the lesion probability a cascade's classifier also reads."""
    feats = []
    with torch.no_grad():
        for clf in classifier_modules(net):
            inp = x
            if clf.conv1.in_channels == 2:  # type: ignore[union-attr]
                if seg_prob is None:
                    raise ValueError("a cascade classifier needs the lesion probability")
                inp = torch.cat([x, seg_prob.to(x.dtype)], dim=1)
            h = clf.act(clf.bn1(clf.conv1(inp)))  # type: ignore[operator]
            if not getattr(clf, "no_max_pool", False):
                h = clf.maxpool(h)  # type: ignore[operator]
            for layer in (clf.layer1, clf.layer2, clf.layer3, clf.layer4):  # type: ignore[union-attr]
                h = layer(h)
            feats.append(clf.avgpool(h).flatten(1).float())  # type: ignore[operator]
    return torch.cat(feats, dim=1).cpu().numpy()


@dataclass(frozen=True)
class Scope:
    """Mean, precision and threshold of the in-distribution score."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    percentile: float
    weights_sha256: str
    fitted_on: str  # which images gave the mean and the threshold, in words

    def distances(self, features: np.ndarray) -> np.ndarray:
        d = features - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def in_scope(self, features: np.ndarray) -> np.ndarray:
        return self.distances(features) <= self.threshold

    def save(self, path: Path) -> None:
        np.savez_compressed(path, mean=self.mean.astype(np.float32),
                            precision=self.precision.astype(np.float32),
                            meta=np.array(json.dumps({
                                "threshold": self.threshold, "percentile": self.percentile,
                                "weights_sha256": self.weights_sha256,
                                "fitted_on": self.fitted_on})))

    @classmethod
    def load(cls, path: Path) -> Scope:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return cls(mean=z["mean"].astype(np.float64),
                       precision=z["precision"].astype(np.float64), **meta)


def fit_scope(train_features: np.ndarray, val_features: np.ndarray, weights_sha256: str,
              fitted_on: str, percentile: float = DEFAULT_PERCENTILE) -> Scope:
    """Mean and shrunk covariance from the training images, threshold from validation."""
    lw = LedoitWolf().fit(train_features.astype(np.float64))
    partial = Scope(mean=lw.location_, precision=lw.precision_, threshold=np.inf,
                    percentile=percentile, weights_sha256=weights_sha256, fitted_on=fitted_on)
    threshold = float(np.percentile(partial.distances(val_features), percentile))
    return Scope(mean=lw.location_, precision=lw.precision_, threshold=threshold,
                 percentile=percentile, weights_sha256=weights_sha256, fitted_on=fitted_on)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file: a model's version and its scope check name the exact weights."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_scope(weights_dir: Path, weights_file: Path) -> Scope | None:
    """The bundle's scope check, or None (absent, or fitted for other weights: warned)."""
    path = weights_dir / SCOPE_FILE
    if not path.is_file():
        return None
    scope = Scope.load(path)
    if scope.weights_sha256 != file_sha256(weights_file):
        log.warning("scope check off: %s was fitted for other weights than %s", path.name,
                    weights_file.name)
        return None
    return scope


def array_features(net: nn.Module, images: np.ndarray, flip_tta: bool, batch_size: int = 32
                   ) -> np.ndarray:
    """Features of (N, S, S) uint8 images, the lesion map from the network's own segmenter."""
    from inference.model import forward_tta
    from inference.transforms import network_input

    net.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = network_input(images[i: i + batch_size])
        with torch.no_grad():
            seg_prob, _ = forward_tta(net, x, flip_tta)
        out.append(pooled_features(net, x, seg_prob.float()))
    return np.concatenate(out)


def fit_for_bundle(weights_dir: Path, percentile: float = DEFAULT_PERCENTILE) -> Scope:
    """Fit on the training / validation images of the bundle's own split and save it."""
    from inference.data import run_split_arrays
    from inference.model import Model

    model = Model.load(weights_dir / "model.pt", compile="off")
    cfg = model.meta["train_config"]
    if model.members > 1:
        cfg = model.meta["member_checkpoints"][0]["train_config"]
    train, val = run_split_arrays(cfg, model.image_size)
    flip = bool(model.postprocess["flip_tta"])
    print(f"features of {len(train['images'])} training and {len(val['images'])} validation "
          "images", file=sys.stderr, flush=True)
    tf = array_features(model.net, train["images"], flip)
    vf = array_features(model.net, val["images"], flip)
    sources = ", ".join(Path(d).name for d in cfg["data_dirs"])
    scope = fit_scope(tf, vf, file_sha256(weights_dir / "model.pt"),
                      f"training split of {sources} (mean, covariance); its validation split "
                      f"(threshold at percentile {percentile:g})", percentile)
    scope.save(weights_dir / SCOPE_FILE)
    return scope


def dicom_crops(path: Path) -> list[np.ndarray]:
    """Every frame of a DICOM file, cropped as the service crops it (its analysis boxes)."""
    from dicom_io.read import iter_frames, read_info
    from dicom_io.regions import analysis_boxes

    info = read_info(path)
    boxes = analysis_boxes(info.regions, info.shape)
    crops = []
    for _, pixels in iter_frames(path, batch=8):
        for frame in pixels:
            crops.extend(np.array(frame[box.slices]) for box in boxes)
    return crops


def check(weights_dir: Path, datasets: Path, dicom_files: Sequence[Path]) -> dict:
    """Share of images the check refuses: per source (held-out side, as
    :mod:`inference.protocol` measures) and per DICOM file given (e.g. non-breast ultrasound)."""
    from inference.data import read_grayscale
    from inference.model import Model
    from inference.protocol import SOURCE_FOLDERS, held_out_samples

    model = Model.load(weights_dir / "model.pt", compile="off")
    if model.scope is None:
        raise SystemExit(f"no scope check fitted for {weights_dir / 'model.pt'}")
    cfg = model.meta.get("train_config", {})
    out: dict = {"threshold": model.scope.threshold, "sources": {}, "files": {}}
    for name in SOURCE_FOLDERS:
        if not (datasets / name).is_dir():
            continue
        samples, side = held_out_samples(datasets / name, cfg)
        refused = 0
        for start in range(0, len(samples), 8):
            images = [read_grayscale(s.image) for s in samples[start: start + 8]]
            refused += sum(not p.in_scope for p in model.predict(images))
        out["sources"][name] = {"side": side, "images": len(samples), "refused": refused,
                                "refused_share": refused / max(len(samples), 1)}
    for path in dicom_files:
        crops = dicom_crops(path)
        preds = [p for i in range(0, len(crops), 8) for p in model.predict(crops[i: i + 8])]
        refused = sum(not p.in_scope for p in preds)
        out["files"][path.name] = {"crops": len(preds), "refused": refused}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m inference.scope fit [--weights-dir D]``: fit and save the bundle's check;
    ``python -m inference.scope check [--datasets D] [DICOM ...]``: what it refuses."""
    p = argparse.ArgumentParser(prog="python -m inference.scope")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit the in-distribution score for bundled weights")
    c = sub.add_parser("check", help="share refused per source and per DICOM file")
    from inference.model import WEIGHTS_DIR

    for q in (f, c):
        q.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
        q.add_argument("--num-threads", type=int, default=None)
    f.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE)
    c.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    c.add_argument("dicom", type=Path, nargs="*")
    args = p.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.cmd == "check":
        print(json.dumps(check(args.weights_dir, args.datasets, args.dicom), indent=1))
        return 0
    scope = fit_for_bundle(args.weights_dir, args.percentile)
    print(json.dumps({"threshold": scope.threshold, "percentile": scope.percentile,
                      "features": int(scope.mean.shape[0]), "fitted_on": scope.fitted_on}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
