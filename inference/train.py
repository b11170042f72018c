"""Training loop: group-disjoint split, cached arrays, MONAI losses, per-epoch checkpoints, resume.

Run ``python -m inference.train --help``; the service CLI exposes the same options as
``wecare train``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from monai.data import set_track_meta
from monai.losses import DiceCELoss, DiceLoss, FocalLoss, TverskyLoss
from torch import nn
from tqdm import tqdm

from inference.data import (
    CLASSES,
    discover,
    load_arrays,
    save_split,
    split_key,
    split_samples,
    split_seed_of,
)
from inference.distill import distill_class_loss, distill_seg_loss, teacher_targets
from inference.export import member_checkpoint
from inference.metrics import compute_metrics
from inference.model import DEFAULT_POSTPROCESS, postprocess_mask, predict_arrays
from inference.networks import ARCHS, build_network
from inference.transforms import (
    fade_lesions,
    normalise,
    paste_into_normals,
    paste_lesions,
    train_augmentation,
)
from inference.vendor_aug import vendor_batch

SEG_LOSSES: tuple[str, ...] = ("dice", "dicebce", "focal", "tversky")
# Bump when selection_score or the validation masks change: a resumed run then forgets its
# old best score instead of comparing scores computed two different ways.
SCORE_VERSION = 2


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved inside every checkpoint.

    ``max_minutes`` bounds wall time (the learning-rate schedule follows whichever of epochs or
    time runs out first); ``resume`` continues from ``out_dir/last.pt``. ``split_seed`` (default:
    ``seed``) fixes the validation split on its own, so runs with different seeds, and an
    ensemble of them, share one held-out set. ``keep_epochs`` also writes every epoch's weights
    to ``out_dir/epochs/ep_NNN.pt`` for :mod:`inference.average`. ``val_every`` validates
    every n-th epoch only (and always the last one): validation takes about a fifth of each
    epoch on a 2-core CPU (18 of 83 s, measured), and a run whose shipped weights are an
    average of its last epochs does not need it each time. ``teacher`` (bundled weights, e.g.
    an ensemble, trained on the same split) adds distillation: the loss becomes
    ``(1 - distill_weight)`` x the label losses + ``distill_weight`` x (BCE to the teacher's
    lesion map + T²-scaled KL to its class distribution at ``distill_temperature``); see
    :mod:`inference.distill`. ``init_weights`` (a training checkpoint, or bundled weights
    with ``init_member`` naming the network) starts the network from trained weights instead
    of at random, with a fresh optimizer and schedule: a longer run in two parts. Those
    weights must come from the same architecture, image size and validation split, or the
    validation figures would not be held out. ``elastic_prob`` is the chance of an elastic
    warp per training image (:func:`inference.transforms.train_augmentation`); 0 reproduces
    the augmentation of the networks bundled before it existed. ``paste_prob`` is the chance
    per training lesion image that a lesion of another training image of the same class and
    dataset is pasted into it (:func:`inference.transforms.paste_lesions`; 0: off, as every
    network bundled up to 2026-12-03). ``detect_weight`` adds :func:`lesion_presence_loss`
    (an image-level "is there a lesion" term on the segmenter's output) with that weight; 0:
    off, as every network bundled up to 2026-12-03. ``fade_prob`` is the chance per training
    lesion image that its lesion is made nearer isoechoic (:func:`inference.transforms.
    fade_lesions`, after any paste, before the other augmentations; its own random stream, so
    the pastes and augmentations drawn are those of the same run without it); 0: off, as every
    network bundled up to 2026-12-03. ``paste_normal_prob`` is the chance per training normal
    image that a lesion of a lesion image of the same dataset is pasted into it and its label
    becomes the donor's class (:func:`inference.transforms.paste_into_normals`, after the
    other pastes; its own random stream); 0: off, as every network bundled up to 2026-12-04.
    ``vendor_prob`` is the chance per training image of :func:`inference.vendor_aug.
    vendor_appearance` (tone curve, depth gain, speckle, blur/sharpen, resampling, burnt-in
    calipers; its own random stream); 0: off, as every network bundled up to 2026-12-05.
    ``balance_sources`` draws each epoch with replacement so that every source (BUSI, BUS-BRA,
    UCLM, BrEaST) gives the same share of images, instead of BUS-BRA's 1 367 drowning the
    128 BrEaST images; it overrides ``busi_share``.
    """

    data_dirs: list[Path]
    out_dir: Path
    epochs: int = 60
    max_minutes: float | None = None
    image_size: int = 192
    batch_size: int = 16
    lr: float = 2e-3
    seg_loss: str = "dicebce"
    arch: str = "multitask"
    seed: int = 0
    split_seed: int | None = None
    resume: bool = False
    num_threads: int = 2
    val_fraction: float = 0.2
    cls_weight: float = 1.0
    weight_decay: float = 1e-4
    cache_dir: Path | None = None
    train_limit: int | None = field(default=None)
    amp: bool = False
    busi_share: float | None = None
    flip_tta: bool = True
    keep_epochs: bool = False
    val_every: int = 1
    teacher: Path | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    init_weights: Path | None = None
    init_member: int = 1
    elastic_prob: float = 0.3
    paste_prob: float = 0.0
    detect_weight: float = 0.0
    fade_prob: float = 0.0
    paste_normal_prob: float = 0.0
    vendor_prob: float = 0.0
    balance_sources: bool = False

    def __post_init__(self) -> None:
        self.data_dirs = [Path(d) for d in self.data_dirs]
        self.out_dir = Path(self.out_dir)
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)
        if self.seg_loss not in SEG_LOSSES:
            raise ValueError(f"seg_loss must be one of {SEG_LOSSES}, got {self.seg_loss!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {self.image_size}")
        if not self.data_dirs:
            raise ValueError("data_dirs needs at least one dataset folder")
        if self.teacher is not None:
            self.teacher = Path(self.teacher)
        if self.init_weights is not None:
            self.init_weights = Path(self.init_weights)
        if self.init_member < 1:
            raise ValueError(f"init_member counts from 1, got {self.init_member}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if self.distill_temperature <= 0.0:
            raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if self.val_every < 1:
            raise ValueError(f"val_every must be >= 1, got {self.val_every}")
        if self.weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.elastic_prob <= 1.0:
            raise ValueError(f"elastic_prob must be in [0, 1], got {self.elastic_prob}")
        if not 0.0 <= self.paste_prob <= 1.0:
            raise ValueError(f"paste_prob must be in [0, 1], got {self.paste_prob}")
        if not 0.0 <= self.paste_normal_prob <= 1.0:
            raise ValueError("paste_normal_prob must be in [0, 1], got "
                             f"{self.paste_normal_prob}")
        if self.paste_normal_prob > 0 and self.teacher is not None:
            raise ValueError("paste_normal_prob needs teacher unset: a pasted lesion is not "
                             "in the teacher's targets")
        if not 0.0 <= self.fade_prob <= 1.0:
            raise ValueError(f"fade_prob must be in [0, 1], got {self.fade_prob}")
        if self.fade_prob > 0 and self.teacher is not None:
            raise ValueError("fade_prob needs teacher unset: the teacher's map is of the "
                             "unfaded image")
        if self.detect_weight < 0.0:
            raise ValueError(f"detect_weight must be >= 0, got {self.detect_weight}")
        if self.paste_prob > 0 and self.teacher is not None:
            raise ValueError("paste_prob needs teacher unset: a pasted lesion is not in the "
                             "teacher's map of the image")
        if not 0.0 <= self.vendor_prob <= 1.0:
            raise ValueError(f"vendor_prob must be in [0, 1], got {self.vendor_prob}")
        if self.busi_share is not None and not 0.0 < self.busi_share < 1.0:
            raise ValueError(f"busi_share must be in (0, 1), got {self.busi_share}")

    def to_json(self) -> dict:
        """Plain-JSON form (paths as strings) for checkpoints and logs."""
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "data_dirs"
                    else v) for k, v in d.items()}


