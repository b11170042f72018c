"""Reading DICOM pixels and geometry; building SEG and SR (pydicom, highdicom).

Public API (see docs/ARCHITECTURE.md): import from the submodules, e.g.
``from dicom_io.read import read_frames``. The lightweight names are re-exported here;
``seg``/``sr`` (highdicom) are imported lazily by their own modules only.
"""

from dicom_io.errors import DicomIOError, EmptySegmentationError, UnsupportedObjectError
from dicom_io.measure import mask_measurements
from dicom_io.read import (
    is_our_object,
    iter_frames,
    read_frames,
    read_header,
    read_info,
    skip_code,
    skip_reason,
)
from dicom_io.regions import crop_box
from dicom_io.types import Frames, ImageInfo, UltrasoundRegion
from dicom_io.uids import WECARE_MANUFACTURER, is_our_uid, output_uid

__all__ = [
    "DicomIOError",
    "EmptySegmentationError",
    "Frames",
    "ImageInfo",
    "UltrasoundRegion",
    "UnsupportedObjectError",
    "WECARE_MANUFACTURER",
    "crop_box",
    "is_our_object",
    "is_our_uid",
    "mask_measurements",
    "output_uid",
    "iter_frames",
    "read_frames",
    "read_header",
    "read_info",
    "skip_code",
    "skip_reason",
]
