"""Tests of dicom_io.measure.mask_measurements."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dicom_io.measure import mask_measurements


def _rectangle(height: int, width: int) -> np.ndarray:
    mask = np.zeros((100, 120), bool)
    mask[10 : 10 + height, 20 : 20 + width] = True
    return mask


@pytest.mark.parametrize(
    ("height", "width", "mm_x", "mm_y"),
    [(10, 40, 0.1, 0.1), (30, 30, 0.2, 0.2), (20, 10, 0.1, 0.3), (1, 1, 1.0, 1.0)],
)
def test_mask_measurements_rectangle_gives_area_diagonal_and_width(
    height: int, width: int, mm_x: float, mm_y: float
) -> None:
    area, long_axis, short_axis = mask_measurements(_rectangle(height, width), mm_x, mm_y)
    w, h = width * mm_x, height * mm_y
    diagonal = math.hypot(w, h)
    assert area == pytest.approx(w * h)
    assert long_axis == pytest.approx(diagonal)
    assert short_axis == pytest.approx(2 * w * h / diagonal)  # rectangle width across it


@pytest.mark.parametrize(("ry", "rx", "mm"), [(20, 40, 0.1), (30, 30, 0.25), (15, 45, 1.0)])
def test_mask_measurements_ellipse_gives_axes_close_to_diameters(
    ry: int, rx: int, mm: float
) -> None:
    yy, xx = np.mgrid[:200, :200]
    mask = ((yy - 100) / ry) ** 2 + ((xx - 100) / rx) ** 2 <= 1
    area, long_axis, short_axis = mask_measurements(mask, mm, mm)
    assert area == pytest.approx(math.pi * rx * ry * mm * mm, rel=0.02)
    assert long_axis == pytest.approx(2 * max(rx, ry) * mm, abs=1.5 * mm)
    assert short_axis == pytest.approx(2 * min(rx, ry) * mm, abs=1.5 * mm)


def test_mask_measurements_anisotropic_pixels_scale_axes() -> None:
    mask = _rectangle(10, 1)  # a vertical bar 10 px tall, 1 px wide
    _, long_axis, _ = mask_measurements(mask, 0.1, 0.5)
    assert long_axis == pytest.approx(math.hypot(0.1, 5.0))


@pytest.mark.parametrize(
    ("mask", "mm_x", "match"),
    [
        (np.zeros((5, 5), bool), 1.0, "empty"),
        (np.ones((2, 5, 5), bool), 1.0, r"\(H, W\)"),
        (np.ones((5, 5), bool), 0.0, "positive"),
    ],
)
def test_mask_measurements_invalid_input_raises(mask: np.ndarray, mm_x: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mask_measurements(mask, mm_x, 1.0)