def build_seg_loss(name: str) -> nn.Module:
    """MONAI segmentation loss on one-channel logits.

    Smoothing terms of 1 keep a gradient on normal images (empty target), where the default
    1e-5 makes the Dice term flat and lets the network paint lesions on every normal image.
    """
    if name == "dice":
        return DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0)
    if name == "dicebce":
        return DiceCELoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0)
    if name == "focal":
        return FocalLoss(gamma=2.0, use_softmax=False)
    if name == "tversky":
        return TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7, smooth_nr=1.0, smooth_dr=1.0)
    raise ValueError(f"seg_loss must be one of {SEG_LOSSES}, got {name!r}")


PRESENCE_TOP_FRACTION = 0.005  # of the pixels: 184 at 192 px


def lesion_presence_loss(seg_logits: torch.Tensor, masks: torch.Tensor,
                         top_fraction: float = PRESENCE_TOP_FRACTION) -> torch.Tensor:
    """BCE of an image-level lesion score against "the mask has a lesion".

    The score is the mean of each image's top ``top_fraction`` pixel logits (a soft maximum),
    so a lesion image whose map is empty everywhere costs a lot even when the lesion is small
    (per-pixel BCE spreads that cost over the whole image), and a normal image is pushed to
    have no confident pixel at all. Why: the BUSI misses of the bundled networks are whole
    lesions the segmenter does not mark (model card).
    """
    flat = seg_logits.float().flatten(1)
    k = max(1, round(top_fraction * flat.shape[1]))
    score = flat.topk(k, dim=1).values.mean(dim=1)
    present = (masks.flatten(1).amax(dim=1) > 0.5).float()
    return nn.functional.binary_cross_entropy_with_logits(score, present)


