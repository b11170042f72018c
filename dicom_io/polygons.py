"""Lesion outlines as polygons: the radiologist edits vertices, the SEG stores pixels.

Coordinates are **pixel-centre** coordinates of the source frame, ``(x, y)`` = (column, row):
the centre of the top-left pixel is ``(0, 0)``. A pixel belongs to a lesion when its centre lies
inside the polygon (:func:`polygons_to_mask`), so ``polygons_to_mask(mask_to_polygons(m))``
gives back ``m`` up to the simplification tolerance. A browser canvas that draws pixel
``(c, r)`` over ``[c, c + 1) x [r, r + 1)`` shows vertex ``(x, y)`` at ``(x + 0.5, y + 0.5)``.

Holes are not kept: a breast lesion outline is one closed curve, and the SEG of a corrected
lesion is its filled outline.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.draw import polygon as draw_polygon
from skimage.measure import approximate_polygon, find_contours

MAX_LESIONS = 32
MAX_VERTICES = 4000


class PolygonError(ValueError):
    """A polygon sent by a client that cannot be a lesion outline on this frame."""


@dataclass(frozen=True)
class Polygon:
    """One lesion outline: vertices in order, not repeated at the end."""

    vertices: tuple[tuple[float, float], ...]

    def to_json(self) -> list[list[float]]:
        return [[round(x, 2), round(y, 2)] for x, y in self.vertices]


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.75,
                     min_area_pixels: int = 4) -> list[Polygon]:
    """One polygon per connected lesion (8-connected), holes filled, largest first.

    ``tolerance`` (pixels) is the Douglas-Peucker simplification: 0.75 keeps the outline within
    one pixel of the mask's edge while turning a 300-pixel boundary into a few dozen vertices
    a radiologist can drag. Components under ``min_area_pixels`` are dropped (speckle).
    """
    binary = np.asarray(mask) > 0
    if binary.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {binary.shape}")
    labels, count = ndimage.label(binary, structure=np.ones((3, 3), dtype=bool))
    found: list[tuple[int, Polygon]] = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        component = ndimage.binary_fill_holes(labels[window] == index)
        area = int(component.sum())
        if area < min_area_pixels:
            continue
        padded = np.pad(component.astype(np.float32), 1)
        contours = find_contours(padded, 0.5)
        if not contours:
            continue
        outline = max(contours, key=len)
        outline = approximate_polygon(outline, tolerance=tolerance)
        if len(outline) > 1 and np.allclose(outline[0], outline[-1]):
            outline = outline[:-1]
        if len(outline) < 3:
            continue
        row0, col0 = window[0].start - 1, window[1].start - 1  # undo the pad, place the window
        vertices = tuple((float(c + col0), float(r + row0)) for r, c in outline)
        found.append((area, Polygon(vertices)))
    found.sort(key=lambda item: -item[0])
    return [polygon for _, polygon in found]


def polygons_to_mask(polygons: Iterable[Polygon], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise outlines to a uint8 0/1 mask of ``shape`` (rows, columns); overlaps unite."""
    rows, columns = shape
    mask = np.zeros((rows, columns), dtype=np.uint8)
    for polygon in polygons:
        xs = np.array([x for x, _ in polygon.vertices], dtype=np.float64)
        ys = np.array([y for _, y in polygon.vertices], dtype=np.float64)
        rr, cc = draw_polygon(ys, xs, shape=(rows, columns))
        mask[rr, cc] = 1
    return mask


def parse_polygons(raw: object, shape: tuple[int, int], *, max_lesions: int = MAX_LESIONS,
                   max_vertices: int = MAX_VERTICES) -> list[Polygon]:
    """Check client-sent outlines (``[[[x, y], ...], ...]``) against the frame they are for.

    Raises :class:`PolygonError` naming what is wrong: not a list, too many lesions, a lesion
    with fewer than 3 or more than ``max_vertices`` vertices, a coordinate that is not a finite
    number, a vertex outside the frame (half a pixel of slack at the edges), or an outline with
    no area (all vertices on one line).
    """
    rows, columns = shape
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise PolygonError("lesions must be a list of polygons")
    if len(raw) > max_lesions:
        raise PolygonError(f"at most {max_lesions} lesions per frame, got {len(raw)}")
    polygons: list[Polygon] = []
    for number, outline in enumerate(raw, start=1):
        if not isinstance(outline, Sequence) or isinstance(outline, (str, bytes)):
            raise PolygonError(f"lesion {number}: a polygon is a list of [x, y] vertices")
        if not 3 <= len(outline) <= max_vertices:
            raise PolygonError(
                f"lesion {number}: needs 3 to {max_vertices} vertices, got {len(outline)}")
        vertices: list[tuple[float, float]] = []
        for vertex in outline:
            if (not isinstance(vertex, Sequence) or isinstance(vertex, (str, bytes))
                    or len(vertex) != 2):
                raise PolygonError(f"lesion {number}: each vertex is [x, y]")
            try:
                x, y = float(vertex[0]), float(vertex[1])
            except (TypeError, ValueError):
                raise PolygonError(f"lesion {number}: vertex coordinates must be numbers") from None
            if not (np.isfinite(x) and np.isfinite(y)):
                raise PolygonError(f"lesion {number}: vertex coordinates must be finite")
            if not (-0.5 <= x <= columns - 0.5 and -0.5 <= y <= rows - 0.5):
                raise PolygonError(
                    f"lesion {number}: vertex ({x:.1f}, {y:.1f}) lies outside the "
                    f"{columns}x{rows} frame")
            vertices.append((x, y))
        xs, ys = np.array([v[0] for v in vertices]), np.array([v[1] for v in vertices])
        area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
        if area < 1.0:
            raise PolygonError(f"lesion {number}: the outline encloses no area")
        polygons.append(Polygon(tuple(vertices)))
    return polygons
