"""PNG previews for the dashboard: the image with its mask outline, and the Grad-CAM map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from storage.files import write_atomic


def _to_rgb(image: np.ndarray) -> np.ndarray:
    gray = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    return np.stack([gray] * 3, axis=-1)


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W) 0..1 image and (H, W) bool mask → (H, W, 3) uint8, lesion tinted, outline yellow."""
    rgb = _to_rgb(image).astype(np.float32)
    if mask.any():
        tint = np.array([255.0, 60.0, 60.0])
        rgb[mask] = 0.65 * rgb[mask] + 0.35 * tint
        edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, mask.shape[0] // 256))
        rgb[edge] = [255.0, 220.0, 0.0]
    return rgb.astype(np.uint8)


def cam_overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Grad-CAM (H, W) 0..1 blended over the image as a blue→red heat map."""
    rgb = _to_rgb(image).astype(np.float32)
    c = np.clip(cam, 0.0, 1.0)[..., None]
    heat = np.concatenate([c, 1.0 - np.abs(2.0 * c - 1.0), 1.0 - c], axis=-1) * 255.0
    return (0.55 * rgb + 0.45 * heat).astype(np.uint8)


def save_png(path: Path, rgb: np.ndarray, max_side: int = 1024) -> None:
    """Write `rgb` as PNG (atomically), scaled down so the dashboard stays light."""
    image = Image.fromarray(rgb)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_atomic(path, buf.getvalue())
