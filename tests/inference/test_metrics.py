"""Metric arithmetic and evaluate() on a generated folder with a model of known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.data import discover, read_mask
from inference.evaluate import evaluate, render_table
from inference.metrics import CLASSES, compute_metrics, dice_iou, expected_calibration_error
from inference.model import Prediction
from tests.inference.conftest import SCANNERS


def test_dice_iou_half_overlap_known_values() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True  # 8 px
    b[1:3] = True  # 8 px, 4 shared
    dice, iou = dice_iou(a, b)
    assert dice == pytest.approx(0.5)
    assert iou == pytest.approx(4 / 12)


def test_compute_metrics_perfect_predictions_score_one() -> None:
    rng = np.random.default_rng(0)
    labels = [0, 1, 2, 1, 2, 0]
    masks = [np.zeros((8, 8), bool) if y == 0 else rng.random((8, 8)) > 0.5 for y in labels]
    probs = np.eye(3)[labels]
    m = compute_metrics(labels, probs, masks, masks, bootstrap=50)
    assert m["dice_mean"] == 1.0 and m["iou_mean"] == 1.0
    assert m["accuracy"] == 1.0 and m["auc_benign_malignant"] == 1.0
    assert m["normal_false_positive_rate"] == 0.0
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert m["ci95"]["dice_mean"] == [1.0, 1.0]


def test_compute_metrics_counts_normal_false_positives_and_errors() -> None:
    labels = [0, 0, 1, 2]
    empty = np.zeros((4, 4), bool)
    speck = empty.copy()
    speck[0, 0] = True
    lesion = np.ones((4, 4), bool)
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.1, 0.2, 0.7]])
    m = compute_metrics(labels, probs, [empty, empty, lesion, lesion],
                        [speck, empty, lesion, empty])
    assert m["normal_false_positive_rate"] == 0.5
    assert m["dice_mean"] == pytest.approx(0.5)  # one perfect, one missed lesion
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["per_class"]["normal"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["malignant"]["precision"] == pytest.approx(0.5)


def test_expected_calibration_error_perfectly_calibrated_is_small() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.34, 1.0, size=20000)
    correct = rng.random(20000) < conf
    probs = np.zeros((20000, 3))
    probs[:, 0] = conf
    probs[:, 1] = probs[:, 2] = (1 - conf) / 2
    labels = np.where(correct, 0, 1)
    assert expected_calibration_error(probs, labels) < 0.02
    assert expected_calibration_error(probs, np.ones(20000, int)) > 0.5


class _OracleModel:
    """Returns the true mask and a one-hot true class: evaluate must report perfect scores."""

    version = "oracle 2026-01-01 00000000"
    status = "test"

    def __init__(self, data_dir: Path) -> None:
        self.by_shape_sum: dict[float, tuple[np.ndarray, int]] = {}
        from inference.data import read_grayscale

        for s in discover(data_dir):
            img = read_grayscale(s.image)
            self.by_shape_sum[float(img.sum())] = (read_mask(s.mask, img.shape), s.label)

    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        out = []
        for img in images:
            mask, label = self.by_shape_sum[float(img.sum())]
            probs = {c: float(i == label) for i, c in enumerate(CLASSES)}
            out.append(Prediction(mask=mask, probabilities=probs, predicted_class=CLASSES[label]))
        return out


def test_evaluate_oracle_on_busi_folder_is_perfect(busi_dir: Path) -> None:
    m = evaluate(busi_dir, _OracleModel(busi_dir), bootstrap=20)
    assert m["layout"] == "busi" and m["n_images"] == 12 and m["n_normal_images"] == 4
    assert m["dice_mean"] == 1.0 and m["accuracy"] == 1.0
    assert m["normal_false_positive_rate"] == 0.0
    table = render_table(m)
    assert "dice_mean" in table and "oracle" in table


def test_evaluate_busbra_without_normals_says_so(busbra_dir: Path) -> None:
    m = evaluate(busbra_dir, _OracleModel(busbra_dir), bootstrap=0)
    assert m["layout"] == "busbra" and m["n_normal_images"] == 0
    assert "no normal images" in m["accuracy_note"]
    assert m["auc_benign_malignant"] == 1.0


def test_evaluate_reports_each_busbra_scanner(busbra_dir: Path) -> None:
    # cases 1-2 on the first scanner, 3-4 on the second: one benign, one malignant patient each
    m = evaluate(busbra_dir, _OracleModel(busbra_dir), bootstrap=10)
    by = m["by_scanner"]
    assert sorted(by) == sorted(SCANNERS)
    assert [by[s]["n_images"] for s in SCANNERS] == [4, 4]
    assert sum(v["n_images"] for v in by.values()) == m["n_images"]
    for v in by.values():
        assert v["dice_mean"] == 1.0 and v["auc_benign_malignant"] == 1.0
        assert "dice_mean" in v["ci95"]
    table = render_table(m)
    assert all(f"scanner {s}: 4 images" in table for s in SCANNERS)


def test_evaluate_busi_without_scanner_column_has_no_breakdown(busi_dir: Path) -> None:
    assert evaluate(busi_dir, _OracleModel(busi_dir), bootstrap=0)["by_scanner"] == {}
