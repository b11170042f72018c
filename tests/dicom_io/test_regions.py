"""The one crop policy (dicom_io.regions.analysis_boxes) and the SEG's spacing that follows it."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_io.regions import (
    MIN_REGION_PX,
    CropBox,
    analysis_boxes,
    bmode_region,
    common_pixel_spacing,
    crop_box,
    tissue_regions,
)
from dicom_io.seg import AlgorithmInfo, build_seg
from dicom_io.types import UltrasoundRegion
from tests.factories import make_us_dataset

SHAPE = (256, 320)


def _region(x0: int, y0: int, x1: int, y1: int, mm: float | None = None, fmt: int = 1):
    return UltrasoundRegion(x0, y0, x1, y1, fmt, mm, mm)


@pytest.mark.parametrize(
    ("regions", "expected"),
    [
        ((), [(0, 256, 0, 320, False)]),
        ((_region(10, 20, 300, 240, 0.1),), [(20, 240, 10, 300, True)]),
        (
            (_region(0, 0, 150, 256), _region(160, 0, 320, 256)),
            [(0, 256, 0, 150, True), (0, 256, 160, 320, True)],
        ),
        ((_region(0, 0, 320, 50, fmt=3),), [(0, 256, 0, 320, False)]),
        ((_region(10, 20, 400, 300),), [(20, 256, 10, 320, True)]),
        ((_region(5, 5, 5 + MIN_REGION_PX - 1, 100),), [(0, 256, 0, 320, False)]),
    ],
    ids=["none", "one", "dual-view", "spectral-only", "clipped", "too-narrow"],
)
def test_analysis_boxes_regions_give_policy_boxes(regions: tuple, expected: list) -> None:
    boxes = analysis_boxes(regions, SHAPE)
    assert [(b.y0, b.y1, b.x0, b.x1, b.region is not None) for b in boxes] == expected


def test_crop_box_is_largest_analysis_box() -> None:
    regions = (_region(0, 0, 150, 256), _region(160, 0, 320, 256))
    largest = max(analysis_boxes(regions, SHAPE), key=lambda b: b.area_px)
    assert crop_box(regions, SHAPE) == (largest.x0, largest.y0, largest.x1, largest.y1)
    assert bmode_region(regions, SHAPE) is largest.region


def test_common_pixel_spacing_differing_panes_gives_none_equal_gives_value() -> None:
    left, right = _region(0, 0, 150, 256, 0.1), _region(160, 0, 320, 256, 0.2)
    assert common_pixel_spacing(analysis_boxes((left, right), SHAPE)) is None
    same = _region(160, 0, 320, 256, 0.1)
    assert common_pixel_spacing(analysis_boxes((left, same), SHAPE)) == pytest.approx((0.1, 0.1))
    assert common_pixel_spacing([CropBox(0, 10, 0, 10, None)]) is None


def _item(x0: int, x1: int, rows: int, delta_cm: float) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = 1, 1, 0
    item.RegionLocationMinX0, item.RegionLocationMaxX1 = x0, x1 - 1
    item.RegionLocationMinY0, item.RegionLocationMaxY1 = 0, rows - 1
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3
    item.PhysicalDeltaX = item.PhysicalDeltaY = delta_cm
    return item


@pytest.mark.parametrize(
    ("items", "spacing"),
    [
        # Dual view, panes calibrated differently: before, the SEG claimed the larger pane's
        # 0.2 mm for the whole image while the crops and the SR measured each pane apart.
        ([(0, 150, 0.01), (150, 320, 0.02)], (1.0, 1.0)),
        # A calibrated region too small to be analysed: before, the SEG claimed its 0.1 mm
        # while the model read the whole, uncalibrated frame.
        ([(0, 10, 0.01)], (1.0, 1.0)),
        ([(0, 150, 0.01), (150, 320, 0.01)], (0.1, 0.1)),
    ],
    ids=["dual-view-differing", "tiny-region", "dual-view-same"],
)
def test_build_seg_pixel_spacing_follows_analysed_boxes(items: list, spacing: tuple) -> None:
    ds = make_us_dataset()
    ds.SequenceOfUltrasoundRegions = [_item(x0, x1, 256, d) for x0, x1, d in items]
    boxes = analysis_boxes(tissue_regions(ds), (int(ds.Rows), int(ds.Columns)))
    assert (common_pixel_spacing(boxes) or (1.0, 1.0)) == pytest.approx(spacing)
    mask = np.zeros((1, 256, 320), dtype=bool)
    mask[0, 100:140, 100:160] = True
    seg = build_seg([ds], [mask], [[1]], AlgorithmInfo("wecare-test", "v1"), 900)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == pytest.approx(list(spacing))