def class_weights(labels: np.ndarray, n_classes: int = len(CLASSES)) -> torch.Tensor:
    """Inverse-square-root-frequency weights (mean 1), so the 5 % normals still count."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = 1.0 / np.sqrt(np.clip(counts, 1.0, None))
    w = w * n_classes / w.sum()
    return torch.tensor(w, dtype=torch.float32)


def balanced_order(sources: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws with replacement in which each source makes up an equal share."""
    names, counts = np.unique(sources, return_counts=True)
    per = dict(zip(names.tolist(), counts.tolist(), strict=True))
    w = np.array([1.0 / per[s] for s in sources.tolist()])
    return rng.choice(len(sources), size=len(sources), replace=True, p=w / w.sum())


def epoch_order(is_busi: np.ndarray, busi_share: float | None, rng: np.random.Generator
                ) -> np.ndarray:
    """Indices for one epoch: a permutation, or, with ``busi_share``, ``n`` draws with
    replacement in which BUSI images make up that share (BUSI is the smaller set, holds all
    normals and is the harder target, so it is over-sampled rather than drowned by BUS-BRA).
    """
    n = len(is_busi)
    n_busi = int(is_busi.sum())
    if busi_share is None or n_busi in (0, n):
        return rng.permutation(n)
    w = np.where(is_busi, busi_share / n_busi, (1.0 - busi_share) / (n - n_busi))
    return rng.choice(n, size=n, replace=True, p=w / w.sum())


def validation_metrics(
    net: nn.Module, arrays: dict[str, np.ndarray], flip_tta: bool = False
) -> tuple[dict, np.ndarray]:
    """Per-source metrics on the model grid; returns (metrics, logits) for later calibration.

    Masks go through the same post-processing the service applies (small components dropped,
    holes filled, empty when the image is classified normal), so the checkpoint is chosen on
    what ships; raw-mask normal FPR is logged as ``normal_fpr_raw``.
    """
    seg, logits = predict_arrays(net, arrays["images"], flip_tta=flip_tta)
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    raw_masks = seg > 0.5
    pp = DEFAULT_POSTPROCESS
    pred_masks = np.stack([
        np.zeros_like(m) if (pp["empty_if_normal"] and p.argmax() == 0) else
        postprocess_mask(m, float(pp["min_area_fraction"]), bool(pp["keep_largest"]),
                         bool(pp["fill_holes"]))
        for m, p in zip(raw_masks, probs, strict=True)
    ])
    true_masks = arrays["masks"].astype(bool)
    out: dict = {}
    for source, sel in (("busi", arrays["is_busi"]), ("busbra", ~arrays["is_busi"])):
        if sel.any():
            m = compute_metrics(arrays["labels"][sel], probs[sel], list(true_masks[sel]),
                                list(pred_masks[sel]))
            out[source] = {k: m[k] for k in ("n_images", "dice_mean", "accuracy",
                                             "auc_benign_malignant", "normal_false_positive_rate",
                                             "ece")}
            normal = arrays["labels"][sel] == 0
            out[source]["normal_fpr_raw"] = (
                float(raw_masks[sel][normal].any(axis=(1, 2)).mean()) if normal.any()
                else float("nan"))
    return out, logits


