"""Sequence of Ultrasound Regions (PS3.3 C.8.5.5) → :class:`UltrasoundRegion`, crop box.

Region Spatial Format (0018,6012): 1 = 2D (tissue or flow), 2 = M-mode, 3 = Spectral,
4 = Waveform. Region Data Type (0018,6014): 1 = tissue, 2 = color flow, ...
Physical Units X/Y Direction (0018,6024/6026): 3 = cm. Physical Delta X/Y (0018,602C/602E)
is the size of one pixel in those units; negative values occur in the wild (direction of
the axis), so we use the absolute value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydicom.dataset import Dataset

from dicom_io.types import UltrasoundRegion

__all__ = [
    "SPATIAL_FORMAT_2D",
    "bmode_region",
    "crop_box",
    "parse_regions",
    "tissue_regions",
]

SPATIAL_FORMAT_2D = 1
_DATA_TYPE_TISSUE = 1
_UNITS_CM = 3


def _region_from_item(item: Dataset, shape: tuple[int, int] | None) -> UltrasoundRegion | None:
    # Skip malformed items instead of failing the whole instance: tolerant on read.
    try:
        x0 = int(item.RegionLocationMinX0)
        y0 = int(item.RegionLocationMinY0)
        x1 = int(item.RegionLocationMaxX1) + 1
        y1 = int(item.RegionLocationMaxY1) + 1
        spatial_format = int(item.get("RegionSpatialFormat", 0) or 0)
    except (AttributeError, TypeError, ValueError):
        return None
    x0, y0 = max(x0, 0), max(y0, 0)
    if shape is not None:
        rows, columns = shape
        x1, y1 = min(x1, columns), min(y1, rows)
    if x1 <= x0 or y1 <= y0:
        return None
    mm_x = mm_y = None
    units_x = item.get("PhysicalUnitsXDirection")
    units_y = item.get("PhysicalUnitsYDirection")
    delta_x = item.get("PhysicalDeltaX")
    delta_y = item.get("PhysicalDeltaY")
    if units_x == _UNITS_CM and units_y == _UNITS_CM and delta_x and delta_y:
        try:
            candidate_x, candidate_y = abs(float(delta_x)) * 10.0, abs(float(delta_y)) * 10.0
        except (TypeError, ValueError):
            candidate_x = candidate_y = 0.0
        # Finite only: a delta of inf or 1e308 cm is no calibration (fuzz found it crashing).
        if 0 < candidate_x < math.inf and 0 < candidate_y < math.inf:
            mm_x, mm_y = candidate_x, candidate_y
    return UltrasoundRegion(
        x0=x0,
        y0=y0,
        x1=x1,
        y1=y1,
        spatial_format=spatial_format,
        mm_per_pixel_x=mm_x,
        mm_per_pixel_y=mm_y,
    )


def parse_regions(ds: Dataset) -> tuple[UltrasoundRegion, ...]:
    """Return every valid item of Sequence of Ultrasound Regions (0018,6011), in order.

    Boxes are clipped to the image (Rows × Columns when present); items without a
    location or with an empty box are skipped.
    """
    shape = None
    if "Rows" in ds and "Columns" in ds:
        shape = (int(ds.Rows), int(ds.Columns))
    regions = []
    for item in ds.get("SequenceOfUltrasoundRegions", None) or []:
        region = _region_from_item(item, shape)
        if region is not None:
            regions.append(region)
    return tuple(regions)


def tissue_regions(ds: Dataset) -> tuple[UltrasoundRegion, ...]:
    """Return the 2D tissue (B-mode) regions of ``ds``.

    Regions with Region Spatial Format 1 and Region Data Type 1 (tissue); if an image has
    2D regions but none is typed tissue, all 2D regions are returned.
    """
    shape = None
    if "Rows" in ds and "Columns" in ds:
        shape = (int(ds.Rows), int(ds.Columns))
    tissue: list[UltrasoundRegion] = []
    other_2d: list[UltrasoundRegion] = []
    for item in ds.get("SequenceOfUltrasoundRegions", None) or []:
        region = _region_from_item(item, shape)
        if region is None or region.spatial_format != SPATIAL_FORMAT_2D:
            continue
        data_type = item.get("RegionDataType")
        (tissue if data_type in (None, _DATA_TYPE_TISSUE) else other_2d).append(region)
    return tuple(tissue) if tissue else tuple(other_2d)


def bmode_region(
    regions: Sequence[UltrasoundRegion], shape: tuple[int, int]
) -> UltrasoundRegion | None:
    """Choose the B-mode region to analyse, or None when there is none.

    The largest 2D region (first one on ties): a dual-view image (two B-mode panes side
    by side) gives the larger pane, never the union with the gap and annotations between
    them. Regions outside ``shape`` (rows, columns) are ignored.
    """
    rows, columns = shape
    best: UltrasoundRegion | None = None
    for region in regions:
        if region.spatial_format != SPATIAL_FORMAT_2D:
            continue
        if region.x0 >= columns or region.y0 >= rows:
            continue
        if best is None or region.area_px > best.area_px:
            best = region
    return best


def crop_box(
    regions: Sequence[UltrasoundRegion], shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Return the pixel box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) to crop for the model.

    Parameters
    ----------
    regions: Sequence[UltrasoundRegion]
        Regions of the image (e.g. ``Frames.regions``).
    shape: tuple[int, int]
        (rows, columns) of the image.

    Returns
    -------
    tuple[int, int, int, int]
        The box of :func:`bmode_region` clipped to the image, or the whole image when
        there is no 2D region.
    """
    rows, columns = int(shape[0]), int(shape[1])
    if rows <= 0 or columns <= 0:
        raise ValueError(f"shape must be positive (rows, columns), got {shape}")
    region = bmode_region(regions, (rows, columns))
    if region is None:
        return (0, 0, columns, rows)
    return (region.x0, region.y0, min(region.x1, columns), min(region.y1, rows))
