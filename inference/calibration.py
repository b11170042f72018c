"""Temperature scaling (Guo et al., ICML 2017) fitted on validation logits, with ECE before/after.

One scalar T divides the logits: it changes confidence, never the argmax, so accuracy and
AUC are untouched while the probabilities shown to radiologists become honest.
"""

from __future__ import annotations

import numpy as np
import torch

from inference.metrics import expected_calibration_error


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of (N, K) logits divided by ``temperature``, in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood of ``labels``.

    Optimises log T with L-BFGS (so T stays positive), starting from T = 1.

    Parameters
    ----------
    logits : (N, K) float
    labels : (N,) int
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(
            f"need (N, K) logits and (N,) labels, got {tuple(z.shape)}, {tuple(y.shape)}"
        )
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def calibration_report(
    logits: np.ndarray, labels: np.ndarray, folds: int = 2, seed: int = 0
) -> dict[str, float]:
    """ECE before and after temperature scaling, the after-figure measured out of fold.

    The temperature shipped is fitted on all of ``logits``; to avoid grading it on the data it
    was fitted to, ``ece_after_crossfit`` fits T on all folds but one and measures ECE on the
    held-out fold, pooled over folds. ``ece_after_in_sample`` is given for comparison.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    t_all = fit_temperature(logits, labels)
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(len(labels)) % folds
    pooled = np.zeros_like(logits)
    for f in range(folds):
        held = fold_of == f
        t = fit_temperature(logits[~held], labels[~held])
        pooled[held] = softmax(logits[held], t)
    return {
        "temperature": t_all,
        "ece_before": expected_calibration_error(softmax(logits), labels),
        "ece_after_in_sample": expected_calibration_error(softmax(logits, t_all), labels),
        "ece_after_crossfit": expected_calibration_error(pooled, labels),
        "n": int(len(labels)),
    }
