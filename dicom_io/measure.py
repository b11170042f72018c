"""Size of a lesion mask: area, long axis (max Feret diameter) and short axis."""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, QhullError

__all__ = ["feret_calipers", "mask_measurements"]


def mask_measurements(
    mask: np.ndarray, mm_per_pixel_x: float, mm_per_pixel_y: float
) -> tuple[float, float, float]:
    """Measure a 2D mask in physical units.

    Each pixel is a ``mm_per_pixel_x × mm_per_pixel_y`` rectangle; the outline is the
    convex hull of the corners of the mask's pixels, as a radiologist's calipers would
    touch the outer edges.

    Parameters
    ----------
    mask: numpy.ndarray
        ``(H, W) bool`` mask (any connected components; all are measured together).
    mm_per_pixel_x, mm_per_pixel_y: float
        Pixel width and height in mm (pass 1.0, 1.0 to get pixel units).

    Returns
    -------
    tuple[float, float, float]
        ``(area_mm2, long_axis_mm, short_axis_mm)``: area = pixel count × pixel area;
        long axis = maximum Feret diameter; short axis = extent of the mask perpendicular
        to the long axis (caliper width along the perpendicular direction).

    Raises
    ------
    ValueError
        Mask not 2D, empty, or pixel sizes not positive.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if not (mm_per_pixel_x > 0 and mm_per_pixel_y > 0):
        raise ValueError("mm_per_pixel_x and mm_per_pixel_y must be positive")
    mask = mask.astype(bool, copy=False)
    count = int(mask.sum())
    if count == 0:
        raise ValueError("mask is empty")
    area = count * float(mm_per_pixel_x) * float(mm_per_pixel_y)

    # Only the mask's bounding box is read (a lesion is a small part of a frame), and only its
    # boundary pixels can contribute hull corners; coordinates stay the frame's.
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    y0, x0 = int(ys[0]), int(xs[0])
    mask = mask[y0 : int(ys[-1]) + 1, x0 : int(xs[-1]) + 1]
    padded = np.pad(mask, 1)
    interior = (
        padded[1:-1, 1:-1]
        & padded[:-2, 1:-1]
        & padded[2:, 1:-1]
        & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )
    rows, cols = np.nonzero(mask & ~interior)
    rows, cols = rows + y0, cols + x0
    # Unique corners in (x, y) lexicographic order, as np.unique(axis=0) gives them, through
    # one integer key per corner (several times faster than a row-wise unique).
    span = int(rows.max()) + 2
    keys = np.unique(
        np.concatenate([(cols + dx) * span + (rows + dy) for dx in (0, 1) for dy in (0, 1)])
    )
    corners = np.stack([keys // span, keys % span], axis=1)
    long_axis, short_axis = feret_calipers(corners, mm_per_pixel_x, mm_per_pixel_y)
    return float(area), long_axis, short_axis


def feret_calipers(corners: np.ndarray, mm_per_pixel_x: float, mm_per_pixel_y: float
                   ) -> tuple[float, float]:
    """(long axis, short axis) in mm of the convex hull of pixel `corners` ((x, y) in pixels,
    each once): the maximum Feret diameter, and the extent perpendicular to it.

    Shared by :func:`mask_measurements` and the BI-RADS descriptors. Ties between equally
    long diameters go to the first pair in `corners`' order, so callers pass the corners in
    the same (x, then y) order to get the same short axis.
    """
    points = corners.astype(np.float64) * np.array([mm_per_pixel_x, mm_per_pixel_y],
                                                   dtype=np.float64)
    try:
        hull = points[ConvexHull(points).vertices]
    except QhullError:  # pragma: no cover - corners of ≥ 1 pixel are never collinear
        hull = points
    differences = hull[:, None, :] - hull[None, :, :]
    distances = np.sqrt((differences**2).sum(axis=-1))
    i, j = np.unravel_index(int(np.argmax(distances)), distances.shape)
    long_axis = float(distances[i, j])
    direction = (hull[j] - hull[i]) / long_axis
    projection = hull @ np.array([-direction[1], direction[0]])
    return long_axis, float(projection.max() - projection.min())
