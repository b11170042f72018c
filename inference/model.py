"""The model the service runs: load bundled weights once, predict masks, calibrated classes, CAMs.

Contract: ``docs/ARCHITECTURE.md`` (``CLASSES``, ``Prediction``, ``Model``). Weights live in
``inference/weights/model.pt`` (a state_dict) with ``model.json`` beside it holding the version,
status, image size, temperature, architecture (``members`` > 1: an ensemble) and
post-processing settings. Writing and unbundling such weights is :mod:`inference.export`'s
job: the service never imports it.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from inference.compiled import CompiledForward, resolve_compile
from inference.gradcam import grad_cam
from inference.networks import build_network, fold_batch_norm
from inference.scope import Scope, file_sha256, load_scope, pooled_features
from inference.transforms import (
    network_input,
    normalise,
    resize_image,
    resize_probability,
)

CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_POSTPROCESS: dict[str, float | bool | None] = {
    "threshold": 0.5,
    "min_area_fraction": 0.002,
    "keep_largest": False,
    "fill_holes": True,
    "empty_if_normal": True,
    "flip_tta": True,
    # p(normal) at or above which the mask is emptied and the class follows the mask; None
    # keeps the older rule (argmax "normal" empties the mask) of bundles made before the gate.
    "normal_gate": None,
}
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
BATCH_SIZE = 8  # images per network call in predict on CPU (and the larger compiled batch)
# On a GPU a call costs about the same for 1 or 32 images of 192 px: larger batches, fewer calls.
CUDA_BATCH_SIZE = 32
_AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX-512 BF16 or AMX).

    Without it oneDNN emulates bfloat16 and runs slower than float32, so ``auto`` must not
    pick it there.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_device(device: str | None) -> str:
    """``cuda`` or ``cpu`` for ``device`` (``None``/``"auto"``: CUDA when torch sees a GPU).

    Chosen once, when the model is loaded at start-up; an explicit ``cuda`` without a GPU
    fails there, not in the first job.
    """
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but torch sees no CUDA GPU")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``float32``, ``bfloat16`` or ``float16`` for ``precision`` on ``device``.

    ``auto``: on a CPU, bfloat16 where it is native (2-3x faster, see docs/experiments for the
    measured effect on the metrics), else float32; on CUDA, mixed precision (autocast) in
    bfloat16 where the GPU supports it (Ampere and later), else float16. float16 runs only on
    CUDA (a CPU emulates it, slower than float32).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    on_cuda = torch.device(device).type == "cuda"
    if precision == "float16" and not on_cuda:
        raise ValueError("precision float16 needs a CUDA device")
    if precision != "auto":
        return precision
    if on_cuda:
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype autocast runs the network in for a resolved ``precision``; None: float32."""
    return _AUTOCAST_DTYPES.get(precision)


