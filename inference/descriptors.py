"""ACR BI-RADS ultrasound descriptors of one lesion, from its mask and its image.

Arrays and pixel spacing in, a frozen :class:`LesionDescriptors` out; nothing here knows
DICOM (``dicom_io/sr.py`` codes the words, ``service`` reads the files).

Two steps, kept apart so that thresholds can be cross-validated without recomputing
images (``inference/descriptor_eval.py``):

1. :func:`lesion_features` measures geometry and intensity (:class:`LesionFeatures`), in mm
   where the spacing is known, so that non-square pixels do not bend shapes or angles.
2. One small named rule per descriptor (:func:`shape_rule`, :func:`orientation_rule`,
   :func:`margin_rule`, :func:`margin_detail_rule`, :func:`echo_pattern_rule`,
   :func:`posterior_rule`) turns features into lexicon words; each states its rule in its
   docstring. The thresholds are :class:`Thresholds` (defaults: chosen on the
   BrEaST-Lesions_USG development half, see docs/experiments/descriptors.md for how, and
   for their cross-validated agreement with the radiologist).

:func:`describe_lesion` runs both; where a learned head beat the rule on held-out folds
(pre-registered test, docs/experiments/descriptors.md) the head decides instead: margin
(:class:`LogisticHead`, ``inference/weights/margin_head.json``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from dicom_io.measure import feret_calipers

__all__ = [
    "ECHO_PATTERNS",
    "MARGINS",
    "MARGIN_DETAILS",
    "ORIENTATIONS",
    "POSTERIOR_FEATURES",
    "SHAPES",
    "LesionDescriptors",
    "LesionFeatures",
    "LogisticHead",
    "Thresholds",
    "describe_lesion",
    "echo_pattern_rule",
    "lesion_features",
    "margin_detail_rule",
    "margin_rule",
    "orientation_rule",
    "posterior_rule",
    "shape_rule",
    "shipped_heads",
]

SHAPES = ("oval", "round", "irregular")
ORIENTATIONS = ("parallel", "not parallel")
MARGINS = ("circumscribed", "not circumscribed")
MARGIN_DETAILS = ("indistinct", "angular", "microlobulated", "spiculated")
ECHO_PATTERNS = (
    "anechoic",
    "hypoechoic",
    "isoechoic",
    "hyperechoic",
    "complex cystic and solid",
    "heterogeneous",
)
POSTERIOR_FEATURES = ("none", "enhancement", "shadowing", "combined")
MIN_LESION_PIXELS = 20  # fewer pixels: too small to tell a shape or a margin


@dataclass(frozen=True)
class LesionDescriptors:
    """One lesion in BI-RADS ultrasound words (lower case); None where it cannot be told.

    Attributes
    ----------
    shape: str | None
        One of :data:`SHAPES`.
    orientation: str | None
        One of :data:`ORIENTATIONS`.
    margin: str | None
        One of :data:`MARGINS`.
    margin_detail: tuple[str, ...]
        For a not circumscribed margin, those of :data:`MARGIN_DETAILS` that were told
        (empty otherwise).
    echo_pattern: str | None
        One of :data:`ECHO_PATTERNS`.
    posterior: str | None
        One of :data:`POSTERIOR_FEATURES`.
    long_axis_mm, short_axis_mm: float | None
        Longest caliper diameter and the caliper width perpendicular to it; None without
        a pixel spacing.
    area_mm2: float | None
        Mask area; None without a pixel spacing.
    depth_mm: float | None
        From the skin line (first tissue row above the lesion) to the lesion's top;
        None without a pixel spacing.
    message: str | None
        Why descriptors are missing (e.g. an empty mask), else None.
    """

    shape: str | None = None
    orientation: str | None = None
    margin: str | None = None
    margin_detail: tuple[str, ...] = ()
    echo_pattern: str | None = None
    posterior: str | None = None
    long_axis_mm: float | None = None
    short_axis_mm: float | None = None
    area_mm2: float | None = None
    depth_mm: float | None = None
    message: str | None = None

    def __post_init__(self) -> None:
        for name, allowed in (
            ("shape", SHAPES),
            ("orientation", ORIENTATIONS),
            ("margin", MARGINS),
            ("echo_pattern", ECHO_PATTERNS),
            ("posterior", POSTERIOR_FEATURES),
        ):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"LesionDescriptors.{name} must be None or one of {allowed}")
        if not isinstance(self.margin_detail, tuple) or any(
            d not in MARGIN_DETAILS for d in self.margin_detail
        ):
            raise ValueError(f"LesionDescriptors.margin_detail must be a tuple of {MARGIN_DETAILS}")
        if self.margin_detail and self.margin != "not circumscribed":
            raise ValueError("LesionDescriptors.margin_detail needs margin 'not circumscribed'")
        for name in ("long_axis_mm", "short_axis_mm", "area_mm2", "depth_mm"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"LesionDescriptors.{name} must be None or a finite number >= 0")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the ten descriptor keys (margin_detail a list, or None when empty)."""
        out: dict[str, Any] = {
            "shape": self.shape,
            "orientation": self.orientation,
            "margin": self.margin,
            "margin_detail": list(self.margin_detail) or None,
            "echo_pattern": self.echo_pattern,
            "posterior": self.posterior,
        }
        for name in ("long_axis_mm", "short_axis_mm", "area_mm2", "depth_mm"):
            value = getattr(self, name)
            out[name] = None if value is None else round(float(value), 2)
        return out


