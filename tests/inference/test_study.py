"""The study-level class rule and mask pasting (inference/study.py)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.study import CLASSES, paste_masks, study_class


def _p(normal: float, benign: float, malignant: float) -> dict[str, float]:
    return {"normal": normal, "benign": benign, "malignant": malignant}


def test_study_class_classes_match_the_model() -> None:
    from inference.model import CLASSES as MODEL_CLASSES

    assert CLASSES == MODEL_CLASSES


def test_study_class_most_suspicious_frame_decides_over_many_normal_ones() -> None:
    frames = [_p(0.9, 0.08, 0.02)] * 50 + [_p(0.2, 0.35, 0.45)] + [_p(0.8, 0.1, 0.1)] * 10
    call = study_class(frames)
    assert call.frame_index == 50
    assert call.predicted_class == "malignant"
    assert call.probabilities == pytest.approx(frames[50])


def test_study_class_deciding_frame_keeps_its_own_argmax() -> None:
    # Highest p(malignant) yet benign is its most probable class: the study is benign.
    call = study_class([_p(0.9, 0.05, 0.05), _p(0.1, 0.6, 0.3)])
    assert (call.predicted_class, call.frame_index) == ("benign", 1)


def test_study_class_ties_first_frame_wins() -> None:
    assert study_class([_p(0.5, 0.3, 0.2), _p(0.3, 0.5, 0.2)]).frame_index == 0


def test_study_class_no_frame_raises() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        study_class([])


def test_paste_masks_two_panes_union_on_frame_grid() -> None:
    left = np.ones((4, 3), dtype=bool)
    right = np.zeros((4, 5), dtype=bool)
    right[1, 2] = True
    full = paste_masks((6, 10), [((1, 5, 0, 3), left), ((0, 4, 5, 10), right)])
    assert full.shape == (6, 10) and full.dtype == bool
    assert int(full.sum()) == 12 + 1 and full[1, 7]


def test_paste_masks_wrong_size_raises() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        paste_masks((6, 10), [((0, 4, 0, 4), np.ones((3, 4), dtype=bool))])