def default_batch_size(device: str) -> int:
    """Images per network call: :data:`CUDA_BATCH_SIZE` on a GPU, :data:`BATCH_SIZE` on CPU."""
    return CUDA_BATCH_SIZE if torch.device(device).type == "cuda" else BATCH_SIZE


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
    in_scope : bool
        False when the bundle's in-distribution check (``scope.npz``) finds the image unlike
        the training images: the mask is then empty and the class is not to be reported.
    scope_distance : float or None
        The check's distance (None without a check).
    """

    mask: np.ndarray
    probabilities: dict[str, float]
    predicted_class: str
    cam: np.ndarray | None = None
    # False when the image is unlike the breast ultrasound the model learnt from
    # (inference.scope): its mask is empty and its class must not be reported.
    in_scope: bool = True
    scope_distance: float | None = None

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
    net: nn.Module | CompiledForward, x: torch.Tensor, flip: bool
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


def predict_arrays(
    net: nn.Module, images: np.ndarray, batch_size: int = 32, flip_tta: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Run the network on (N, S, S) uint8 images of the array cache: (seg probabilities
    (N, S, S), logits (N, 3)), no post-processing.

    For validation, export (temperature fitting) and distillation, which all work on the
    cached arrays; the service goes through :meth:`Model.predict`.
    """
    net.eval()
    probs, logits = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            prob, cls = forward_tta(net, network_input(images[i : i + batch_size]), flip_tta)
            probs.append(prob[:, 0].float().numpy())
            logits.append(cls.float().numpy())
    return np.concatenate(probs), np.concatenate(logits)


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
    precision: str = "float32"
    compiled: CompiledForward | None = None
    scope: Scope | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    _cache: ClassVar[dict[tuple[str, str, str, bool, bool, bool], Model]] = {}

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

    @property
    def members(self) -> int:
        """Number of networks averaged (1: a single network)."""
        return int(self.meta.get("members", 1))

    @property
    def compile_state(self) -> str:
        """``compiled``, ``eager`` or ``eager (compile failed: <error>)``: for logs and status."""
        if self.compiled is None:
            return "eager"
        if self.compiled.active:
            return "compiled"
        return f"eager (compile failed: {self.compiled.error})"

    @classmethod
    def load(cls, weights: Path | None = None, device: str | None = None,
             precision: str = "auto", fold_bn: bool = True, compile: str = "off",
             scope_check: bool = True) -> Model:
        """Load weights once per (path, device, precision, fold_bn, compile) and keep them;
        later calls return the same object.

        Parameters
        ----------
        weights : Path, optional
            ``model.pt`` (with ``model.json`` beside it). Default: the bundled weights.
        device : str, optional
            ``"cuda"``/``"cpu"``; default (or ``"auto"``) CUDA when available
            (:func:`resolve_device`).
        precision : str
            ``auto``, ``float32``, ``bfloat16`` or ``float16`` (see :func:`resolve_precision`).
        fold_bn : bool
            Fold BatchNorms into convolutions (:func:`inference.networks.fold_batch_norm`);
            off only to measure what folding changes.
        compile : str
            ``auto``, ``on`` or ``off`` (see :func:`inference.compiled.resolve_compile`): run
            the network through ``torch.compile``. Call :meth:`warm_up` before the first
            prediction, or the first call of each batch shape pays the compile (tens of
            seconds). Off by default: a one-off command would spend longer compiling than
            it saves.
        scope_check : bool
            Use the bundle's in-distribution check (``scope.npz``, :mod:`inference.scope`)
            when there is one; off only to test the plumbing with generated images.
        """
        path = Path(weights) if weights is not None else WEIGHTS_DIR / "model.pt"
        if path.is_dir():
            path = path / "model.pt"
        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
        use_compile = resolve_compile(compile, dev)
        key = (str(path.resolve()), dev, prec, fold_bn, use_compile, scope_check)
        if key in cls._cache:
            return cls._cache[key]
        meta_path = path.with_name("model.json")
        if not path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"weights {path} or its model.json is missing")
        meta = json.loads(meta_path.read_text())
        if tuple(meta["classes"]) != CLASSES:
            raise ValueError(f"{meta_path}: classes {meta['classes']} differ from {CLASSES}")
        net = build_network(meta["arch"], num_classes=len(CLASSES),
                            members=int(meta.get("members", 1)))
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v
                             for k, v in state.items()})
        net.to(dev).eval()
        if fold_bn:  # exact in eval mode; saves a pass over every feature map
            fold_batch_norm(net)
        if dev == "cpu":  # oneDNN's fast path on CPU (1.3-1.6x in float32, measured)
            net.to(memory_format=torch.channels_last)
        else:  # fixed input shapes: let cuDNN pick its fastest convolution once per shape
            torch.backends.cudnn.benchmark = True
        version = f"{meta['name']} {meta['trained_at'][:10]} {file_sha256(path)[:8]}"
        compiled = (CompiledForward(net, autocast_dtype(prec) or torch.float32,
                                    dev, full_batch=default_batch_size(dev))
                    if use_compile else None)
        model = cls(net=net, meta=meta, version=version, status=str(meta["status"]),
                    device=dev, weights_path=path, precision=prec, compiled=compiled,
                    scope=load_scope(path.parent, path) if scope_check else None)
        cls._cache[key] = model
        return model

    def warm_up(self) -> float:
        """Compile the network for both batch shapes now (when compiled); returns seconds.

        A result that differs from the eager network, or any compile error, makes this model
        run eager from then on (:attr:`compile_state` says so).
        """
        if self.compiled is None:
            return 0.0
        with self._lock:
            return self.compiled.warm_up(self.image_size)

    @property
    def batch_size(self) -> int:
        """Images per network call (:func:`default_batch_size` of the device)."""
        return default_batch_size(self.device)

    def predict(self, images: Sequence[np.ndarray], with_cam: bool = False,
                batch_size: int | None = None) -> list[Prediction]:
        """Segment and classify grayscale images.

        Parameters
        ----------
        images : sequence of (H, W) float32 in 0..1
            Any sizes, already cropped to the ultrasound region.
        with_cam : bool
            Also compute the Grad-CAM of the predicted class (slower: one backward pass).
        batch_size : int, optional
            Images per network call; default :attr:`batch_size`.

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
        step = batch_size or self.batch_size
        with self._lock:
            for start in range(0, len(prepared), step):
                results.extend(self._predict_batch(prepared[start : start + step], with_cam))
        return results

    def _predict_batch(self, images: list[np.ndarray], with_cam: bool) -> list[Prediction]:
        """One forward pass over a batch (resize, normalise, network, calibrate, post-process)."""
        s = self.image_size
        x = torch.from_numpy(np.stack([resize_image(im, s) for im in images]))[:, None]
        x = normalise(x).to(self.device)
        if self.device == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        pp = self.postprocess
        if self.compiled is not None:  # float32 outputs; falls back to eager by itself
            with torch.no_grad():
                seg_prob, logits = forward_tta(self.compiled, x, bool(pp["flip_tta"]))
        else:
            amp = autocast_dtype(self.precision)
            with torch.no_grad(), torch.autocast(device_type=torch.device(self.device).type,
                                                 dtype=amp or torch.bfloat16,
                                                 enabled=amp is not None):
                seg_prob, logits = forward_tta(self.net, x, bool(pp["flip_tta"]))
        probs = torch.softmax(logits.double() / self.temperature, dim=1).cpu().numpy()
        seg_prob = seg_prob.float().cpu()
        distances = None
        if self.scope is not None:  # the classifier's features again, in float32: small next to
            # the segmenter, and the distance must not depend on the precision served
            with torch.no_grad():
                feats = pooled_features(self.net, x.float(), seg_prob.to(x.device))
            distances = self.scope.distances(feats)
        cams = (grad_cam(self.net, x, self.meta["arch"],
                         class_idx=torch.from_numpy(probs.argmax(axis=1)))
                if with_cam else None)
        out = []
        for i, im in enumerate(images):
            shape = (int(im.shape[0]), int(im.shape[1]))
            p = probs[i] / probs[i].sum()
            cls_idx = int(np.argmax(p))
            prob_map = resize_probability(seg_prob[i : i + 1], shape)[0, 0].numpy()
            mask = prob_map > float(pp["threshold"])
            mask = postprocess_mask(mask, float(pp["min_area_fraction"]),
                                    bool(pp["keep_largest"]), bool(pp["fill_holes"]))
            gate = pp.get("normal_gate")
            if gate is not None:
                # The operating point chosen on validation (inference.protocol): the mask is
                # emptied only when p(normal) reaches the gate, and the class follows the mask,
                # so a lesion outline never comes with "normal" nor "benign" with no outline.
                if p[0] >= float(gate):
                    mask = np.zeros(shape, dtype=bool)
                cls_idx = 1 + int(np.argmax(p[1:])) if mask.any() else 0
            elif pp["empty_if_normal"] and CLASSES[cls_idx] == "normal":
                mask = np.zeros(shape, dtype=bool)
            in_scope = distances is None or bool(distances[i] <= self.scope.threshold)
            if not in_scope:
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
                in_scope=in_scope,
                scope_distance=None if distances is None else float(distances[i]),
            ))
        return out


if __name__ == "__main__":  # export and member moved to inference.export; forward the old form
    from inference.export import main as export_main

    raise SystemExit(export_main())
