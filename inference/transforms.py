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


def _feathered_alpha(lesion: np.ndarray) -> np.ndarray:
    """A 0..1 blending weight over a boolean lesion: 1 inside, falling off over about 2 px
    outside (dilated by 1 px, Gaussian-blurred with sigma 1, rescaled to a peak of 1), so an
    edit to the lesion leaves no hard seam in the speckle."""
    from scipy import ndimage

    alpha = ndimage.gaussian_filter(
        ndimage.binary_dilation(lesion, iterations=1).astype(np.float32), sigma=1.0)
    return np.clip(alpha / max(float(alpha.max()), 1e-6), 0.0, 1.0)


def paste_lesion(
    host_image: np.ndarray, host_mask: np.ndarray, donor_image: np.ndarray,
    donor_mask: np.ndarray, rng: np.random.Generator, tries: int = 10,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Copy the donor's lesion (with a thin rim of its tissue) into the host image.

    Why: the segmenter fits its training lesions almost perfectly yet misses some held-out
    ones outright; pasting lesions at new places over other tissue (copy-paste augmentation,
    Ghiasi et al. 2021) gives it lesions in contexts it has not memorised. Both arrays are
    (S, S) uint8 at the training size. The donor patch is the lesion's bounding box plus a
    margin, blended through a feathered alpha (the lesion dilated by 1 px, blurred) and
    shifted in brightness so its rim matches the host tissue under it. It is placed at a
    random spot where it lies inside the ultrasound content (>= 90 % non-black pixels) and does
    not touch the host's own lesion (dilated by 4 px). Returns the new (image, mask: union of
    both lesions), or None when the donor has no lesion or no spot was found in ``tries``.
    """
    from scipy import ndimage

    if not donor_mask.any():
        return None
    ys, xs = np.nonzero(donor_mask)
    size = host_image.shape
    margin = max(3, int(0.15 * max(np.ptp(ys) + 1, np.ptp(xs) + 1)))
    y0, y1 = max(0, ys.min() - margin), min(size[0], ys.max() + margin + 1)
    x0, x1 = max(0, xs.min() - margin), min(size[1], xs.max() + margin + 1)
    h, w = y1 - y0, x1 - x0
    if h >= size[0] or w >= size[1]:
        return None
    lesion = donor_mask[y0:y1, x0:x1] > 0
    alpha = _feathered_alpha(lesion)
    rim = alpha < 0.05
    patch = donor_image[y0:y1, x0:x1].astype(np.float32)
    forbidden = ndimage.binary_dilation(host_mask > 0, iterations=4)
    for _ in range(tries):
        ty = int(rng.integers(0, size[0] - h + 1))
        tx = int(rng.integers(0, size[1] - w + 1))
        region = host_image[ty : ty + h, tx : tx + w].astype(np.float32)
        if (region > 5).mean() < 0.9 or (forbidden[ty : ty + h, tx : tx + w] & lesion).any():
            continue
        shift = (float(region[rim].mean() - patch[rim].mean()) if rim.any() else 0.0)
        blended = alpha * np.clip(patch + shift, 0, 255) + (1 - alpha) * region
        image = host_image.copy()
        mask = host_mask.copy()
        image[ty : ty + h, tx : tx + w] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        mask[ty : ty + h, tx : tx + w] |= lesion.astype(mask.dtype)
        return image, mask
    return None


def paste_lesions(
    pool: dict[str, np.ndarray], index: np.ndarray, prob: float, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The batch ``pool[...][index]`` with, for each lesion image and probability ``prob``, one
    lesion of another image of the same class and dataset pasted in (:func:`paste_lesion`).

    ``pool`` is the training arrays (``images``, ``masks``, ``labels``, ``is_busi``). Normal
    images are left alone, so every image's class label stays true and the normals the
    network learns from stay normal. Returns (images, masks) copies, (B, S, S) uint8, and
    how many lesions were pasted.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"paste prob must be in [0, 1], got {prob}")
    images, masks = pool["images"][index].copy(), pool["masks"][index].copy()
    pasted = 0
    if prob == 0.0:
        return images, masks, 0
    for i, host in enumerate(index):
        label = pool["labels"][host]
        if label == 0 or rng.random() >= prob:
            continue
        same = np.flatnonzero(
            (pool["labels"] == label) & (pool["is_busi"] == pool["is_busi"][host]))
        same = same[same != host]
        if same.size == 0:
            continue
        d = int(rng.choice(same))
        out = paste_lesion(images[i], masks[i], pool["images"][d], pool["masks"][d], rng)
        if out is not None:
            images[i], masks[i] = out
            pasted += 1
    return images, masks, pasted


def paste_into_normals(
    pool: dict[str, np.ndarray], index: np.ndarray, images: np.ndarray, masks: np.ndarray,
    prob: float, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The batch with, for each normal image and probability ``prob``, the lesion of a random
    lesion image of the same dataset pasted in (:func:`paste_lesion`), and its label changed
    to the donor's class.

    Why: :func:`paste_lesions` puts lesions only into images that already hold one, so the
    segmenter never sees a lesion on the tissue of a normal breast, where it must find the
    small held-out lesions it misses. A normal image with a benign lesion pasted in is a
    benign image, so its label becomes the donor's and every label stays true. ``images`` and
    ``masks`` are the batch ``pool[...][index]`` as it stands (after any other paste).
    Returns copies of (images, masks), the batch's labels (int64) and how many normals were
    pasted into.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"paste-normal prob must be in [0, 1], got {prob}")
    images, masks = images.copy(), masks.copy()
    labels = pool["labels"][index].astype(np.int64)
    pasted = 0
    if prob == 0.0:
        return images, masks, labels, 0
    for i, host in enumerate(index):
        if labels[i] != 0 or rng.random() >= prob:
            continue
        donors = np.flatnonzero((pool["labels"] > 0) & (pool["is_busi"] == pool["is_busi"][host]))
        if donors.size == 0:
            continue
        d = int(rng.choice(donors))
        out = paste_lesion(images[i], masks[i], pool["images"][d], pool["masks"][d], rng)
        if out is not None:
            images[i], masks[i] = out
            labels[i] = int(pool["labels"][d])
            pasted += 1
    return images, masks, labels, pasted


def fade_lesion(
    image: np.ndarray, mask: np.ndarray, strength: float,
) -> np.ndarray | None:
    """The image with its lesion's mean brightness moved ``strength`` of the way to the
    tissue around it; texture, border and what lies behind the lesion are kept.

    Why: the segmenter marks almost every training lesion (1 of 420 BUSI training lesion
    images unmarked against 9 of 97 held-out ones, docs/experiments), and the held-out lesions
    it misses are mostly small and near-isoechoic. A lesion made nearer isoechoic than it was,
    still labelled, is a training lesion it cannot find by its darkness alone. ``image`` and
    ``mask`` are (S, S) uint8 at the training size; the surrounding tissue is the ring
    2-6 px outside the lesion, content pixels only (> 5, not the black margin). The shift is
    blended through the same feathered alpha as a paste (:func:`_feathered_alpha`). Returns
    the new image, or None when there is no lesion or no tissue around it.
    """
    from scipy import ndimage

    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"fade strength must be in [0, 1], got {strength}")
    lesion = mask > 0
    if not lesion.any():
        return None
    near = ndimage.binary_dilation(lesion, iterations=2)
    ring = ndimage.binary_dilation(lesion, iterations=6) & ~near & (image > 5)
    if ring.sum() < 8:
        return None
    img = image.astype(np.float32)
    shift = strength * float(img[ring].mean() - img[lesion].mean())
    alpha = _feathered_alpha(lesion)
    return np.clip(np.rint(img + alpha * shift), 0, 255).astype(np.uint8)


def fade_lesions(
    images: np.ndarray, masks: np.ndarray, labels: np.ndarray, prob: float,
    rng: np.random.Generator, strength: tuple[float, float] = (0.3, 0.7),
) -> tuple[np.ndarray, int]:
    """``images`` (B, S, S) uint8 with, for each lesion image and probability ``prob``, its
    lesion faded towards the tissue around it (:func:`fade_lesion`) by a strength drawn
    uniformly from ``strength``. Masks and labels are unchanged (the lesion is still there);
    normal images are left alone. Returns a copy of the images and how many were faded.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"fade prob must be in [0, 1], got {prob}")
    out = images.copy()
    faded = 0
    if prob == 0.0:
        return out, 0
    for i in range(len(out)):
        if labels[i] == 0 or rng.random() >= prob:
            continue
        new = fade_lesion(out[i], masks[i], float(rng.uniform(*strength)))
        if new is not None:
            out[i] = new
            faded += 1
    return out, faded
