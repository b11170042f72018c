"""The model the service runs: load bundled weights once, predict masks, calibrated classes, CAMs.

Contract: ``docs/ARCHITECTURE.md`` (``CLASSES``, ``Prediction``, ``Model``). Weights live in
``inference/weights/model.pt`` (a state_dict) with ``model.json`` beside it holding the version,
status, image size, temperature, architecture and post-processing settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from inference.gradcam import grad_cam
from inference.networks import build_network
from inference.transforms import normalise, resize_image, resize_probability

CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_POSTPROCESS: dict[str, float | bool] = {
    "threshold": 0.5,
    "min_area_fraction": 0.002,
    "keep_largest": False,
    "fill_holes": True,
    "empty_if_normal": True,
    "flip_tta": True,
}


@dataclass(frozen=True)
class Prediction:
    """One image's result, on the input image's own grid.

    Attributes
    ----------
    mask : (H, W) bool
        Lesion pixels (empty when no lesion is found).
    probabilities : dict[str, float]
        Calibrated (temperature-scaled) class probabilities over ``CLASSES``; they sum to 1.
    predicted_class : str
        The most probable class.
    cam : (H, W) float32 in 0..1, or None
        Grad-CAM of the predicted class when asked for.
    """

    mask: np.ndarray
    probabilities: dict[str, float]
    predicted_class: str
    cam: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.dtype != bool:
            raise ValueError(f"mask must be (H, W) bool, got {self.mask.shape} {self.mask.dtype}")
        if tuple(self.probabilities) != CLASSES:
            raise ValueError(f"probabilities keys must be {CLASSES}")
        if not math.isclose(sum(self.probabilities.values()), 1.0, abs_tol=1e-4):
            raise ValueError("probabilities must sum to 1")
        if self.predicted_class not in CLASSES:
            raise ValueError(f"predicted_class must be one of {CLASSES}")
        if self.cam is not None and (self.cam.shape != self.mask.shape
                                     or self.cam.dtype != np.float32):
            raise ValueError("cam must be float32 with the mask's shape")


def postprocess_mask(mask: np.ndarray, min_area_fraction: float = 0.0,
                     keep_largest: bool = False, fill_holes: bool = False) -> np.ndarray:
    """Drop connected components under ``min_area_fraction`` of the image, optionally keep only
    the largest, fill holes. (H, W) bool -> (H, W) bool.

    Tiny specks are the usual false positives on normal images.
    """
    out = mask.astype(bool)
    if not out.any():
        return out
    labels, n = ndimage.label(out)
    if n:
        sizes = ndimage.sum_labels(out, labels, index=np.arange(1, n + 1))
        keep = sizes >= min_area_fraction * out.size
        if keep_largest and keep.any():
            keep = np.zeros_like(keep)
            keep[int(np.argmax(sizes))] = True
        out = np.isin(labels, np.flatnonzero(keep) + 1)
    if fill_holes:
        out = ndimage.binary_fill_holes(out)
    return out


def forward_tta(
    net: nn.Module, x: torch.Tensor, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(seg probabilities, class logits) for a normalised batch, optionally averaged with the
    left-right mirror image (the flip training already uses, so both views are in-distribution).
    """
    seg, cls = net(x)
    prob = torch.sigmoid(seg)
    if flip:
        seg_f, cls_f = net(torch.flip(x, dims=(-1,)))
        prob = 0.5 * (prob + torch.flip(torch.sigmoid(seg_f), dims=(-1,)))
        cls = 0.5 * (cls + cls_f)
    return prob, cls