def selection_score(metrics: dict) -> float:
    """Mean of the validation figures we ship on (Dice both sets, BUSI accuracy, AUC, 1-FPR)."""
    parts = []
    busi, bra = metrics.get("busi", {}), metrics.get("busbra", {})
    for v in (busi.get("dice_mean"), bra.get("dice_mean"), busi.get("accuracy"),
              busi.get("auc_benign_malignant"), bra.get("auc_benign_malignant")):
        if v is not None and not math.isnan(v):
            parts.append(v)
    fpr = busi.get("normal_false_positive_rate")
    if fpr is not None and not math.isnan(fpr):
        parts.append(1.0 - fpr)
    return float(np.mean(parts)) if parts else 0.0


def _save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temp name then rename, so a kill mid-write never leaves a broken file."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _seed_everything(seed: int) -> None:
    """Seed python, numpy, torch and MONAI's transforms' shared generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _augment_batch(
    aug: object, images: np.ndarray, masks: np.ndarray, soft: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Augment each (S, S) uint8 image/mask (and teacher map, 0..255); return (B, 1, S, S)
    float tensors: image, binary mask, teacher probability (None without a teacher)."""
    xs, ys, ss = [], [], []
    for i, (img, msk) in enumerate(zip(images, masks, strict=True)):
        item = {"image": torch.from_numpy(img).float().div_(255.0)[None],
                "mask": torch.from_numpy(msk).float()[None]}
        if soft is not None:
            item["teacher"] = torch.from_numpy(soft[i]).float().div_(255.0)[None]
        d = aug(item)  # type: ignore[operator]
        xs.append(torch.as_tensor(d["image"]).clamp_(0.0, 1.0))
        ys.append(torch.as_tensor(d["mask"]))
        if soft is not None:
            ss.append(torch.as_tensor(d["teacher"]).clamp_(0.0, 1.0))
    return (torch.stack(xs), (torch.stack(ys) > 0.5).float(),
            torch.stack(ss) if soft is not None else None)


def initial_weights(cfg: TrainConfig) -> dict:
    """The checkpoint ``cfg.init_weights`` names, checked against the run it is to start.

    A training checkpoint (``last.pt``, ``swa.pt``) is used as it is; bundled weights
    (``model.pt`` with ``model.json``) give member ``cfg.init_member``.
    """
    assert cfg.init_weights is not None
    path = cfg.init_weights
    if not path.exists():
        raise FileNotFoundError(f"init_weights: {path} does not exist")
    obj = None if path.is_dir() else torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        ck = obj
        ck.setdefault("source_weights", str(path))
    else:
        ck = member_checkpoint(path, cfg.init_member)
    for key, want in (("arch", cfg.arch), ("image_size", cfg.image_size)):
        if ck[key] != want:
            raise ValueError(f"init_weights: {path} has {key} {ck[key]!r}, this run {want!r}")
    if split_key(ck["config"]) != split_key(cfg.to_json()):
        leaked = trained_on_validation(ck["config"], cfg.to_json())
        if leaked:
            raise ValueError(
                f"init_weights: {path} was trained on {leaked} image(s) of this run's "
                "validation split (val_fraction or split seed differ): its figures would not be "
                "held out; pass the same --split-seed and --val-fraction")
    return ck


def trained_on_validation(init_config: dict, config: dict) -> int:
    """How many of ``config``'s validation images the run ``init_config`` trained on.

    Adding a dataset folder keeps the other folders' splits (each source and label is split on
    its own), so a network trained on BUSI + BUS-BRA may start a run that adds UCLM and BrEaST:
    that run's validation images are still unseen. A changed seed or fraction is not.
    """
    init_samples = [s for d in init_config["data_dirs"] for s in discover(Path(d))]
    init_train, _ = split_samples(init_samples, init_config["val_fraction"],
                                  split_seed_of(init_config))
    samples = [s for d in config["data_dirs"] for s in discover(Path(d))]
    _, val = split_samples(samples, config["val_fraction"], split_seed_of(config))
    seen = {s.image for s in init_train}
    return sum(1 for s in val if s.image in seen)


