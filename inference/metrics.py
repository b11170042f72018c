"""Metric arithmetic on given predictions, apart from any model, so it can be tested exactly.

Used by training (per-epoch validation) and by :mod:`inference.evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")


def dice_iou(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two bool masks of the same shape; both empty counts as 1.0."""
    if truth.shape != pred.shape:
        raise ValueError(f"mask shapes differ: {truth.shape} vs {pred.shape}")
    t = truth.astype(bool)
    p = pred.astype(bool)
    inter = float(np.logical_and(t, p).sum())
    total = float(t.sum() + p.sum())
    if total == 0:
        return 1.0, 1.0
    union = total - inter
    return 2.0 * inter / total, inter / union


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins (Guo et al. 2017).

    Parameters
    ----------
    probs : (N, K) float
        Class probabilities, rows summing to 1.
    labels : (N,) int
        True class indices.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def _auc_benign_malignant(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUC of P(malignant | benign or malignant) on the images that are benign or malignant."""
    keep = labels > 0
    y = labels[keep] == 2
    if keep.sum() == 0 or y.all() or not y.any():
        return float("nan")
    p = probs[keep]
    score = p[:, 2] / np.clip(p[:, 1] + p[:, 2], 1e-12, None)
    return float(roc_auc_score(y, score))


def _point_metrics(
    labels: np.ndarray, probs: np.ndarray, dice: np.ndarray, has_lesion: np.ndarray,
    pred_nonempty: np.ndarray,
) -> dict[str, float]:
    """The scalar metrics that get bootstrap intervals."""
    normal = labels == 0
    return {
        "dice_mean": float(dice[has_lesion].mean()) if has_lesion.any() else float("nan"),
        "accuracy": float((probs.argmax(axis=1) == labels).mean()) if len(labels) else float("nan"),
        "auc_benign_malignant": _auc_benign_malignant(labels, probs),
        "normal_false_positive_rate": (
            float(pred_nonempty[normal].mean()) if normal.any() else float("nan")
        ),
        # Lesion images given no lesion at all (no SEG goes out): the error that hides a cancer.
        "lesion_missed_rate": (
            float((~pred_nonempty[has_lesion]).mean()) if has_lesion.any() else float("nan")
        ),
    }


def compute_metrics(
    y_true: Sequence[int],
    y_prob: np.ndarray,
    masks_true: Sequence[np.ndarray],
    masks_pred: Sequence[np.ndarray],
    bootstrap: int = 0,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> dict:
    """Segmentation and classification metrics from given labels, probabilities and masks.

    Parameters
    ----------
    y_true : (N,) int
        True class indices into ``CLASSES``.
    y_prob : (N, 3) float
        Predicted probabilities.
    masks_true, masks_pred : N bool arrays
        Truth and prediction on the same grid per image (empty truth for normal images).
    bootstrap : int
        Resamples for 95 % percentile intervals; 0 skips them.
    groups : N str, optional
        Leakage groups (patient / duplicate group); the bootstrap resamples groups when given,
        so near-duplicate images do not narrow the intervals.

    Returns
    -------
    dict
        ``n_images``, ``n_lesion_images``, ``n_normal_images``, ``dice_mean``, ``iou_mean`` (mean
        per image over images with a true lesion), ``accuracy`` (3-class argmax over all images:
        on a set without normals a "normal" prediction counts as wrong),
        ``accuracy_benign_malignant`` (argmax between those two on lesion images),
        ``per_class`` precision/recall/f1/support, ``confusion_matrix`` (rows true, columns
        predicted, order ``CLASSES``), ``auc_benign_malignant``, ``normal_false_positive_rate``
        (normal images with any predicted lesion pixel), ``lesion_missed_rate`` (lesion images with
        an empty predicted mask), ``ece`` (top-label, 15 bins) and ``ci95``.
    """
    labels = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(y_prob, dtype=np.float64)
    n = len(labels)
    if probs.shape != (n, len(CLASSES)):
        raise ValueError(f"y_prob must be ({n}, {len(CLASSES)}), got {probs.shape}")
    if len(masks_true) != n or len(masks_pred) != n:
        raise ValueError("masks_true and masks_pred need one mask per label")
    has_lesion = np.array([m.any() for m in masks_true], dtype=bool)
    pred_nonempty = np.array([m.any() for m in masks_pred], dtype=bool)
    pairs = zip(masks_true, masks_pred, strict=True)
    di = np.array([dice_iou(t, p) for t, p in pairs]).reshape(n, 2)
    dice, iou = di[:, 0], di[:, 1]
    pred = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    cm = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    for t, p in zip(labels, pred, strict=True):
        cm[t, p] += 1
    per_class = {}
    for k, name in enumerate(CLASSES):
        tp = cm[k, k]
        prec = tp / cm[:, k].sum() if cm[:, k].sum() else float("nan")
        rec = tp / cm[k, :].sum() if cm[k, :].sum() else float("nan")
        f1 = 2 * prec * rec / (prec + rec) if (prec + rec) > 0 else float("nan")
        per_class[name] = {
            "precision": float(prec), "recall": float(rec), "f1": float(f1),
            "support": int(cm[k, :].sum()),
        }
    lesion = labels > 0
    bm = probs[lesion][:, 1:].argmax(axis=1) + 1 if lesion.any() else np.zeros(0)
    out: dict = {
        "n_images": int(n),
        "n_lesion_images": int(has_lesion.sum()),
        "n_normal_images": int((labels == 0).sum()),
        **_point_metrics(labels, probs, dice, has_lesion, pred_nonempty),
        "iou_mean": float(iou[has_lesion].mean()) if has_lesion.any() else float("nan"),
        "accuracy_benign_malignant": (
            float((bm == labels[lesion]).mean()) if lesion.any() else float("nan")
        ),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "ece": expected_calibration_error(probs, labels) if n else float("nan"),
    }
    if bootstrap > 0 and n > 0:
        out["ci95"] = _bootstrap(labels, probs, dice, has_lesion, pred_nonempty, groups,
                                 bootstrap, seed)
    return out


def _bootstrap(
    labels: np.ndarray, probs: np.ndarray, dice: np.ndarray, has_lesion: np.ndarray,
    pred_nonempty: np.ndarray, groups: Sequence[str] | None, n_boot: int, seed: int,
) -> dict[str, list[float]]:
    """Percentile 95 % intervals, resampling whole groups when groups are given."""
    rng = np.random.default_rng(seed)
    keys = np.asarray(groups) if groups is not None else np.arange(len(labels)).astype(str)
    uniq, inverse = np.unique(keys, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(uniq))]
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), size=len(uniq))
        idx = np.concatenate([members[g] for g in pick])
        m = _point_metrics(labels[idx], probs[idx], dice[idx], has_lesion[idx], pred_nonempty[idx])
        for k, v in m.items():
            samples.setdefault(k, []).append(v)
    ci = {}
    for k, vals in samples.items():
        arr = np.asarray(vals, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        ci[k] = [float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))] if len(arr) else [
            float("nan"), float("nan")]
    return ci
