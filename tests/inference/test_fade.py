"""Lesion fading: a lesion moves towards its surrounding tissue, its mask and label stay."""

from __future__ import annotations

import numpy as np
import pytest

from inference.transforms import fade_lesion, fade_lesions
from tests.inference.test_paste import S
from tests.inference.test_paste import _scan as paste_scan


def _scan(centre: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """The copy-paste tests' speckle-free scan, with a lesion of radius 12."""
    return paste_scan(centre, radius=12)


def test_fade_lesion_moves_the_lesion_by_the_strength_share_of_its_contrast() -> None:
    image, mask = _scan((48, 48))
    faded = fade_lesion(image, mask, 0.5)
    assert faded is not None and faded.dtype == np.uint8
    # the lesion's core (away from the feathered edge) goes from 40 halfway to the tissue's 120
    yy, xx = np.mgrid[:S, :S]
    core = (yy - 48) ** 2 + (xx - 48) ** 2 <= 8**2
    assert (faded[core] == 80).all()
    far = ~((np.abs(yy - 48) <= 16) & (np.abs(xx - 48) <= 16))
    assert (faded[far] == image[far]).all()  # nothing changes away from the lesion
    assert (fade_lesion(image, mask, 0.0) == image).all()
    full = fade_lesion(image, mask, 1.0)
    assert full is not None and (full[core] == 120).all()


def test_fade_lesion_refuses_no_lesion_no_tissue_and_bad_strength() -> None:
    image, mask = _scan(None)
    assert fade_lesion(image, mask, 0.5) is None
    black = np.zeros((S, S), dtype=np.uint8)  # no tissue around the lesion to fade towards
    _, lesion_mask = _scan((48, 48))
    assert fade_lesion(black, lesion_mask, 0.5) is None
    with pytest.raises(ValueError, match="strength"):
        fade_lesion(*_scan((48, 48)), 1.5)


def test_fade_lesions_leaves_normals_and_masks_alone() -> None:
    scans = [_scan((30, 30)), _scan(None), _scan((60, 50))]
    images = np.stack([s[0] for s in scans])
    masks = np.stack([s[1] for s in scans])
    labels = np.array([1, 0, 2])
    out, faded = fade_lesions(images, masks, labels, 1.0, np.random.default_rng(0))
    assert faded == 2
    assert (out[1] == images[1]).all()
    for i in (0, 2):
        inside = masks[i] > 0
        assert out[i][inside].mean() > images[i][inside].mean() + 20  # nearer the tissue
    assert (images[0] == scans[0][0]).all()  # the input is not modified in place
    same, none = fade_lesions(images, masks, labels, 0.0, np.random.default_rng(0))
    assert none == 0 and (same == images).all()
    with pytest.raises(ValueError, match="fade prob"):
        fade_lesions(images, masks, labels, -0.1, np.random.default_rng(0))