def _log(out_dir: Path, record: dict) -> None:
    """Append one JSON line to ``history.jsonl`` and echo it for the log file."""
    with open(out_dir / "history.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def train(cfg: TrainConfig) -> Path:
    """Train, checkpointing ``last.pt`` every epoch and ``best.pt`` on the best validation score.

    Returns
    -------
    Path
        The best checkpoint (by :func:`selection_score` on the validation split).
    """
    torch.set_num_threads(max(1, cfg.num_threads))
    set_track_meta(False)
    _seed_everything(cfg.seed)
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = cfg.cache_dir or out.parent / "cache"

    samples = [s for d in cfg.data_dirs for s in discover(d)]
    train_s, val_s = split_samples(samples, cfg.val_fraction, split_seed_of(vars(cfg)))
    if cfg.train_limit is not None:
        train_s = train_s[: cfg.train_limit]
    save_split(out / "split.json", train_s, val_s)
    tr = load_arrays(train_s, cfg.image_size, cache_dir)
    va = load_arrays(val_s, cfg.image_size, cache_dir)

    net = build_network(cfg.arch)
    if cfg.amp:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    seg_loss = build_seg_loss(cfg.seg_loss)
    ce = nn.CrossEntropyLoss(weight=class_weights(tr["labels"]), label_smoothing=0.05)
    teacher = (teacher_targets(cfg.teacher, cfg.to_json(), tr["images"], cfg.image_size,
                               cache_dir) if cfg.teacher is not None else None)
    aug = train_augmentation(cfg.image_size, ("teacher",) if teacher is not None else (),
                             elastic_prob=cfg.elastic_prob)
    aug.set_random_state(seed=cfg.seed)  # type: ignore[attr-defined]

    start_epoch, elapsed, best_score, step = 0, 0.0, -1.0, 0
    last_path, best_path = out / "last.pt", out / "best.pt"
    init_source: str | None = None
    if cfg.resume and last_path.is_file():
        ck = torch.load(last_path, map_location="cpu", weights_only=False)
        init_source = ck.get("init_source")  # the start weights are in last.pt by now
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, elapsed = ck["epoch"] + 1, ck["elapsed_s"]
        best_score, step = ck["best_score"], ck["step"]
        if ck.get("score_version") != SCORE_VERSION:
            best_score = -1.0
        torch.set_rng_state(ck["torch_rng"])
        aug.set_random_state(seed=cfg.seed + start_epoch)  # type: ignore[attr-defined]
        print(f"resumed from epoch {ck['epoch']} ({elapsed / 60:.1f} min done)", flush=True)
    elif cfg.init_weights is not None:
        init = initial_weights(cfg)
        init_source = str(init["source_weights"])
        net.load_state_dict(init["model"])
        print(f"started from {init_source} (epoch {init['epoch']})", flush=True)

    train_sources = np.array([s.source for s in train_s])
    n = len(tr["labels"])
    steps_per_epoch = max(1, n // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    max_s = cfg.max_minutes * 60.0 if cfg.max_minutes else None
    warmup = min(200, total_steps // 20 + 1)

    for epoch in range(start_epoch, cfg.epochs):
        if max_s is not None and elapsed >= max_s:
            print(f"time budget reached before epoch {epoch}", flush=True)
            break
        t0 = time.monotonic()
        net.train()
        order_rng = np.random.default_rng(cfg.seed * 1000 + epoch)
        order = (balanced_order(train_sources, order_rng) if cfg.balance_sources
                 else epoch_order(tr["is_busi"], cfg.busi_share, order_rng))
        sums = {"seg": 0.0, "cls": 0.0, "detect": 0.0}
        paste_rng = np.random.default_rng([cfg.seed, epoch, 17])
        pasted = 0
        fade_rng = np.random.default_rng([cfg.seed, epoch, 23])
        faded = 0
        normal_rng = np.random.default_rng([cfg.seed, epoch, 29])
        pasted_normal = 0
        vendor_rng = np.random.default_rng([cfg.seed, epoch, 31])
        vendored = 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", file=sys.stderr,
                   mininterval=30.0, disable=None)
        for b in bar:
            idx = np.sort(order[b * cfg.batch_size : (b + 1) * cfg.batch_size])
            if cfg.paste_prob > 0:
                images, masks, n_pasted = paste_lesions(tr, idx, cfg.paste_prob, paste_rng)
                pasted += n_pasted
            else:
                images, masks = tr["images"][idx], tr["masks"][idx]
            batch_labels = tr["labels"][idx]
            if cfg.paste_normal_prob > 0:
                images, masks, batch_labels, n_normal = paste_into_normals(
                    tr, idx, images, masks, cfg.paste_normal_prob, normal_rng)
                pasted_normal += n_normal
            if cfg.fade_prob > 0:
                images, n_faded = fade_lesions(images, masks, batch_labels,
                                               cfg.fade_prob, fade_rng)
                faded += n_faded
            if cfg.vendor_prob > 0:
                images, n_vendor = vendor_batch(images, masks, cfg.vendor_prob, vendor_rng)
                vendored += n_vendor
            x, y, soft = _augment_batch(aug, images, masks,
                                        teacher["prob"][idx] if teacher is not None else None)
            labels = torch.from_numpy(np.asarray(batch_labels, dtype=np.int64))
            progress = step / total_steps
            if max_s is not None:
                progress = max(progress, (elapsed + time.monotonic() - t0) / max_s)
            cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            lr = cfg.lr * min(1.0, (step + 1) / warmup) * cosine
            for g in opt.param_groups:
                g["lr"] = max(lr, cfg.lr * 1e-3)
            x = normalise(x)
            if cfg.amp:
                x = x.contiguous(memory_format=torch.channels_last)
            # bf16 autocast: ~2x faster on CPUs with AVX-512 BF16 (measured, docs/experiments);
            # the losses are computed in float32.
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.amp):
                seg, cls = net(x)
            l_seg = seg_loss(seg.float(), y)
            l_cls = ce(cls.float(), labels)
            if teacher is not None and soft is not None:
                a = cfg.distill_weight
                l_seg = (1 - a) * l_seg + a * distill_seg_loss(seg, soft)
                l_cls = (1 - a) * l_cls + a * distill_class_loss(
                    cls, torch.from_numpy(teacher["logits"][idx]), cfg.distill_temperature)
            loss = l_seg + cfg.cls_weight * l_cls
            if cfg.detect_weight > 0:
                l_det = lesion_presence_loss(seg, y)
                loss = loss + cfg.detect_weight * l_det
                sums["detect"] += l_det.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seg_v, cls_v = l_seg.item(), l_cls.item()
            sums["seg"] += seg_v
            sums["cls"] += cls_v
            bar.set_postfix(seg=f"{seg_v:.3f}", cls=f"{cls_v:.3f}")
        train_s_time = time.monotonic() - t0
        last_epoch = epoch == cfg.epochs - 1 or (
            max_s is not None and elapsed + train_s_time >= max_s)
        metrics: dict = {}
        score: float | None = None
        if (epoch + 1) % cfg.val_every == 0 or last_epoch:
            metrics, _ = validation_metrics(net, va, cfg.flip_tta)
            score = selection_score(metrics)
        elapsed += time.monotonic() - t0
        record = {
            "epoch": epoch, "step": step, "lr": opt.param_groups[0]["lr"],
            "loss_seg": sums["seg"] / steps_per_epoch, "loss_cls": sums["cls"] / steps_per_epoch,
            "loss_detect": (sums["detect"] / steps_per_epoch if cfg.detect_weight > 0 else None),
            "train_s": round(train_s_time, 1), "epoch_s": round(time.monotonic() - t0, 1),
            "elapsed_min": round(elapsed / 60, 2), "score": score, "val": metrics,
        }
        if cfg.paste_prob > 0:
            record["pasted"] = pasted
        if cfg.fade_prob > 0:
            record["faded"] = faded
        if cfg.paste_normal_prob > 0:
            record["pasted_normal"] = pasted_normal
        if cfg.vendor_prob > 0:
            record["vendor_augmented"] = vendored
        state = {
            "model": net.state_dict(), "arch": cfg.arch, "image_size": cfg.image_size,
            "classes": list(CLASSES), "epoch": epoch, "metrics": metrics, "score": score,
            "score_version": SCORE_VERSION, "config": cfg.to_json(),
            "saved_at": datetime.now(UTC).isoformat(), "init_source": init_source,
        }
        if cfg.keep_epochs:
            (out / "epochs").mkdir(exist_ok=True)
            _save_atomic(state, out / "epochs" / f"ep_{epoch:03d}.pt")
        if score is not None and score > best_score:
            best_score = score
            _save_atomic(state, best_path)
            record["best"] = True
        _save_atomic({**state, "optimizer": opt.state_dict(), "elapsed_s": elapsed,
                      "best_score": best_score, "step": step,
                      "torch_rng": torch.get_rng_state()}, last_path)
        _log(out, record)
    if not best_path.is_file():
        raise RuntimeError("no epoch completed: nothing to return")
    return best_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m inference.train", description=__doc__)
    p.add_argument("--data-dir", action="append", type=Path, required=True, dest="data_dirs",
                   help="dataset folder (BUSI layout with manifest.csv, as busi/, uclm/, "
                        "breast/, or BUS-BRA layout); repeat for several")
    p.add_argument("--out", type=Path, required=True, dest="out_dir", help="run folder")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--image-size", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seg-loss", choices=SEG_LOSSES, default="dicebce")
    p.add_argument("--arch", choices=ARCHS, default="multitask")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the validation split (default: --seed)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--num-threads", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast + channels-last (fast on CPUs with AVX-512 BF16)")
    p.add_argument("--busi-share", type=float, default=None,
                   help="share of each epoch's draws taken from BUSI (over-sampling)")
    p.add_argument("--no-flip-tta", action="store_false", dest="flip_tta",
                   help="validate without left-right flip test-time augmentation")
    p.add_argument("--keep-epochs", action="store_true",
                   help="also keep every epoch's weights in OUT/epochs/ (for weight averaging)")
    p.add_argument("--val-every", type=int, default=1,
                   help="validate every N-th epoch (and always the last)")
    p.add_argument("--teacher", type=Path, default=None,
                   help="bundled model.pt (e.g. an ensemble, same split) to distil from")
    p.add_argument("--distill-weight", type=float, default=0.5,
                   help="share of the loss taken by the teacher's targets (0..1)")
    p.add_argument("--distill-temperature", type=float, default=2.0,
                   help="softening temperature of the class distillation")
    p.add_argument("--init-weights", type=Path, default=None,
                   help="start from these weights (training checkpoint or bundled model.pt "
                        "of the same split) instead of at random")
    p.add_argument("--init-member", type=int, default=1,
                   help="with bundled ensemble weights: which member to start from (from 1)")
    p.add_argument("--weight-decay", type=float, default=1e-4,
                   help="AdamW weight decay (decoupled; applied to every parameter)")
    p.add_argument("--elastic-prob", type=float, default=0.3,
                   help="probability of an elastic warp per training image (0: none, as the "
                        "networks bundled before 2026-12-02 session 14 were trained)")
    p.add_argument("--paste-prob", type=float, default=0.0,
                   help="probability per training lesion image of pasting in a lesion of "
                        "another training image of the same class and dataset (0: off)")
    p.add_argument("--detect-weight", type=float, default=0.0,
                   help="weight of an image-level lesion-present loss on the segmenter's "
                        "top-pixel logits (0: off)")
    p.add_argument("--fade-prob", type=float, default=0.0,
                   help="probability per training lesion image of moving its lesion's "
                        "brightness towards the tissue around it (0: off)")
    p.add_argument("--paste-normal-prob", type=float, default=0.0,
                   help="probability per training normal image of pasting in a lesion of "
                        "another training image of its dataset, the label becoming that "
                        "lesion's class (0: off)")
    p.add_argument("--vendor-prob", type=float, default=0.0,
                   help="probability per training image of a vendor-appearance change (tone "
                        "curve, depth gain, speckle, blur/sharpen, resampling, calipers; 0: off)")
    p.add_argument("--balance-sources", action="store_true",
                   help="draw every source (busi, busbra, uclm, breast) equally often")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: parse options into a TrainConfig and train."""
    args = _parser().parse_args(argv)
    best = train(TrainConfig(**vars(args)))
    print(f"best checkpoint: {best}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
