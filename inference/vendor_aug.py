"""Training augmentation that imitates what changes between ultrasound vendors and sites.

Every training image here came from four sources, three of them GE; a hospital's scanner is
usually none of them. What differs between scanners is mostly appearance, not anatomy: the
grey-level map (dynamic range, gamma), time-gain compensation (brightness with depth), speckle
size and strength, smoothing or edge enhancement, resolution, and what the sonographer burns in
(calipers, dotted lines, text). :func:`vendor_appearance` draws a few of those per image. The
mask never changes: a caliper cross on a lesion is still the lesion.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _tone(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma 0.5-2 (log-uniform), or a random monotone curve through 3 inner knots."""
    if rng.random() < 0.5:
        return img ** float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    knots_x = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    inner = np.sort(np.clip(knots_x[1:-1] + rng.normal(0.0, 0.08, 3), 0.02, 0.98))
    knots_y = np.concatenate([[0.0], inner, [1.0]])
    return np.interp(img, knots_x, knots_y)


def _depth_gain(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness that grows or falls with depth (rows), as another TGC setting gives."""
    rows = img.shape[0]
    slope = rng.uniform(-0.8, 0.8)
    ramp = np.exp(slope * (np.arange(rows, dtype=np.float32) / max(rows - 1, 1) - 0.5))
    return img * ramp[:, None]


def _speckle(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative Rayleigh speckle of random grain size and strength."""
    noise = rng.rayleigh(1.0, img.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, rng.uniform(0.4, 1.2))
    noise /= max(float(noise.mean()), 1e-6)
    strength = rng.uniform(0.1, 0.45)
    return img * (1.0 - strength + strength * noise)


def _blur_or_sharpen(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (sigma 0.5-1.5 px) or unsharp masking (amount 0.5-1.5)."""
    sigma = rng.uniform(0.5, 1.5)
    smooth = ndimage.gaussian_filter(img, sigma)
    if rng.random() < 0.5:
        return smooth
    return img + rng.uniform(0.5, 1.5) * (img - smooth)


def _resample(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Down-sample by 0.35-0.75 and back: a coarser scanner, or a re-scaled export."""
    factor = rng.uniform(0.35, 0.75)
    small = ndimage.zoom(img, factor, order=1)
    back = ndimage.zoom(small, (img.shape[0] / small.shape[0], img.shape[1] / small.shape[1]),
                        order=1)
    return back[: img.shape[0], : img.shape[1]]


def _marks(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Burn in 1-4 caliper crosses (half of them on the lesion's edge), a dotted line between
    two of them, and a block of text-like dots in a corner."""
    out = img.copy()
    rows, cols = img.shape
    ys, xs = np.nonzero(mask)
    arm = max(2, rows // 60)
    points = []
    for _ in range(int(rng.integers(1, 5))):
        if len(ys) and rng.random() < 0.5:
            k = int(rng.integers(len(ys)))
            y, x = int(ys[k]), int(xs[k])
        else:
            y, x = int(rng.integers(arm, rows - arm)), int(rng.integers(arm, cols - arm))
        points.append((y, x))
        value = rng.uniform(0.85, 1.0)
        out[max(0, y - arm): y + arm + 1, x] = value
        out[y, max(0, x - arm): x + arm + 1] = value
    if len(points) >= 2:
        (y0, x0), (y1, x1) = points[0], points[1]
        steps = max(abs(y1 - y0), abs(x1 - x0)) // 3
        for t in np.linspace(0.0, 1.0, max(steps, 2)):
            out[int(round(y0 + t * (y1 - y0))), int(round(x0 + t * (x1 - x0)))] = 0.95
    if rng.random() < 0.5:
        h, w = max(3, rows // 20), max(8, cols // 5)
        y = int(rng.choice([1, rows - h - 1]))
        x = int(rng.choice([1, cols - w - 1]))
        dots = rng.random((h, w)) < 0.35
        patch = out[y: y + h, x: x + w]
        patch[dots[: patch.shape[0], : patch.shape[1]]] = 0.9
    return out


def vendor_appearance(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
                      ) -> np.ndarray:
    """One (S, S) uint8 image with 1-4 of the changes above, each drawn with its own chance
    (tone 0.6, depth gain 0.4, speckle 0.4, blur/sharpen 0.4, resample 0.3, marks 0.25); at
    least one is applied. Returns uint8 of the same shape; ``mask`` is only read (calipers are
    put on the lesion's pixels half the time)."""
    img = image.astype(np.float32) / 255.0
    ops = [(0.6, _tone), (0.4, _depth_gain), (0.4, _speckle), (0.4, _blur_or_sharpen),
           (0.3, _resample)]
    chosen = [fn for p, fn in ops if rng.random() < p]
    marks = rng.random() < 0.25
    if not chosen and not marks:
        chosen = [ops[int(rng.integers(len(ops)))][1]]
    for fn in chosen:
        img = np.clip(fn(img, rng), 0.0, 1.0)
    if marks:
        img = _marks(img, mask > 0, rng)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def vendor_batch(images: np.ndarray, masks: np.ndarray, prob: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Apply :func:`vendor_appearance` to each image of a batch with chance ``prob``; returns
    the new batch (a copy when any changed) and how many changed."""
    hits = rng.random(len(images)) < prob
    if not hits.any():
        return images, 0
    out = images.copy()
    for i in np.nonzero(hits)[0]:
        out[i] = vendor_appearance(images[i], masks[i], rng)
    return out, int(hits.sum())
