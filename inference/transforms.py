"""Pre-processing shared by training and serving, and the training augmentations.

Training and the service must see images prepared the same way, so both call
:func:`resize_image` and :func:`normalise` from here; a change here changes both.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W) float image to (size, size), bilinear with antialiasing.

    The aspect ratio is not kept: the network sees the whole B-mode crop, and the mask is
    resized back to the crop's own grid, so no padding offsets need tracking.
    """
    if image.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {image.shape}")
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if t.shape[-2:] == (size, size):
        return t[0, 0].numpy().copy()
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].clamp_(0.0, 1.0).numpy()


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W) bool mask to (size, size) bool through an area-weighted average > 0.5."""
    return resize_image(mask.astype(np.float32), size) > 0.5


def resize_probability(prob: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Resize a (B, 1, S, S) probability map to ``shape`` bilinearly, before thresholding.

    Thresholding after the resize gives smooth lesion borders on the input grid.
    """
    return F.interpolate(prob, size=shape, mode="bilinear", align_corners=False)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Standardise each image to zero mean, unit variance (B, 1, S, S) -> same shape.

    Per-image standardisation removes most of the gain/brightness difference between scanners.
    """
    mean = images.mean(dim=(-2, -1), keepdim=True)
    std = images.std(dim=(-2, -1), keepdim=True)
    return (images - mean) / (std + 1e-6)


def network_input(images: np.ndarray) -> torch.Tensor:
    """(N, S, S) uint8 images of the array cache -> normalised (N, 1, S, S) float32 batch."""
    return normalise(torch.from_numpy(images).float().div_(255.0)[:, None])


def train_augmentation(
    image_size: int, soft_keys: tuple[str, ...] = (), elastic_prob: float = 0.0
) -> Compose:
    """Cheap ultrasound-plausible augmentations on ``{"image", "mask"}``, each (1, S, S).

    ``soft_keys`` name further (1, S, S) maps (a teacher's lesion probabilities) that must move
    with the mask: they get the same flips, affine and elastic warp, interpolated bilinearly.

    Left-right flips only (the skin line stays at the top), small rotations/scales/shifts,
    with probability ``elastic_prob`` a smooth elastic warp (tissue compressed unevenly under
    the probe; control points every 1/6 of the image; displacements measured at 192 px: median
    2-3 px, 95th percentile 5-6 px, i.e. up to about 3 % of the image),
    gain and contrast changes, speckle-like noise and mild blur; all 2-D and CPU-cheap.
    ``elastic_prob=0`` is the augmentation the bundled networks up to 2026-12-02 trained with.
    """
    if not 0.0 <= elastic_prob <= 1.0:
        raise ValueError(f"elastic_prob must be in [0, 1], got {elastic_prob}")
    shift = 0.06 * image_size
    spatial = ("image", "mask", *soft_keys)
    modes = ("bilinear", "nearest", *("bilinear",) * len(soft_keys))
    elastic = (
        [Rand2DElasticd(
            keys=spatial,
            spacing=(image_size / 6, image_size / 6),
            magnitude_range=(0.005 * image_size, 0.015 * image_size),
            prob=elastic_prob,
            mode=modes,
            padding_mode="zeros",
        )] if elastic_prob > 0 else []
    )
    return Compose(
        [
            RandFlipd(keys=spatial, prob=0.5, spatial_axis=1),
            RandAffined(
                keys=spatial,
                prob=0.6,
                rotate_range=(0.2,),
                scale_range=(0.15, 0.15),
                translate_range=(shift, shift),
                mode=modes,
                padding_mode="zeros",
            ),
            *elastic,
            RandScaleIntensityd(keys="image", factors=0.2, prob=0.4),
            RandShiftIntensityd(keys="image", offsets=0.08, prob=0.3),
            RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.4),
            RandGaussianSmoothd(keys="image", sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0), prob=0.15),
            RandGaussianNoised(keys="image", std=0.03, prob=0.3),
        ]
    )