@dataclass(frozen=True)
class LesionFeatures:
    """Geometry and intensity of one lesion, the inputs of the rules.

    Lengths in mm (in pixels of the first axis when the spacing is unknown); intensities as
    fractions of the image's 0..1 range. See :func:`lesion_features` for each definition.
    """

    axis_ratio: float  # minor / major axis of the moment ellipse (1 = circle)
    angle_deg: float  # major axis against the image rows, 0..90
    solidity: float  # area / convex hull area
    ellipse_iou: float  # overlap with the ellipse of the same moments
    protrusion: float  # area share removed by an opening of radius 8% of the diameter
    roughness: float  # high-pass radial signature, std / mean radius
    spikes: float  # narrow radial peaks of the outline (count)
    corner: float  # sharpest outline turn (degrees), 0 for a smooth outline
    weak_margin: float  # share of 16 outline sectors whose edge contrast is weak
    edge_gradient: float  # mean intensity gradient (per mm) within 0.6 mm of the outline
    mean_in: float  # mean inside (eroded)
    mean_around: float  # mean of tissue beside and above the lesion
    echo_ratio: float  # mean_in / mean_around
    cv_in: float  # std / mean inside
    dark_share: float  # share of inside pixels darker than half of mean_around
    bright_share: float  # share of inside pixels brighter than 0.8 x mean_around
    posterior_ratio: float  # mean below the lesion / mean beside that
    posterior_split: float  # difference of the two halves' ratios below the lesion
    long_axis: float
    short_axis: float
    area: float
    depth: float

    def as_dict(self) -> dict[str, float]:
        """Plain floats, for tables and JSON."""
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Thresholds:
    """The rules' cut-offs. Defaults: see docs/experiments/descriptors.md (cross-validated)."""

    # Tuned (inference/descriptor_eval.py, all 126 lesions of the development half;
    # their held-out 5-fold agreement is in docs/experiments/descriptors.md).
    round_axis_ratio: float = 0.75
    irregular_solidity: float = 0.94
    irregular_ellipse_iou: float = 0.80
    circumscribed_edge_gradient: float = 0.10
    circumscribed_solidity: float = 0.93
    circumscribed_ellipse_iou: float = 0.82
    anechoic_share: float = 0.95
    hypoechoic_ratio: float = 0.80
    hyperechoic_ratio: float = 0.70  # below hypoechoic_ratio: the radiologist's "isoechoic"
    # lesions were not separable from hyperechoic ones by the ratio (see the docs)
    heterogeneous_cv: float = 0.70
    complex_share: float = 0.30
    enhancement_ratio: float = 1.40
    shadowing_ratio: float = 0.65
    combined_split: float = 0.50
    # Not tuned (no agreement target): margin details.
    angular_corner_deg: float = 100.0
    spiculated_spikes: float = 3.0
    microlobulated_roughness: float = 0.03
    edge_contrast: float = 0.15

    def replace(self, **changes: float) -> Thresholds:
        """A copy with some cut-offs changed (unknown names raise)."""
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown thresholds: {sorted(unknown)}")
        return Thresholds(**{**asdict(self), **changes})


DEFAULT_THRESHOLDS = Thresholds()


def _as_unit_float(image: np.ndarray) -> np.ndarray:
    """Integers scaled by their type's maximum, floats taken as 0..1 (clipped)."""
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    return np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0)


_TISSUE_PERCENTILES = (10, 90, 99)  # p10/p90: the contrast scale; p99: the skin line's level
_LEVELED = (np.dtype(np.uint8), np.dtype(np.uint16))  # images whose levels are counted


def _tissue_percentiles(image: np.ndarray) -> tuple[float, float, float, bool]:
    """p10, p90, p99 of the tissue grey levels (``img > 0.02`` of :func:`_as_unit_float`)
    over the whole frame, and whether the frame has so little tissue that every pixel
    counts as tissue.

    For 8- and 16-bit unsigned input the percentiles come from a histogram of the levels, bit
    for bit what ``np.percentile`` (linear interpolation) gives on the tissue values (tested),
    without converting or sorting the frame.
    """
    if image.dtype not in _LEVELED:
        img = _as_unit_float(image)
        tissue = img > 0.02
        few = np.count_nonzero(tissue) < MIN_LESION_PIXELS
        values = img.ravel() if few else img[tissue]
        p10, p90, p99 = (float(v) for v in np.percentile(values, _TISSUE_PERCENTILES))
        return p10, p90, p99, few
    top = int(np.iinfo(image.dtype).max)
    levels = np.arange(top + 1, dtype=image.dtype).astype(np.float32) / float(top)
    counts = np.bincount(image.ravel(), minlength=top + 1)
    keep = levels > 0.02  # the same float32 comparison as on the image
    few = int(counts[keep].sum()) < MIN_LESION_PIXELS
    if few:
        keep = np.ones_like(keep)
    values, cumulative = levels[keep], np.cumsum(counts[keep])
    n = int(cumulative[-1])
    # np.percentile's linear method (numpy/lib/_function_base_impl.py: _quantile, _lerp).
    virtual = (n - 1) * np.true_divide(_TISSUE_PERCENTILES, 100)
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= n - 1
    previous[above] = n - 1
    following[above] = n - 1
    gamma = virtual - np.where(above, -1, previous)
    a = values[np.searchsorted(cumulative, previous.astype(np.intp), side="right")]
    b = values[np.searchsorted(cumulative, following.astype(np.intp), side="right")]
    diff = b - a
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe",
                dtype=np.float64)
    return float(out[0]), float(out[1]), float(out[2]), few


