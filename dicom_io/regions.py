"""Sequence of Ultrasound Regions (PS3.3 C.8.5.5) → :class:`UltrasoundRegion`; the crop policy.

Region Spatial Format (0018,6012): 1 = 2D (tissue or flow), 2 = M-mode, 3 = Spectral,
4 = Waveform. Region Data Type (0018,6014): 1 = tissue, 2 = color flow, ...
Physical Units X/Y Direction (0018,6024/6026): 3 = cm. Physical Delta X/Y (0018,602C/602E)
is the size of one pixel in those units; negative values occur in the wild (direction of
the axis), so we use the absolute value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicom_io.types import UltrasoundRegion

__all__ = [
    "MIN_REGION_PX",
    "SPATIAL_FORMAT_2D",
    "CropBox",
    "analysis_boxes",
    "bmode_region",
    "common_pixel_spacing",
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


#: Smallest analysed region (rows and columns, after clipping): narrower 2D regions are
#: scale bars, thumbnails or annotation boxes, not tissue the model can read.
MIN_REGION_PX = 16


@dataclass(frozen=True)
class CropBox:
    """One part of a frame the model analyses: a 2D region, or the whole frame.

    Attributes
    ----------
    y0, y1, x0, x1: int
        Pixel box, ``y1``/``x1`` exclusive, inside the frame.
    region: UltrasoundRegion | None
        The region the box comes from (its calibration measures the lesion), None for the
        whole frame of an image without a usable 2D region.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    region: UltrasoundRegion | None

    def __post_init__(self) -> None:
        if not (0 <= self.y0 < self.y1 and 0 <= self.x0 < self.x1):
            raise ValueError("CropBox needs 0 <= y0 < y1 and 0 <= x0 < x1")

    @property
    def slices(self) -> tuple[slice, slice]:
        """(rows, columns) slices of the box, for ``frame[box.slices]``."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def area_px(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)

    @property
    def mm_per_pixel(self) -> tuple[float, float] | None:
        """(row, column) pixel size in mm from the region's calibration, or None."""
        region = self.region
        if region is None or region.mm_per_pixel_x is None or region.mm_per_pixel_y is None:
            return None
        return (region.mm_per_pixel_y, region.mm_per_pixel_x)


def analysis_boxes(
    regions: Sequence[UltrasoundRegion], shape: tuple[int, int]
) -> tuple[CropBox, ...]:
    """The crop policy: what of a frame the model analyses. One policy for every caller.

    Every 2D region (Region Spatial Format 1), clipped to the frame, at least
    :data:`MIN_REGION_PX` pixels in each direction, in the order of the Sequence of
    Ultrasound Regions: a dual view (two B-mode panes) gives two boxes, each with its own
    calibration. Without such a region, the whole frame (``region`` None: no calibration).

    Parameters
    ----------
    regions: Sequence[UltrasoundRegion]
        The image's tissue regions (``ImageInfo.regions``, :func:`tissue_regions`).
    shape: tuple[int, int]
        (rows, columns) of the frame.
    """
    rows, columns = int(shape[0]), int(shape[1])
    if rows <= 0 or columns <= 0:
        raise ValueError(f"shape must be positive (rows, columns), got {shape}")
    boxes = []
    for region in regions:
        if region.spatial_format != SPATIAL_FORMAT_2D:
            continue
        y0, y1 = max(0, region.y0), min(rows, region.y1)
        x0, x1 = max(0, region.x0), min(columns, region.x1)
        if y1 - y0 >= MIN_REGION_PX and x1 - x0 >= MIN_REGION_PX:
            boxes.append(CropBox(y0, y1, x0, x1, region))
    return tuple(boxes) or (CropBox(0, rows, 0, columns, None),)


def common_pixel_spacing(boxes: Sequence[CropBox]) -> tuple[float, float] | None:
    """(row, column) mm per pixel shared by every box, or None.

    None when a box is uncalibrated or two boxes differ: one value cannot then describe the
    frame (a SEG's Pixel Measures), while each box still measures with its own.
    """
    spacings = set()
    for box in boxes:
        spacing = box.mm_per_pixel
        if spacing is None:
            return None
        spacings.add((round(spacing[0], 9), round(spacing[1], 9)))
    return spacings.pop() if len(spacings) == 1 else None


def bmode_region(
    regions: Sequence[UltrasoundRegion], shape: tuple[int, int]
) -> UltrasoundRegion | None:
    """The region of the largest analysed box (first on ties), None when the whole frame is.

    A dual-view image gives the larger pane, never the union with the gap and annotations
    between them (:func:`analysis_boxes` decides what is analysed).
    """
    boxes = analysis_boxes(regions, shape)
    return max(boxes, key=lambda box: box.area_px).region  # max keeps the first on ties


def crop_box(
    regions: Sequence[UltrasoundRegion], shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Return the pixel box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) of the largest analysed box.

    For callers that want one crop (``wecare infer``); the service analyses every box of
    :func:`analysis_boxes`, and this is the largest of them, or the whole image when there
    is no 2D region.
    """
    box = max(analysis_boxes(regions, shape), key=lambda b: b.area_px)
    return (box.x0, box.y0, box.x1, box.y1)
