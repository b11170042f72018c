"""Mask <-> polygon round trip and the checks on client-sent outlines."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_io.polygons import (
    Polygon,
    PolygonError,
    mask_to_polygons,
    parse_polygons,
    polygons_to_mask,
)


def _ellipse(shape: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).astype(np.uint8)


def test_round_trip_keeps_two_lesions_within_a_pixel() -> None:
    shape = (120, 160)
    mask = _ellipse(shape, 40, 50, 25, 15) | _ellipse(shape, 120, 80, 12, 20)
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 2
    assert all(3 <= len(p.vertices) < 80 for p in polygons)
    back = polygons_to_mask(polygons, shape)
    dice = 2 * (back & mask).sum() / (back.sum() + mask.sum())
    assert dice > 0.97
    # largest first
    areas = [polygons_to_mask([p], shape).sum() for p in polygons]
    assert areas[0] > areas[1]


def test_holes_are_filled_and_specks_dropped() -> None:
    mask = _ellipse((100, 100), 50, 50, 30, 30)
    mask[45:55, 45:55] = 0
    mask[2, 2] = 1
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 1
    assert polygons_to_mask(polygons, (100, 100))[50, 50] == 1


def test_square_rasterises_to_its_pixel_centres() -> None:
    square = Polygon(((10.0, 10.0), (19.0, 10.0), (19.0, 19.0), (10.0, 19.0)))
    mask = polygons_to_mask([square], (30, 30))
    assert mask.sum() == 100
    assert mask[10, 10] == 1 and mask[19, 19] == 1 and mask[20, 20] == 0


def test_empty_mask_gives_no_polygon() -> None:
    assert mask_to_polygons(np.zeros((10, 10), np.uint8)) == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("abc", "list of polygons"),
        ([[[0, 0], [1, 1]]], "3 to"),
        ([[[0, 0], [5, 0], ["a", 3]]], "numbers"),
        ([[[0, 0], [5, 0], [float("nan"), 3]]], "finite"),
        ([[[0, 0], [500, 0], [3, 3]]], "outside"),
        ([[[0, 0], [5, 5], [10, 10]]], "no area"),
        ([[[0, 0], [5, 0], [5]]], "[x, y]"),
        ([[[0, 0], [5, 0], [0, 5]]] * 33, "at most 32"),
    ],
)
def test_bad_outlines_are_refused_with_the_reason(raw: object, message: str) -> None:
    with pytest.raises(PolygonError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_polygons(raw, (50, 50))


def test_good_outline_parses() -> None:
    polygons = parse_polygons([[[1, 1], [20, 1], [20, 30]]], (50, 50))
    assert polygons[0].vertices[1] == (20.0, 1.0)