def _sha256(path: Path) -> str:
    """Hex sha256 of a file: the version names the exact weights."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Model:
    """A loaded network with its metadata; build with :meth:`Model.load`.

    Attributes
    ----------
    version : str
        ``"<name> <training date> <8 hex of sha256(model.pt)>"``: goes into SEG/SR and the job row.
    status : str
        ``"final"`` or a plain statement such as ``"checkpoint epoch 12: training in progress"``;
        shown to radiologists, so it must say what the weights are.
    """

    net: torch.nn.Module
    meta: dict
    version: str
    status: str
    device: str
    weights_path: Path
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    _cache: ClassVar[dict[tuple[str, str], Model]] = {}

    @property
    def image_size(self) -> int:
        """Side of the square grid the network runs on."""
        return int(self.meta["image_size"])

    @property
    def temperature(self) -> float:
        """Temperature dividing the logits (fitted on the validation split)."""
        return float(self.meta.get("temperature", 1.0))

    @property
    def postprocess(self) -> dict:
        """Mask post-processing settings (defaults overridden by model.json)."""
        return {**DEFAULT_POSTPROCESS, **self.meta.get("postprocess", {})}

    @classmethod
    def load(cls, weights: Path | None = None, device: str | None = None) -> Model:
        """Load weights once per (path, device) and keep them; later calls return the same object.

        Parameters
        ----------
        weights : Path, optional
            ``model.pt`` (with ``model.json`` beside it). Default: the bundled weights.
        device : str, optional
            ``"cuda"``/``"cpu"``; default CUDA when available.
        """
        path = Path(weights) if weights is not None else WEIGHTS_DIR / "model.pt"
        if path.is_dir():
            path = path / "model.pt"
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        key = (str(path.resolve()), dev)
        if key in cls._cache:
            return cls._cache[key]
        meta_path = path.with_name("model.json")
        if not path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"weights {path} or its model.json is missing")
        meta = json.loads(meta_path.read_text())
        if tuple(meta["classes"]) != CLASSES:
            raise ValueError(f"{meta_path}: classes {meta['classes']} differ from {CLASSES}")
        net = build_network(meta["arch"], num_classes=len(CLASSES))
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v
                             for k, v in state.items()})
        net.to(dev).eval()
        version = f"{meta['name']} {meta['trained_at'][:10]} {_sha256(path)[:8]}"
        model = cls(net=net, meta=meta, version=version, status=str(meta["status"]),
                    device=dev, weights_path=path)
        cls._cache[key] = model
        return model

    def predict(self, images: Sequence[np.ndarray], with_cam: bool = False,
                batch_size: int = 8) -> list[Prediction]:
        """Segment and classify grayscale images.

        Parameters
        ----------
        images : sequence of (H, W) float32 in 0..1
            Any sizes, already cropped to the ultrasound region.
        with_cam : bool
            Also compute the Grad-CAM of the predicted class (slower: one backward pass).

        Returns
        -------
        list of Prediction, one per image, masks and CAMs on each image's own grid.
        """
        prepared = []
        for i, img in enumerate(images):
            arr = np.asarray(img, dtype=np.float32)
            if arr.ndim != 2 or min(arr.shape) < 2:
                raise ValueError(f"images[{i}] must be (H, W) with H, W >= 2, got {arr.shape}")
            prepared.append(np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0))
        results: list[Prediction] = []
        with self._lock:
            for start in range(0, len(prepared), batch_size):
                results.extend(self._predict_batch(prepared[start : start + batch_size], with_cam))
        return results

    def _predict_batch(self, images: list[np.ndarray], with_cam: bool) -> list[Prediction]:
        """One forward pass over a batch (resize, normalise, network, calibrate, post-process)."""
        s = self.image_size
        x = torch.from_numpy(np.stack([resize_image(im, s) for im in images]))[:, None]
        x = normalise(x).to(self.device)
        pp = self.postprocess
        with torch.no_grad():
            seg_prob, logits = forward_tta(self.net, x, bool(pp["flip_tta"]))
        probs = torch.softmax(logits.double() / self.temperature, dim=1).cpu().numpy()
        seg_prob = seg_prob.float().cpu()
        cams = grad_cam(self.net, x, self.meta["arch"]) if with_cam else None
        out = []
        for i, im in enumerate(images):
            shape = (int(im.shape[0]), int(im.shape[1]))
            p = probs[i] / probs[i].sum()
            cls_idx = int(np.argmax(p))
            prob_map = resize_probability(seg_prob[i : i + 1], shape)[0, 0].numpy()
            mask = prob_map > float(pp["threshold"])
            mask = postprocess_mask(mask, float(pp["min_area_fraction"]),
                                    bool(pp["keep_largest"]), bool(pp["fill_holes"]))
            if pp["empty_if_normal"] and CLASSES[cls_idx] == "normal":
                mask = np.zeros(shape, dtype=bool)
            cam = None
            if cams is not None:
                cam_t = torch.from_numpy(cams[i])[None, None]
                cam = resize_probability(cam_t, shape)[0, 0].clamp(0, 1).numpy().astype(np.float32)
            out.append(Prediction(
                mask=mask,
                probabilities={c: float(v) for c, v in zip(CLASSES, p, strict=True)},
                predicted_class=CLASSES[cls_idx],
                cam=cam,
            ))
        return out


def export_checkpoint(
    checkpoint: Path, weights_dir: Path, status: str, temperature: float,
    extra: dict | None = None, half: bool = True, name: str | None = None,
) -> Path:
    """Write a training checkpoint as bundled weights: ``model.pt`` (state_dict) + ``model.json``.

    ``half`` stores float16 (half the size; measured harmless, see MODEL_CARD.md).
    """
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ck["model"].items()}
    weights_dir.mkdir(parents=True, exist_ok=True)
    pt = weights_dir / "model.pt"
    tmp = pt.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, pt)
    meta = {
        "name": name or f"wecare-{ck['arch']}",
        "arch": ck["arch"],
        "image_size": int(ck["image_size"]),
        "classes": list(CLASSES),
        "temperature": float(temperature),
        "status": status,
        "trained_at": ck["saved_at"],
        "epoch": int(ck["epoch"]),
        "exported_at": datetime.now(UTC).isoformat(),
        "dtype": "float16" if half else "float32",
        "postprocess": dict(DEFAULT_POSTPROCESS),
        "train_config": ck["config"],
        "validation_during_training": ck["metrics"],
        "sha256": _sha256(pt),
        **({"averaged_epochs": ck["averaged_epochs"]} if "averaged_epochs" in ck else {}),
        **(extra or {}),
    }
    (weights_dir / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
    return pt


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m inference.model export CKPT --status ...``: fit T on validation, bundle."""
    p = argparse.ArgumentParser(prog="python -m inference.model")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="bundle a checkpoint with a temperature fitted on validation")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--status", required=True)
    e.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    e.add_argument("--fp32", action="store_true")
    e.add_argument("--num-threads", type=int, default=2)
    args = p.parse_args(argv)
    from inference.calibration import calibration_report
    from inference.data import run_split_arrays
    from inference.train import predict_arrays

    torch.set_num_threads(args.num_threads)
    ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    _, arrays = run_split_arrays(ck["config"], int(ck["image_size"]))
    net = build_network(ck["arch"])
    net.load_state_dict(ck["model"])
    flip = bool(DEFAULT_POSTPROCESS["flip_tta"])
    _, logits = predict_arrays(net, arrays["images"], flip_tta=flip)
    report = calibration_report(logits, arrays["labels"])
    pt = export_checkpoint(args.checkpoint, args.weights_dir, args.status, report["temperature"],
                           extra={"calibration": report}, half=not args.fp32)
    print(json.dumps({"weights": str(pt), **report}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
