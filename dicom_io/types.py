"""Frozen value types exchanged between :mod:`dicom_io` and its callers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Frames", "ImageInfo", "UltrasoundRegion"]


@dataclass(frozen=True)
class UltrasoundRegion:
    """One item of the Sequence of Ultrasound Regions (PS3.3 C.8.5.5).

    Attributes
    ----------
    x0, y0, x1, y1: int
        Pixel box, ``x1``/``y1`` exclusive (Region Location Max X1/Y1 + 1).
    spatial_format: int
        Region Spatial Format (0018,6012): 1 = 2D (tissue or flow), 2 = M-mode, ...
    mm_per_pixel_x, mm_per_pixel_y: float | None
        ``abs(Physical Delta X/Y) * 10`` when Physical Units are cm (code 3), else None.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: int
    mm_per_pixel_x: float | None
    mm_per_pixel_y: float | None

    def __post_init__(self) -> None:
        for name in ("x0", "y0", "x1", "y1", "spatial_format"):
            if not isinstance(getattr(self, name), int | np.integer):
                raise TypeError(f"UltrasoundRegion.{name} must be an int")
        if self.x0 < 0 or self.y0 < 0:
            raise ValueError("UltrasoundRegion x0/y0 must be >= 0")
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError("UltrasoundRegion needs x1 > x0 and y1 > y0 (x1/y1 exclusive)")
        for name in ("mm_per_pixel_x", "mm_per_pixel_y"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(f"UltrasoundRegion.{name} must be None or a positive number")
        if (self.mm_per_pixel_x is None) != (self.mm_per_pixel_y is None):
            raise ValueError("UltrasoundRegion mm_per_pixel_x/_y must both be set or both None")

    @property
    def is_calibrated(self) -> bool:
        """True when both pixel sizes are known in mm."""
        return self.mm_per_pixel_x is not None and self.mm_per_pixel_y is not None

    @property
    def area_px(self) -> int:
        """Number of pixels in the box."""
        return (self.x1 - self.x0) * (self.y1 - self.y0)


@dataclass(frozen=True)
class Frames:
    """Decoded frames of one source instance.

    Attributes
    ----------
    pixels: numpy.ndarray
        ``(N, H, W) float32`` grayscale in 0..1, MONOCHROME2 sense (bright = high).
    frame_numbers: tuple[int, ...]
        1-based DICOM frame numbers of the N frames in ``pixels``.
    regions: tuple[UltrasoundRegion, ...]
        2D tissue regions of the Sequence of Ultrasound Regions (may be empty).
    laterality: str | None
        "L" or "R" from Image Laterality (0020,0062) or Laterality (0020,0060).
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    pixels: np.ndarray
    frame_numbers: tuple[int, ...]
    regions: tuple[UltrasoundRegion, ...]
    laterality: str | None

    def __post_init__(self) -> None:
        for name in (
            "study_instance_uid",
            "series_instance_uid",
            "sop_instance_uid",
            "sop_class_uid",
        ):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"Frames.{name} must be a non-empty str")
        if not isinstance(self.pixels, np.ndarray):
            raise TypeError("Frames.pixels must be a numpy array")
        if self.pixels.ndim != 3 or self.pixels.dtype != np.float32:
            raise ValueError(
                "Frames.pixels must be (N, H, W) float32, "
                f"got {self.pixels.shape} {self.pixels.dtype}"
            )
        if len(self.frame_numbers) != self.pixels.shape[0]:
            raise ValueError("Frames.frame_numbers must have one number per frame in pixels")
        if any(int(n) < 1 for n in self.frame_numbers):
            raise ValueError("Frames.frame_numbers are 1-based")
        if not all(isinstance(r, UltrasoundRegion) for r in self.regions):
            raise TypeError("Frames.regions must hold UltrasoundRegion items")
        if self.laterality not in (None, "L", "R"):
            raise ValueError("Frames.laterality must be 'L', 'R' or None")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of every frame."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])


@dataclass(frozen=True)
class ImageInfo:
    """What a source instance is, without its pixels (see :func:`dicom_io.read.read_info`).

    Attributes
    ----------
    rows, columns, number_of_frames: int
        Size of the pixel data; frames are decoded lazily by
        :func:`dicom_io.read.iter_frames`.
    regions: tuple[UltrasoundRegion, ...]
        2D tissue regions of the Sequence of Ultrasound Regions (may be empty).
    laterality: str | None
        "L" or "R" from Image Laterality (0020,0062) or Laterality (0020,0060).
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    rows: int
    columns: int
    number_of_frames: int
    regions: tuple[UltrasoundRegion, ...]
    laterality: str | None

    def __post_init__(self) -> None:
        for name in (
            "study_instance_uid",
            "series_instance_uid",
            "sop_instance_uid",
            "sop_class_uid",
        ):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"ImageInfo.{name} must be a non-empty str")
        for name in ("rows", "columns", "number_of_frames"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"ImageInfo.{name} must be an int >= 1")
        if not all(isinstance(r, UltrasoundRegion) for r in self.regions):
            raise TypeError("ImageInfo.regions must hold UltrasoundRegion items")
        if self.laterality not in (None, "L", "R"):
            raise ValueError("ImageInfo.laterality must be 'L', 'R' or None")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of every frame."""
        return int(self.rows), int(self.columns)
