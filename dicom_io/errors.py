"""Errors raised by :mod:`dicom_io`.

Messages never contain tag values that identify a patient; at most a short hash of a UID
(see :func:`uid_hash`).
"""

from __future__ import annotations

import hashlib

__all__ = [
    "DicomIOError",
    "EmptySegmentationError",
    "UnsupportedObjectError",
    "uid_hash",
    "SKIP_REASONS",
]

#: Stable codes of :class:`UnsupportedObjectError` and what they mean.
SKIP_REASONS: dict[str, str] = {
    "not_ultrasound": "SOP class (or Secondary Capture modality) is not ultrasound",
    "not_breast": "the header names another body part, modality or SOP class (routing rules)",
    "no_body_part": "nothing in the header names a body part (routing.unlabelled = skip)",
    "derived_object": "a SEG, SR, presentation state or other non-image object",
    "our_own_object": "an object WeCare created (Manufacturer or UID root)",
    "no_pixel_data": "the instance has no Pixel Data",
    "undecodable": "pixel data could not be decoded",
    "unsupported_pixel_format": "photometric interpretation or bit depth not supported",
    "unreadable": "the file is not a readable DICOM file",
    "missing_uid": "Study, Series or SOP Instance UID is missing",
    "bad_dimensions": "Rows, Columns, Samples per Pixel, Bits Allocated or Number of Frames "
    "missing, not a number or out of range",
    "too_large": "the decoded image would exceed the memory budget (dicom_io.read.MAX_*), or "
    "a deflated data set inflates beyond its limit (dicom_io.deflate)",
}


def uid_hash(uid: object) -> str:
    """Return 8 hex characters of the SHA-256 of ``uid``: loggable, not reversible."""
    return hashlib.sha256(str(uid).encode("ascii", "replace")).hexdigest()[:8]


class DicomIOError(Exception):
    """Base class of every error raised by :mod:`dicom_io`.

    Attributes
    ----------
    code: str
        Stable machine-readable code (for job rows, metrics and the dashboard).
    """

    code: str = "dicom_io_error"


class UnsupportedObjectError(DicomIOError):
    """The instance is not something we process (see :data:`SKIP_REASONS`).

    Parameters
    ----------
    reason: str
        One of the keys of :data:`SKIP_REASONS`; becomes :attr:`code`.
    detail: str, optional
        Extra text without patient data (e.g. a SOP Class UID, a UID hash).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"Unknown reason {reason!r}; expected one of {sorted(SKIP_REASONS)}")
        self.code = reason
        self.reason = reason
        self.detail = detail
        message = f"{reason}: {SKIP_REASONS[reason]}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class EmptySegmentationError(DicomIOError):
    """No frame has a positive pixel: by design no SEG is built (see ``build_seg``)."""

    code = "empty_segmentation"
