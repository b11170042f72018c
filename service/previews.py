"""PNG previews for the dashboard: the image with its mask outline, and the Grad-CAM map.

Made on demand, when a page asks for one, from what is stored: the source instance (its
frame, decoded again) and the job's SEG (the mask, one frame unpacked); the Grad-CAM runs the
model on that frame's crop boxes. The PNG is then cached beside the job's outputs
(`outputs/<job>/preview/<name>`). The pipeline computes none of this for every image: on a
100-image study it cost more than the model itself.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from scipy import ndimage

from dicom_io.read import iter_frames, read_info
from dicom_io.regions import analysis_boxes
from dicom_io.seg import seg_frame_mask
from storage.files import PRIVATE_FILE_MODE, make_private_dirs


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


def png_bytes(rgb: np.ndarray, max_side: int = 1024) -> bytes:
    """`rgb` as PNG, scaled down so the dashboard stays light."""
    image = Image.fromarray(rgb)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: Path, rgb: np.ndarray, max_side: int = 1024) -> None:
    """Cache `rgb` as PNG at `path`: atomic (a reader sees all or nothing), owner-only, and
    not fsynced: a lost preview is made again on the next request."""
    make_private_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(png_bytes(rgb, max_side))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _frame(source: Path, frame_number: int) -> np.ndarray:
    """(H, W) float32 0..1 of one frame, decoding only up to its batch."""
    for numbers, pixels in iter_frames(source):
        if frame_number in numbers:
            return np.array(pixels[numbers.index(frame_number)])
    raise ValueError(f"the source has no frame {frame_number}")


def render_preview(
    preview_dir: Path,
    name: str,
    *,
    source: Path,
    sop_instance_uid: str,
    frame_number: int,
    seg_paths: Sequence[Path],
    model: Any = None,
) -> Path | None:
    """The preview `name` (``…_mask.png`` or ``…_cam.png``) in `preview_dir`, made if missing.

    The mask comes from whichever of `seg_paths` holds that source frame (none: no lesion,
    the plain image); the Grad-CAM needs `model` (``predict(crops, with_cam=True)``) and is
    None without one.
    """
    path = preview_dir / name
    if path.is_file():
        return path
    kind = "cam" if name.endswith("_cam.png") else "mask"
    if kind == "cam" and model is None:
        return None
    info = read_info(source)
    image = _frame(source, frame_number)
    if kind == "mask":
        mask = np.zeros(info.shape, dtype=bool)
        reference = frame_number if info.number_of_frames > 1 else None
        for seg_path in seg_paths:
            found = seg_frame_mask(dcmread(seg_path), sop_instance_uid, reference)
            if found is not None and found.shape == mask.shape:
                mask |= found
        save_png(path, mask_overlay(image, mask))
        return path
    boxes = analysis_boxes(info.regions, info.shape)
    predictions = model.predict([image[box.slices] for box in boxes], with_cam=True)
    cam = np.zeros(info.shape, dtype=np.float32)
    for box, prediction in zip(boxes, predictions, strict=True):
        if prediction.cam is not None:
            cam[box.slices] = np.maximum(cam[box.slices], prediction.cam)
    save_png(path, cam_overlay(image, cam))
    return path