def _squared_edt(mask: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Squared ``ndimage.distance_transform_edt(mask, sampling=(dy, dx))`` (mm^2), computed
    as scipy computes it before its square root, so the same bits, in fewer passes."""
    ft = ndimage.distance_transform_edt(
        mask, sampling=(dy, dx), return_distances=False, return_indices=True
    )
    height, width = mask.shape
    dist2 = (ft[0] - np.arange(height, dtype=ft.dtype)[:, None]).astype(np.float64)
    dist2 *= dy
    dist2 *= dist2
    across = (ft[1] - np.arange(width, dtype=ft.dtype)).astype(np.float64)
    across *= dx
    across *= across
    dist2 += across
    return dist2


def _squared_limit(limit: float) -> float:
    """The largest float x with ``sqrt(x) <= limit``: ``sqrt(d2) <= limit`` exactly when
    ``d2 <= _squared_limit(limit)`` (sqrt is correctly rounded, so monotone)."""
    x = limit * limit
    while math.sqrt(x) > limit:
        x = math.nextafter(x, -math.inf)
    while math.sqrt(math.nextafter(x, math.inf)) <= limit:
        x = math.nextafter(x, math.inf)
    return x


def _open(inside2: np.ndarray, radius_mm: float, dx: float, dy: float) -> np.ndarray:
    """Morphological opening by a disk of `radius_mm` of the mask whose squared distance
    transform is `inside2`, via exact distance transforms (fast for large radii, and a true
    disk in mm on non-square pixels)."""
    radius2 = _squared_limit(radius_mm)
    eroded = inside2 > radius2
    if not eroded.any():
        return eroded
    return _squared_edt(~eroded, dx, dy) <= radius2


def _outline(box: np.ndarray) -> np.ndarray:
    """Lesion pixels with a 4-neighbour outside the lesion (or outside the image): the
    same as ``m & ~binary_erosion(m)`` on any array holding the lesion's bounding box."""
    inner = box.copy()
    inner[1:] &= box[:-1]
    inner[:-1] &= box[1:]
    inner[:, 1:] &= box[:, :-1]
    inner[:, :-1] &= box[:, 1:]
    inner[[0, -1], :] = False  # beyond the box: background
    inner[:, [0, -1]] = False
    return box & ~inner


def _outline_corners(edge: np.ndarray) -> np.ndarray:
    """(x, y) pixel corners of the outline pixels in `edge`, each once, in the order
    ``np.unique(..., axis=0)`` gives (by x, then y), without sorting 4x the corners."""
    across = edge.T  # (x, y): np.nonzero then lists corners by x, then y
    grid = np.zeros((across.shape[0] + 1, across.shape[1] + 1), dtype=bool)
    for ox in (0, 1):
        for oy in (0, 1):
            grid[ox : ox + across.shape[0], oy : oy + across.shape[1]] |= across
    return np.stack(np.nonzero(grid), axis=1)


def _radial_signature(
    rows: np.ndarray, cols: np.ndarray, edge_rows: np.ndarray, edge_cols: np.ndarray,
    dx: float, dy: float, bins: int = 128,
) -> tuple[np.ndarray, float, float]:
    """Outline radius (mm) per angle bin around the centroid, and the centroid (x, y) mm,
    from the lesion's pixels and its outline pixels (row, column indices)."""
    cx, cy = (cols.mean() + 0.5) * dx, (rows.mean() + 0.5) * dy
    x = (edge_cols + 0.5) * dx - cx
    y = (edge_rows + 0.5) * dy - cy
    angle = np.arctan2(y, x)
    radius = np.hypot(x, y)
    index = ((angle + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    signature = np.zeros(bins)
    np.maximum.at(signature, index, radius)
    empty = signature == 0
    if empty.any() and not empty.all():  # fill gaps by circular interpolation
        known = np.nonzero(~empty)[0]
        signature[empty] = np.interp(np.nonzero(empty)[0], known, signature[known], period=bins)
    return signature, float(cx), float(cy)


def _circular_smooth(values: np.ndarray, window: int) -> np.ndarray:
    return ndimage.uniform_filter1d(values, size=max(1, window), mode="wrap")


def _lesion_window(
    shape: tuple[int, int], box: tuple[int, int, int, int], diameter: float, dx: float,
    dy: float,
) -> tuple[int, int, int]:
    """(bottom, left, right): the window ``[:bottom, left:right]`` of the image that
    :func:`lesion_features` reads around a lesion whose bounding box is `box` (top, bottom,
    left, right pixel, inclusive): rows from the top (the skin line) to past the posterior
    region and the 4 mm band, columns past the band and half a lesion width beside the
    posterior region, plus a margin."""
    height, width = shape
    top, low, first, last = box
    band_mm = max(4.0, 0.3 * diameter, 1.0, 0.1 * diameter)
    grow_x = int(math.ceil(band_mm / dx)) + 3
    grow_y = int(math.ceil(band_mm / dy)) + 3
    lesion_height = low - top + 1
    lesion_width = last - first + 1
    depth_rows = max(int(round(3.0 / dy)), lesion_height)
    bottom = min(height, low + 1 + max(depth_rows, grow_y) + 2)
    half = max(1, lesion_width // 2)
    left = max(0, first - max(half, grow_x) - 2)
    right = min(width, last + 1 + max(half, grow_x) + 2)
    return bottom, left, right


def _grown(
    box: tuple[int, int, int, int], grow_y: int, grow_x: int, shape: tuple[int, int],
    grow_down: int | None = None,
) -> tuple[int, int, int, int]:
    """Rows [y0, y1) and columns [x0, x1) of `box` (top, bottom, left, right pixel,
    inclusive) grown by `grow_y` rows (`grow_down` below, when given) and `grow_x` columns,
    clamped to an array of `shape`: cut there, a part keeps the edges the whole array has.

    Every part of the window that :func:`lesion_features` cuts is cut here (the tests
    compare with a version of this that returns the whole window)."""
    top, low, first, last = box
    down = grow_y if grow_down is None else grow_down
    return (max(0, top - grow_y), min(shape[0], low + 1 + down), max(0, first - grow_x),
            min(shape[1], last + 1 + grow_x))


def lesion_features(
    image: np.ndarray,
    mask: np.ndarray,
    mm_per_pixel_x: float | None = None,
    mm_per_pixel_y: float | None = None,
) -> LesionFeatures:
    """Measure one lesion.

    Parameters
    ----------
    image: numpy.ndarray
        ``(H, W)`` grayscale B-mode image, skin at the top (integers scaled by their type's
        maximum, floats taken as 0..1).
    mask: numpy.ndarray
        ``(H, W)`` lesion mask (non-zero = lesion); several components are measured together.
    mm_per_pixel_x, mm_per_pixel_y: float, optional
        Pixel width and height in mm. Without them pixels count as 1 x 1 (square), and
        lengths are in pixels.

    Raises
    ------
    ValueError
        Shapes differ, the mask has fewer than :data:`MIN_LESION_PIXELS` pixels, or a
        spacing is not positive.
    """
    source = np.asarray(image)
    if source.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {source.shape}")
    m = np.asarray(mask)
    if m.shape != source.shape:
        raise ValueError(f"mask shape {m.shape} differs from image shape {source.shape}")
    m = m.astype(bool, copy=False)  # read only
    count = int(np.count_nonzero(m))
    if count < MIN_LESION_PIXELS:
        raise ValueError(f"mask has fewer than {MIN_LESION_PIXELS} lesion pixels")
    dx = 1.0 if mm_per_pixel_x is None else float(mm_per_pixel_x)
    dy = dx if mm_per_pixel_y is None else float(mm_per_pixel_y)
    if mm_per_pixel_x is None and mm_per_pixel_y is not None:
        dx = dy
    if not (dx > 0 and dy > 0 and math.isfinite(dx) and math.isfinite(dy)):
        raise ValueError("pixel spacing must be positive")

    # Whole-image statistics first (the tissue's grey levels, for contrast scales and the skin
    # line), then everything else on a window around the lesion: full rows from the skin down
    # to past the posterior region, and columns wide enough for the bands and the region beside
    # it. Within the window each step reads only the part it needs (the lesion's bounding box,
    # grown by the reach of its distance band, filter or sector), cut so that the result is
    # the window's to the bit: a cut keeps the window's edges where it reaches them, and leaves
    # at least one background pixel around the lesion for its distance transforms (tested
    # against the whole image, and against the untrimmed version on BUSI and BUS-BRA).
    p10, p90, p99, all_tissue = _tissue_percentiles(source)
    row_any = np.nonzero(m.any(axis=1))[0]
    top, low = int(row_any[0]), int(row_any[-1])
    col_any = np.nonzero(m[top : low + 1].any(axis=0))[0]
    area = float(count) * dx * dy
    diameter = 2.0 * math.sqrt(area / math.pi)  # of the circle with the same area
    bottom_px, left, right = _lesion_window(
        source.shape, (top, low, int(col_any[0]), int(col_any[-1])), diameter, dx, dy
    )
    # 0..1 grey levels of the window only (the same values as of the whole frame).
    img = _as_unit_float(source[:bottom_px, left:right])
    m = m[:bottom_px, left:right]
    height_px, width_px = img.shape
    first, last = int(col_any[0]) - left, int(col_any[-1]) - left  # window columns
    shape = (height_px, width_px)
    lesion_box = (top, low, first, last)
    by0, by1, bx0, bx1 = _grown(lesion_box, 0, 0, shape)
    box = m[by0:by1, bx0:bx1]
    box_rows, box_cols = np.nonzero(box)
    rows, cols = box_rows + by0, box_cols + bx0  # window pixels, row by row

    # Moments in mm: major/minor axes and the angle of the major axis.
    # np.cov(xy, rowvar=False) step by step (numpy/lib/_function_base_impl.py: cov), so that
    # its mean is also the centre, without copying xy: the same operations, the same bits.
    xy = np.stack([(cols + 0.5) * dx, (rows + 0.5) * dy], axis=1)
    centred = xy.T
    centre = centred.mean(axis=1)
    centred -= centre[:, None]
    cov = np.dot(centred, centred.T.conj())
    cov *= np.true_divide(1, xy.shape[0] - 1)
    cov = cov + np.eye(2) * (dx * dy / 12.0)
    evals, evecs = np.linalg.eigh(cov)
    axis_ratio = float(math.sqrt(max(evals[0], 1e-12) / max(evals[1], 1e-12)))
    major = evecs[:, 1]
    angle_deg = float(math.degrees(math.atan2(abs(major[1]), abs(major[0]))))

    # Convex hull (pixel corners) and the moment ellipse, both in pixels: area ratios
    # do not change under the pixel-to-mm scaling.
    edge = _outline(box)
    corners = _outline_corners(edge) + np.array([bx0, by0])  # window (x, y)
    try:  # the hull of all pixel corners is that of the outline pixels' corners
        hull_area = float(ConvexHull(corners).volume)
        solidity = float(count) / hull_area
    except QhullError:  # pragma: no cover - MIN_LESION_PIXELS pixels always span an area
        solidity = 1.0
    inv = np.linalg.inv(cov)
    lesion_h, lesion_w = low - top + 1, last - first + 1
    # The frame: the lesion's box grown by its own size (also the origin of the outline's
    # coordinates below, so not one of the cut parts).
    y0, y1 = max(0, top - lesion_h), min(height_px, low + 1 + lesion_h)
    x0, x1 = max(0, first - lesion_w), min(width_px, last + 1 + lesion_w)
    # The ellipse (2 standard deviations) reaches 2 sqrt(cov_ii) from the centre along axis
    # i: evaluated on its bounding box (2 pixels more) within the frame [y0:y1, x0:x1].
    reach_x, reach_y = 2.0 * math.sqrt(cov[0, 0]) / dx, 2.0 * math.sqrt(cov[1, 1]) / dy
    centre_x, centre_y = centre[0] / dx - 0.5, centre[1] / dy - 0.5
    ey0, ey1, ex0, ex1 = _grown(
        (math.floor(centre_y - reach_y), math.ceil(centre_y + reach_y),
         math.floor(centre_x - reach_x), math.ceil(centre_x + reach_x)), 2, 2, shape,
    )
    ey0, ex0 = min(max(ey0, y0), y1), min(max(ex0, x0), x1)
    ey1, ex1 = max(min(ey1, y1), ey0), max(min(ex1, x1), ex0)
    sub_y = (np.arange(ey0, ey1)[:, None] + 0.5) * dy - centre[1]
    sub_x = (np.arange(ex0, ex1)[None, :] + 0.5) * dx - centre[0]
    dist2 = inv[0, 0] * sub_x**2 + 2 * inv[0, 1] * sub_x * sub_y + inv[1, 1] * sub_y**2
    ellipse = dist2 <= 4.0  # 2 standard deviations: the ellipse of a filled ellipse
    both = np.count_nonzero(ellipse & m[ey0:ey1, ex0:ex1])
    union = np.count_nonzero(ellipse) + count - both  # every lesion pixel is in the frame
    ellipse_iou = float(both) / max(union, 1)

    # Protrusions (spicules, lobules, corners): what an opening of radius 8% removes (the
    # opening of the lesion's box with a 1 pixel ring is that of any larger frame, inside it).
    ring = np.pad(box, 1)
    ring2 = _squared_edt(ring, dx, dy)
    opened = _open(ring2, 0.08 * diameter, dx, dy)
    protrusion = float(np.count_nonzero(ring & ~opened)) / max(count, 1)

    # Outline: radial signature around the centroid (mm), high-passed. Coordinates as in
    # the ellipse's frame padded by `pad` (sums in the same coordinates, the same bits).
    pad = max(3, int(math.ceil(0.1 * diameter / min(dx, dy))) + 2)
    edge_rows, edge_cols = np.nonzero(edge)
    shift_y, shift_x = by0 - y0 + pad, bx0 - x0 + pad
    signature, _, _ = _radial_signature(
        box_rows + shift_y, box_cols + shift_x, edge_rows + shift_y, edge_cols + shift_x, dx, dy
    )
    mean_radius = float(signature.mean()) or 1.0
    residual = signature - _circular_smooth(signature, len(signature) // 8)
    roughness = float(residual.std() / mean_radius)
    peaks = (residual > 0.06 * mean_radius) & (residual >= np.roll(residual, 1))
    peaks &= residual >= np.roll(residual, -1)
    spikes = float(np.count_nonzero(peaks))
    smooth = _circular_smooth(signature, 5)
    angles = np.linspace(-np.pi, np.pi, len(smooth), endpoint=False)
    px, py = smooth * np.cos(angles), smooth * np.sin(angles)
    step = 4
    vx1, vy1 = px - np.roll(px, step), py - np.roll(py, step)
    vx2, vy2 = np.roll(px, -step) - px, np.roll(py, -step) - py
    turn = np.degrees(np.abs(np.arctan2(vx1 * vy2 - vy1 * vx2, vx1 * vx2 + vy1 * vy2)))
    convex = (vx1 * vy2 - vy1 * vx2) > 0  # turning the outline's own way: a corner, not a dent
    corner = float(turn[convex].max()) if convex.any() else 0.0

    # Intensity bands: 1 mm inside and outside the outline; tissue 1-4 mm around. All of
    # them lie in the lesion's box grown by the 4 mm reach ("near"); distances inside the
    # lesion need only its box and a 1 pixel ring.
    band_mm = max(1.0, 0.1 * diameter)
    reach_mm = max(4.0, 0.3 * diameter)
    ny0, ny1, nx0, nx1 = _grown(  # below the lesion: only the 1 mm band
        lesion_box, int(math.ceil(reach_mm / dy)) + 2, int(math.ceil(reach_mm / dx)) + 2,
        shape, grow_down=int(math.ceil(band_mm / dy)) + 2,
    )
    near = m[ny0:ny1, nx0:nx1]
    near_img = img[ny0:ny1, nx0:nx1]
    tissue = np.ones(near.shape, dtype=bool) if all_tissue else near_img > 0.02
    iy0, iy1, ix0, ix1 = _grown(lesion_box, 1, 1, shape)
    # Squared distances (mm^2) against squared limits: the same comparisons as of the
    # distances (see _squared_limit), without the square roots.
    band2, reach2, edge2 = (_squared_limit(v) for v in (band_mm, reach_mm, 0.6))
    inside2 = np.zeros(near.shape)
    if (iy0, iy1, ix0, ix1) == (by0 - 1, by1 + 1, bx0 - 1, bx1 + 1):  # the ring's own
        inside2[iy0 - ny0 : iy1 - ny0, ix0 - nx0 : ix1 - nx0] = ring2
    else:  # the lesion touches the frame's edge, beyond which nothing is background
        inside2[iy0 - ny0 : iy1 - ny0, ix0 - nx0 : ix1 - nx0] = _squared_edt(
            m[iy0:iy1, ix0:ix1], dx, dy
        )
    outside2 = _squared_edt(~near, dx, dy)
    inner = near & (inside2 <= band2)
    grown1 = outside2 <= band2
    outer = grown1 & ~near
    grown4 = outside2 <= reach2
    bottom = low
    around = grown4 & ~grown1 & tissue
    around[bottom + 1 - ny0 :, :] = False  # not below the lesion: that is the posterior region
    core = inside2 > band2
    if np.count_nonzero(core) < MIN_LESION_PIXELS:
        core = near
    inside = near_img[core]
    mean_in = float(inside.mean())
    if around.any():
        mean_around = float(near_img[around].mean())
    else:
        full_img = _as_unit_float(source)
        tissue_full = np.ones_like(full_img, dtype=bool) if all_tissue else full_img > 0.02
        mean_around = float(full_img[tissue_full].mean())
    mean_around = max(mean_around, 1e-3)
    echo_ratio = mean_in / mean_around
    cv_in = float(inside.std() / max(mean_in, 1e-3))
    dark_share = float(np.mean(inside < 0.5 * mean_around))
    bright_share = float(np.mean(inside > 0.8 * mean_around))

    # Edge contrast per outline sector: weak where the outside band is not clearly
    # different from the inside band (the lesion fades into the tissue). Sectors of the
    # band's pixels only (window coordinates, as over the whole window).
    cy_px, cx_px = rows.mean(), cols.mean()
    outer_tissue = outer & tissue
    in_r, in_c = np.nonzero(inner)
    out_r, out_c = np.nonzero(outer_tissue)
    yy = np.concatenate([in_r, out_r]) + ny0
    xx = np.concatenate([in_c, out_c]) + nx0
    sector = ((np.arctan2(yy - cy_px, (xx - cx_px) * dx / dy) + np.pi) / (2 * np.pi) * 16).astype(
        int
    ) % 16
    in_sector, out_sector = sector[: len(in_r)], sector[len(in_r) :]
    in_values, out_values = near_img[inner], near_img[outer_tissue]
    scale = (p90 - p10) or 1.0
    weak = 0
    counted = 0
    for s in range(16):
        ins = in_values[in_sector == s]
        outs = out_values[out_sector == s]
        if len(ins) < 3 or len(outs) < 3:
            continue
        counted += 1
        if abs(float(outs.mean()) - float(ins.mean())) / scale < DEFAULT_THRESHOLDS.edge_contrast:
            weak += 1
    weak_margin = weak / counted if counted else 1.0
    # Sharpness: a circumscribed margin is an abrupt change, a steep gradient at the outline.
    # Filtered over the edge band's box grown by the filter's reach (truncate 4 sigma) and
    # the gradient's one pixel, plus one: the band's values are the window's.
    edge_band = (inside2 <= edge2) & (outside2 <= edge2) & tissue
    if edge_band.any():
        band_rows = np.nonzero(edge_band.any(axis=1))[0]
        band_cols = np.nonzero(edge_band.any(axis=0))[0]
        sigma = (0.3 / dy, 0.3 / dx)
        gy0, gy1, gx0, gx1 = _grown(
            (int(band_rows[0]) + ny0, int(band_rows[-1]) + ny0, int(band_cols[0]) + nx0,
             int(band_cols[-1]) + nx0),
            int(4.0 * sigma[0] + 0.5) + 2, int(4.0 * sigma[1] + 0.5) + 2, shape,
        )
        smooth_img = ndimage.gaussian_filter(img[gy0:gy1, gx0:gx1], sigma=sigma)
        grad_y, grad_x = np.gradient(smooth_img)
        band = np.zeros(smooth_img.shape, dtype=bool)  # the edge band in the filtered box
        by0, by1, bx0, bx1 = max(gy0, ny0), min(gy1, ny1), max(gx0, nx0), min(gx1, nx1)
        band[by0 - gy0 : by1 - gy0, bx0 - gx0 : bx1 - gx0] = edge_band[
            by0 - ny0 : by1 - ny0, bx0 - nx0 : bx1 - nx0
        ]
        edge_gradient = float(np.hypot(grad_y[band] / dy, grad_x[band] / dx).mean())
    else:
        edge_gradient = 0.0

    # Posterior: below the lesion's central columns, down to one lesion height (>= 3 mm),
    # against the same rows beside it (half a lesion width each side).
    c0, c1 = first, last + 1
    width = c1 - c0
    lesion_height = lesion_h
    depth_rows = max(int(round(3.0 / dy)), lesion_height)
    r0, r1 = bottom + 1, min(height_px, bottom + 1 + depth_rows)
    central0, central1 = c0 + width // 5, c1 - width // 5
    half = max(1, width // 2)
    posterior_ratio, posterior_split = 1.0, 0.0
    if r1 - r0 >= 2 and central1 - central0 >= 2:
        below = img[r0:r1, central0:central1]
        beside = np.concatenate(
            [
                img[r0:r1, max(0, c0 - half) : c0].ravel(),
                img[r0:r1, c1 : min(width_px, c1 + half)].ravel(),
            ]
        )
        beside = beside[beside > 0.02]
        if beside.size >= 4:
            ref = max(float(beside.mean()), 1e-3)
            posterior_ratio = float(below.mean()) / ref
            mid = below.shape[1] // 2
            left_ratio = float(below[:, :mid].mean()) / ref
            right_ratio = float(below[:, mid:].mean()) / ref
            if (left_ratio - 1) * (right_ratio - 1) < 0:
                posterior_split = abs(left_ratio - right_ratio)

    # Depth: skin line = first row above the lesion (in its columns) with tissue signal.
    column_means = img[: top + 1, c0:c1].mean(axis=1)
    level = 0.1 * p99
    skin = int(np.argmax(column_means > level)) if (column_means > level).any() else 0
    depth = max(0.0, (top - skin) * dy)

    long_axis, short_axis = feret_calipers(corners, dx, dy)
    return LesionFeatures(
        axis_ratio=axis_ratio,
        angle_deg=angle_deg,
        solidity=solidity,
        ellipse_iou=ellipse_iou,
        protrusion=protrusion,
        roughness=roughness,
        spikes=spikes,
        corner=corner,
        weak_margin=weak_margin,
        edge_gradient=edge_gradient,
        mean_in=mean_in,
        mean_around=mean_around,
        echo_ratio=echo_ratio,
        cv_in=cv_in,
        dark_share=dark_share,
        bright_share=bright_share,
        posterior_ratio=posterior_ratio,
        posterior_split=posterior_split,
        long_axis=long_axis,
        short_axis=short_axis,
        area=area,
        depth=depth,
    )


def shape_rule(f: LesionFeatures, t: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """Irregular when the outline is neither convex nor elliptical (solidity below
    ``irregular_solidity`` or overlap with the moment ellipse below ``irregular_ellipse_iou``);
    otherwise round when minor/major axis ratio >= ``round_axis_ratio``, else oval."""
    if f.solidity < t.irregular_solidity or f.ellipse_iou < t.irregular_ellipse_iou:
        return "irregular"
    return "round" if f.axis_ratio >= t.round_axis_ratio else "oval"


def orientation_rule(f: LesionFeatures, t: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """Parallel when the major axis (moments in mm, so non-square pixels count) lies within
    45 degrees of the image rows (the skin line): "wider than tall"; else not parallel."""
    return "parallel" if f.angle_deg < 45.0 else "not parallel"


def margin_rule(f: LesionFeatures, t: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """Circumscribed when the margin is sharp and smooth: mean gradient at the outline >=
    ``circumscribed_edge_gradient`` (per mm, image 0..1), solidity >=
    ``circumscribed_solidity`` and overlap with the moment ellipse >=
    ``circumscribed_ellipse_iou``; else not circumscribed."""
    if (
        f.edge_gradient >= t.circumscribed_edge_gradient
        and f.solidity >= t.circumscribed_solidity
        and f.ellipse_iou >= t.circumscribed_ellipse_iou
    ):
        return "circumscribed"
    return "not circumscribed"


def margin_detail_rule(f: LesionFeatures, t: Thresholds = DEFAULT_THRESHOLDS) -> tuple[str, ...]:
    """For a not circumscribed margin: indistinct when some sector's edge is weak
    (``weak_margin`` > 0); angular when the outline turns by >= ``angular_corner_deg`` at a
    convex corner; spiculated with >= ``spiculated_spikes`` narrow radial peaks;
    microlobulated when the high-passed outline radius varies by >= ``microlobulated_roughness``
    of the mean radius without spikes. Empty for a circumscribed margin."""
    if margin_rule(f, t) == "circumscribed":
        return ()
    return _margin_details(f, t)


def _margin_details(f: LesionFeatures, t: Thresholds) -> tuple[str, ...]:
    """The detail words of :func:`margin_rule`, for whatever decided "not circumscribed"."""
    details = []
    if f.weak_margin > 0:
        details.append("indistinct")
    if f.corner >= t.angular_corner_deg:
        details.append("angular")
    if f.spikes < t.spiculated_spikes and f.roughness >= t.microlobulated_roughness:
        details.append("microlobulated")
    if f.spikes >= t.spiculated_spikes:
        details.append("spiculated")
    return tuple(details)


def echo_pattern_rule(f: LesionFeatures, t: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """Against the tissue beside and above the lesion (ratio of means, inside eroded):
    complex cystic and solid when >= ``complex_share`` of the inside is near-anechoic
    (< 0.5 x tissue) and >= ``complex_share`` is near tissue level (> 0.8 x tissue);
    anechoic when >= ``anechoic_share`` of it is near-anechoic; heterogeneous when the inside's
    coefficient of variation >= ``heterogeneous_cv``; then hypoechoic below
    ``hypoechoic_ratio``, hyperechoic at or above ``hyperechoic_ratio``, else isoechoic."""
    if f.dark_share >= t.complex_share and f.bright_share >= t.complex_share:
        return "complex cystic and solid"
    if f.dark_share >= t.anechoic_share:
        return "anechoic"
    if f.cv_in >= t.heterogeneous_cv:
        return "heterogeneous"
    if f.echo_ratio < t.hypoechoic_ratio:
        return "hypoechoic"
    if f.echo_ratio >= t.hyperechoic_ratio:
        return "hyperechoic"
    return "isoechoic"


def posterior_rule(f: LesionFeatures, t: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """Mean below the lesion's central columns against the same depth beside it: combined
    when one half below is brighter and the other darker by a difference >= ``combined_split``;
    enhancement at a ratio >= ``enhancement_ratio``; shadowing at <= ``shadowing_ratio``;
    else none."""
    if f.posterior_split >= t.combined_split:
        return "combined"
    if f.posterior_ratio >= t.enhancement_ratio:
        return "enhancement"
    if f.posterior_ratio <= t.shadowing_ratio:
        return "shadowing"
    return "none"


def descriptors_from_features(
    f: LesionFeatures,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    calibrated: bool = True,
    heads: Mapping[str, LogisticHead] | None = None,
) -> LesionDescriptors:
    """Apply every rule, or a descriptor's head where `heads` has one (None: the shipped
    heads, :func:`shipped_heads`; ``{}``: rules only); sizes only when `calibrated`."""
    heads = shipped_heads() if heads is None else heads
    margin = heads["margin"].predict(f) if "margin" in heads else margin_rule(f, thresholds)
    return LesionDescriptors(
        shape=shape_rule(f, thresholds),
        orientation=orientation_rule(f, thresholds),
        margin=margin,
        margin_detail=_margin_details(f, thresholds) if margin == "not circumscribed" else (),
        echo_pattern=echo_pattern_rule(f, thresholds),
        posterior=posterior_rule(f, thresholds),
        long_axis_mm=f.long_axis if calibrated else None,
        short_axis_mm=f.short_axis if calibrated else None,
        area_mm2=f.area if calibrated else None,
        depth_mm=f.depth if calibrated else None,
    )


@dataclass(frozen=True)
class LogisticHead:
    """A fitted logistic regression over named :class:`LesionFeatures` (numpy only at run time).

    Fitted by ``inference/descriptor_eval.py`` (L2, C by inner CV); shipped for a descriptor
    only where it beat the rule on held-out folds (docs/experiments/descriptors.md).
    ``coef``/``intercept`` as scikit-learn gives them: one row for two classes (positive =
    ``classes[1]``), one row per class otherwise.
    """

    descriptor: str
    features: tuple[str, ...]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[tuple[float, ...], ...]
    intercept: tuple[float, ...]
    c: float

    def __post_init__(self) -> None:
        known = {f.name for f in fields(LesionFeatures)}
        n = len(self.features)
        if set(self.features) - known:
            raise ValueError(f"LogisticHead: unknown features {sorted(set(self.features) - known)}")
        rows = 1 if len(self.classes) == 2 else len(self.classes)
        if len(self.classes) < 2 or len(self.coef) != rows or len(self.intercept) != rows:
            raise ValueError("LogisticHead: coef/intercept rows do not match the classes")
        if len(self.mean) != n or len(self.scale) != n or any(len(r) != n for r in self.coef):
            raise ValueError("LogisticHead: mean/scale/coef lengths do not match the features")
        if any(not (math.isfinite(v) and v > 0) for v in self.scale):
            raise ValueError("LogisticHead: scale must be finite and > 0")

    def decision(self, f: LesionFeatures) -> np.ndarray:
        """Linear scores of `f` (one for two classes, one per class otherwise)."""
        x = np.array([getattr(f, n) for n in self.features], dtype=np.float64)
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return np.asarray(self.coef) @ z + np.asarray(self.intercept)

    def predict(self, f: LesionFeatures) -> str:
        """The class of `f`: positive class where the score > 0 (two classes), else argmax."""
        score = self.decision(f)
        if len(self.classes) == 2:
            return self.classes[1] if float(score[0]) > 0 else self.classes[0]
        return self.classes[int(np.argmax(score))]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (lists), the layout of ``inference/weights/*_head.json``."""
        return {k: (list(map(list, v)) if k == "coef" else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogisticHead:
        """From :meth:`as_dict`'s layout (lists become tuples; bad shapes raise)."""

        def floats(values: Sequence[Any]) -> tuple[float, ...]:
            return tuple(float(v) for v in values)

        return cls(
            descriptor=str(data["descriptor"]),
            features=tuple(str(v) for v in data["features"]),
            classes=tuple(str(v) for v in data["classes"]),
            mean=floats(data["mean"]),
            scale=floats(data["scale"]),
            coef=tuple(floats(row) for row in data["coef"]),
            intercept=floats(data["intercept"]),
            c=float(data["c"]),
        )

    @classmethod
    def load(cls, path: Path) -> LogisticHead:
        """Read a head saved as JSON."""
        return cls.from_dict(json.loads(Path(path).read_text()))


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: Descriptors decided by a shipped head, and its file in :data:`WEIGHTS_DIR`.
SHIPPED_HEAD_FILES = {"margin": "margin_head.json"}


@cache
def shipped_heads() -> Mapping[str, LogisticHead]:
    """The heads that replace a rule (read once): descriptor name -> head."""
    heads = {
        name: LogisticHead.load(WEIGHTS_DIR / file) for name, file in SHIPPED_HEAD_FILES.items()
    }
    for name, head in heads.items():
        if head.descriptor != name or set(head.classes) != set(MARGINS):
            raise ValueError(f"{SHIPPED_HEAD_FILES[name]}: not a {name} head over {MARGINS}")
    return heads


def describe_lesion(
    image: np.ndarray,
    mask: np.ndarray,
    mm_per_pixel_x: float | None = None,
    mm_per_pixel_y: float | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    heads: Mapping[str, LogisticHead] | None = None,
) -> LesionDescriptors:
    """BI-RADS descriptors of the lesion in `mask` on `image` (see :func:`lesion_features`;
    margin by the shipped head unless `heads` says otherwise, see
    :func:`descriptors_from_features`).

    An empty or tiny mask gives all-None descriptors with a message rather than an error
    (a frame without a lesion is normal input); shapes that differ raise ``ValueError``.
    Sizes are None unless both spacings are given.
    """
    img = np.asarray(image)
    m = np.asarray(mask)
    if img.shape != m.shape:
        raise ValueError(f"mask shape {m.shape} differs from image shape {img.shape}")
    if np.count_nonzero(m) < MIN_LESION_PIXELS:
        return LesionDescriptors(
            message=f"no lesion to describe: mask has fewer than {MIN_LESION_PIXELS} pixels"
        )
    calibrated = mm_per_pixel_x is not None and mm_per_pixel_y is not None
    features = lesion_features(img, m, mm_per_pixel_x, mm_per_pixel_y)
    return descriptors_from_features(features, thresholds, calibrated, heads)
