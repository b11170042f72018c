"""Temperature scaling on synthetic logits with a known temperature."""

from __future__ import annotations

import numpy as np
import pytest

from inference.calibration import calibration_report, fit_temperature, softmax
from inference.metrics import expected_calibration_error


def _synthetic(n: int, true_t: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / true_t): calibrated at true_t."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, 3))
    p = softmax(logits, true_t)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1).clip(0, 2)
    return logits, labels


def test_fit_temperature_recovers_known_temperature() -> None:
    logits, labels = _synthetic(6000, 2.5)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.1)


def test_calibration_report_lowers_ece_of_overconfident_logits() -> None:
    logits, labels = _synthetic(4000, 3.0, seed=1)
    rep = calibration_report(logits, labels)
    assert rep["ece_before"] > 0.1
    assert rep["ece_after_crossfit"] < 0.04
    assert rep["ece_after_crossfit"] < rep["ece_before"]
    ece_t = expected_calibration_error(softmax(logits, rep["temperature"]), labels)
    assert ece_t == pytest.approx(rep["ece_after_in_sample"])


def test_fit_temperature_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(np.zeros((3, 3)), np.zeros(2, dtype=int))
