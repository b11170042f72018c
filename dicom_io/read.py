"""Reading source instances: what to skip, headers, and decoded grayscale frames.

Supported SOP classes (see :data:`SUPPORTED_SOP_CLASSES`): Ultrasound Image,
Ultrasound Multi-frame Image, their retired predecessors, Secondary Capture and the
multi-frame grayscale/true-colour Secondary Captures. A Secondary Capture is taken only
when its Modality is US, OT or absent (a screen capture of a CT is not ultrasound).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, convert_color_space, get_decoder, iter_pixels
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from dicom_io.deflate import MAX_INFLATED_BYTES, check_inflated_size
from dicom_io.errors import DicomIOError, UnsupportedObjectError, uid_hash
from dicom_io.regions import tissue_regions
from dicom_io.routing import RoutingRules, route
from dicom_io.types import Frames, ImageInfo, UltrasoundRegion
from dicom_io.uids import WECARE_MANUFACTURER, is_our_uid

__all__ = [
    "SECONDARY_CAPTURE_SOP_CLASSES",
    "SUPPORTED_SOP_CLASSES",
    "ULTRASOUND_SOP_CLASSES",
    "FRAME_BATCH",
    "FRAME_BUDGET_BYTES",
    "MAX_DECODED_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_FRAMES",
    "check_dimensions",
    "is_our_object",
    "iter_frames",
    "read_frames",
    "read_info",
    "decode_pixels",
    "read_header",
    "skip_code",
    "skip_reason",
    "to_grayscale",
]

ULTRASOUND_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
}
SECONDARY_CAPTURE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}
SUPPORTED_SOP_CLASSES = {**ULTRASOUND_SOP_CLASSES, **SECONDARY_CAPTURE_SOP_CLASSES}
_SC_MODALITIES = {"US", "OT", ""}
# Non-image objects: SEG, SR family, KO, PR, RT structure sets, parametric maps.
_DERIVED_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",  # Segmentation, surface segmentation, ...
    "1.2.840.10008.5.1.4.1.1.88",  # SR, KO
    "1.2.840.10008.5.1.4.1.1.11",  # presentation states
    "1.2.840.10008.5.1.4.1.1.481",  # RT
    "1.2.840.10008.5.1.4.1.1.30",  # parametric map
)
_PALETTE = "PALETTE COLOR"
_PHOTOMETRICS = (
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_RCT",
    "YBR_ICT",
    _PALETTE,
)
#: Frames decoded at a time by :func:`iter_frames` (memory ∝ batch, not clip length).
FRAME_BATCH = 16
#: Most bytes one :func:`iter_frames` batch may take decoded (samples as float32): the batch
#: shrinks for big frames: 4096 × 4096 grey frames (64 MiB each) come two at a time, RGB
#: (192 MiB) one at a time.
FRAME_BUDGET_BYTES = 128 * 1024 * 1024
#: Memory budget of decoding, checked from the header before anything is allocated: one
#: decoded frame (samples as float32, 8192 × 8192 grey) and a whole :func:`read_frames` result.
MAX_FRAME_BYTES = 256 * 1024 * 1024
MAX_DECODED_BYTES = 1024 * 1024 * 1024
#: SOP classes whose IOD requires Number of Frames (Type 1).
_MULTI_FRAME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.3.1",
    "1.2.840.10008.5.1.4.1.1.3",
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
}
#: Largest Number of Frames we accept (a 10 minute clip at 60 frames/s is 36 000).
MAX_FRAMES = 100_000
_LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float64)  # ITU-R BT.601, as YBR_FULL


def read_header(path: str | PathLike[str], max_inflated_bytes: int = MAX_INFLATED_BYTES) -> Dataset:
    """Read a file's attributes without Pixel Data (fast; for routing and indexing).

    Every element is parsed now (see :func:`_check_all_elements`), so later users (SEG and
    SR building copy the source) meet no lazily raised error. A deflated file is checked
    to inflate to at most ``max_inflated_bytes`` first: pydicom inflates it whole.

    Raises
    ------
    UnsupportedObjectError
        ``unreadable`` when the file is not DICOM, ``too_large`` for a deflate bomb.
    """
    header = _dcmread(path, max_inflated_bytes, stop_before_pixels=True)
    _check_all_elements(header)
    return header


def _dcmread(
    path: str | PathLike[str],
    max_inflated_bytes: int = MAX_INFLATED_BYTES,
    *,
    stop_before_pixels: bool = False,
) -> Dataset:
    """``pydicom.dcmread`` of an untrusted file, after bounding what a deflated one inflates to."""
    inflated = check_inflated_size(path, max_inflated_bytes)
    try:
        ds = pydicom.dcmread(Path(path), stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # corrupt input: deep nesting, absurd lengths, bad values, ...
        raise UnsupportedObjectError("unreadable", type(exc).__name__) from exc
    if inflated is not None:
        # pydicom keeps the whole inflated stream as the dataset's buffer (for deferred
        # reads, which we never do): drop it, or every header would hold it.
        ds.buffer = None
    return ds


def is_our_object(ds: Dataset) -> bool:
    """True for objects WeCare made or that are SEG/SR: we never process those.

    Checks Manufacturer "WeCare", our UID marker in the SOP/Series Instance UID
    (:func:`dicom_io.uids.is_our_uid`) and the SEG/SR/KO/PR SOP classes.
    """
    if str(ds.get("Manufacturer", "") or "").strip() == WECARE_MANUFACTURER:
        return True
    if is_our_uid(ds.get("SOPInstanceUID")) or is_our_uid(ds.get("SeriesInstanceUID")):
        return True
    return str(ds.get("SOPClassUID", "")).startswith(_DERIVED_PREFIXES)


def skip_code(ds: Dataset, rules: RoutingRules | None = None) -> str | None:
    """Return why ``ds`` is not processed as a stable code of ``errors.SKIP_REASONS``.

    None when it is processed. Only attributes are inspected (works on a header read
    with ``stop_before_pixels``, so ``no_pixel_data`` is reported only when the element
    list is complete). With ``rules``, a processable image out of their scope (not breast,
    see :func:`dicom_io.routing.route`) gets ``not_breast`` or ``no_body_part``.
    """
    sop_class_uid = str(ds.get("SOPClassUID", ""))
    manufacturer = str(ds.get("Manufacturer", "") or "").strip()
    if manufacturer == WECARE_MANUFACTURER or any(
        is_our_uid(ds.get(keyword)) for keyword in ("SOPInstanceUID", "SeriesInstanceUID")
    ):
        return "our_own_object"
    if sop_class_uid.startswith(_DERIVED_PREFIXES):
        return "derived_object"
    if sop_class_uid not in SUPPORTED_SOP_CLASSES:
        return "not_ultrasound"
    if sop_class_uid in SECONDARY_CAPTURE_SOP_CLASSES:
        modality = str(ds.get("Modality", "") or "").strip().upper()
        if modality not in _SC_MODALITIES:
            return "not_ultrasound"
    if not all(ds.get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")):
        return "missing_uid"
    if "Rows" not in ds or "Columns" not in ds:
        return "no_pixel_data"
    if rules is not None:
        decision = route(ds, rules)
        if decision is not None:
            return decision[0]
    return None


#: A UID as PS3.5 9.1 allows it: digits in dot-separated components without leading zeros.
_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_CODE_STRING_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _")


def _valid_uid(value: object) -> str | None:
    """The UID text when it is a well-formed UID of at most 64 characters, else None."""
    text = str(value or "").strip().rstrip("\0")
    return text if len(text) <= 64 and _UID_PATTERN.fullmatch(text) else None


def _sop_class_name(ds: Dataset) -> str:
    # Attacker-chosen text goes into skip reasons and logs only once it is a valid UID.
    raw = str(ds.get("SOPClassUID", "") or "").strip()
    if not raw:
        return "an object without SOP Class UID"
    uid = _valid_uid(raw)
    if uid is None:
        return "an object with an invalid SOP Class UID"
    name = UID(uid).name
    return name if name != uid else f"SOP class {uid}"


def _safe_code_string(value: object, limit: int = 16) -> str:
    # Modality is a CS (A-Z, 0-9, space, _): keep only those ASCII characters, never free text.
    text = str(value or "").strip().upper()[:limit]
    return "".join(c for c in text if c in _CODE_STRING_CHARACTERS).strip() or "none"


def skip_reason(ds: Dataset, rules: RoutingRules | None = None) -> str | None:
    """Return why ``ds`` is stored but not processed, as text for people, or None.

    The text starts with the stable code of :func:`skip_code` and a colon (so callers can
    group by ``reason.split(":")[0]``), then says in plain words what the object is and
    why we leave it alone, e.g. ``"not_ultrasound: CT Image Storage is not an ultrasound
    or secondary capture image; stored, not analysed"``. It names only the SOP class,
    Modality code or transfer syntax, never patient, study or institution data.
    """
    code = skip_code(ds, rules)
    if code is None:
        return None
    what = _sop_class_name(ds)
    if code in ("not_breast", "no_body_part") and rules is not None:
        decision = route(ds, rules)
        if decision is not None:
            return f"{code}: {what}: {decision[1]}; stored, not analysed"
    if code == "our_own_object":
        text = f"{what} created by WeCare (our own result); never analysed again"
    elif code == "derived_object":
        text = f"{what} is a derived object (segmentation, report, ...), not an image"
    elif code == "not_ultrasound" and str(ds.get("SOPClassUID", "")) in SUPPORTED_SOP_CLASSES:
        modality = _safe_code_string(ds.get("Modality"))
        text = f"{what} with Modality {modality} is not an ultrasound screen capture"
    elif code == "not_ultrasound":
        text = f"{what} is not an ultrasound or secondary capture image"
    elif code == "missing_uid":
        text = f"{what} without Study, Series or SOP Instance UID cannot be tracked"
    else:
        text = f"{what} has no pixel data (no Rows/Columns)"
    return f"{code}: {text}; stored, not analysed"


def _laterality(ds: Dataset) -> str | None:
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return None


def _max_value(bits: int) -> float:
    return float((1 << bits) - 1)


def to_grayscale(array: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """Convert decoded pixels to ``(N, H, W) float32`` luminance in 0..1.

    Parameters
    ----------
    array: numpy.ndarray
        ``(N, H, W)`` or ``(N, H, W, 3)`` as decoded (no colour conversion applied yet
        beyond what ``photometric`` says).
    ds: pydicom.dataset.Dataset
        The source, for Bits Stored, Pixel Representation and palette LUTs.
    photometric: str
        Photometric Interpretation of ``array`` (may differ from the dataset's when
        the decoder already converted YBR to RGB).
    """
    bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if photometric == _PALETTE:
        rgb = apply_color_lut(array, ds)
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
        lut_bits = int(descriptor[2]) if descriptor is not None else 8
        scale = _max_value(16 if lut_bits > 8 else 8)
        # Some writers declare 16 bit LUT entries but store 8 bit values.
        if lut_bits > 8 and rgb.max() <= 255:
            scale = 255.0
        gray = (rgb.astype(np.float64) @ _LUMINANCE) / scale
        return np.clip(gray, 0.0, 1.0).astype(np.float32)
    if photometric.startswith("YBR_FULL"):
        if array.ndim < 4 or array.shape[-1] != 3:
            raise UnsupportedObjectError("unsupported_pixel_format", "colour without 3 samples")
        # Y of YBR_FULL is already BT.601 luminance (PS3.3 C.7.6.3.1.2): skip Cb, Cr.
        array = array[..., 0]
    # float32 is exact for ≤ 16 bit values and halves memory for long cine clips.
    dtype = np.float32 if bits_stored <= 16 else np.float64
    values = array.astype(dtype)
    if signed:
        values += dtype(1 << (bits_stored - 1))
    values /= dtype(_max_value(bits_stored))
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        gray = values if photometric == "MONOCHROME2" else 1.0 - values
    elif photometric.startswith("YBR_FULL"):
        gray = values
    elif photometric in ("RGB", "YBR_RCT", "YBR_ICT"):
        if values.ndim < 4 or values.shape[-1] != 3:
            raise UnsupportedObjectError("unsupported_pixel_format", "colour without 3 samples")
        gray = values @ _LUMINANCE.astype(dtype)
    else:
        raise UnsupportedObjectError("unsupported_pixel_format", _safe_code_string(photometric))
    if gray.dtype == np.float32:  # our own array: clip in place, one float copy, not three
        return np.clip(gray, 0.0, 1.0, out=gray)
    return np.clip(gray, 0.0, 1.0).astype(np.float32)


def _drop_excess_pixel_data(ds: Dataset) -> None:
    """Keep only the bytes the header's frames need of native Pixel Data that is longer.

    pydicom ignores the excess too, but first copies and converts all of it: 64 MiB of
    trailing zeros behind a 64 × 80 image cost 400 MB while decoding.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = UID(str(meta.get("TransferSyntaxUID", "")) if meta is not None else "")
    if not syntax.is_transfer_syntax or syntax.is_compressed:
        return
    try:
        expected = int(get_expected_length(ds, unit="bytes"))
    except Exception:  # noqa: BLE001 - odd header values: the decoder will say what is wrong
        return
    data = ds.PixelData
    keep = expected + expected % 2  # values are padded to an even length
    if isinstance(data, bytes) and len(data) > keep:
        ds.PixelData = data[:keep]


def decode_pixels(ds: Dataset) -> np.ndarray:
    """Decode every frame of ``ds`` to ``(N, H, W) float32`` luminance in 0..1.

    The decoding half of :func:`read_frames`, for a dataset already in memory (no SOP
    class or UID checks).

    Raises
    ------
    UnsupportedObjectError
        ``no_pixel_data``, ``undecodable`` or ``unsupported_pixel_format``.
    """
    if "PixelData" not in ds:
        raise UnsupportedObjectError("no_pixel_data", f"sop={uid_hash(ds.get('SOPInstanceUID'))}")
    _drop_excess_pixel_data(ds)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in (
        "MONOCHROME1",
        "MONOCHROME2",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_RCT",
        "YBR_ICT",
        _PALETTE,
    ):
        raise UnsupportedObjectError("unsupported_pixel_format", _safe_code_string(photometric))
    try:
        decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
        # YBR_FULL(_422): keep YCbCr (4x faster than converting) and use Y, which is
        # BT.601 luminance. Other colour models are converted to RGB by the decoder.
        as_rgb = photometric not in ("YBR_FULL", "YBR_FULL_422")
        array, meta = decoder.as_array(ds, as_rgb=as_rgb)
    except UnsupportedObjectError:
        raise
    except Exception as exc:  # any decoder failure: corrupt stream, missing plugin, ...
        raise UnsupportedObjectError(
            "undecodable", f"{type(exc).__name__}, sop={uid_hash(ds.get('SOPInstanceUID'))}"
        ) from exc
    number_of_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if number_of_frames == 1:
        array = array[np.newaxis]
    decoded_photometric = str(meta.get("photometric_interpretation", photometric))
    if samples == 3 and decoded_photometric in ("YBR_FULL", "YBR_FULL_422"):
        # The decoder left YBR as is (e.g. uncompressed YBR_FULL_422): Y is luminance.
        pass
    elif samples == 3 and decoded_photometric not in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        array = convert_color_space(array, decoded_photometric, "RGB")
        decoded_photometric = "RGB"
    return to_grayscale(array, ds, decoded_photometric)


def read_frames(path: str | PathLike[str]) -> Frames:
    """Read and decode every frame of a supported instance.

    Decodes all transfer syntaxes pydicom and the pylibjpeg plugins handle (implicit and
    explicit VR little endian, big endian, deflate, JPEG baseline/extended/lossless,
    JPEG-LS, JPEG 2000, RLE). Photometric interpretations: MONOCHROME1 (inverted),
    MONOCHROME2, RGB, YBR_FULL, YBR_FULL_422, YBR_RCT/ICT (JPEG 2000), PALETTE COLOR
    (LUT applied); colour becomes BT.601 luminance. 8 to 32 bit.

    Parameters
    ----------
    path: str | os.PathLike
        A DICOM file.

    Returns
    -------
    Frames
        ``pixels`` is ``(N, H, W) float32`` in 0..1; ``frame_numbers`` 1..N.

    Raises
    ------
    UnsupportedObjectError
        With the code of :func:`skip_reason`, or ``no_pixel_data``, ``undecodable``,
        ``unsupported_pixel_format``, ``unreadable``.
    """
    try:
        return _read_frames(path)
    except DicomIOError:
        raise
    except Exception as exc:  # a lazily parsed element or a decoder step choked on corrupt input
        raise UnsupportedObjectError("undecodable", type(exc).__name__) from exc


def _read_frames(path: str | PathLike[str]) -> Frames:
    ds = _dcmread(path)
    reason = _skip_code_checked(ds)
    if reason is not None:
        raise UnsupportedObjectError(reason, f"sop={uid_hash(ds.get('SOPInstanceUID'))}")
    dims = check_dimensions(ds)
    if dims.frames * dims.frame_bytes > MAX_DECODED_BYTES:
        raise UnsupportedObjectError(
            "too_large", f"{dims.frames} frames of {dims.rows}x{dims.columns}"
        )
    pixels = decode_pixels(ds)
    return Frames(
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        pixels=pixels,
        frame_numbers=tuple(range(1, pixels.shape[0] + 1)),
        regions=_regions(ds),
        laterality=_laterality(ds),
    )


@dataclass(frozen=True)
class Dimensions:
    """Size of the pixel data as the header declares it, checked for sanity."""

    rows: int
    columns: int
    samples: int
    frames: int

    @property
    def frame_bytes(self) -> int:
        """Bytes of one decoded frame (every sample as float32)."""
        return self.rows * self.columns * self.samples * 4


def check_dimensions(ds: Dataset) -> Dimensions:
    """Refuse absurd or unreadable Rows/Columns/Samples/Bits/Number of Frames before decoding.

    Raises
    ------
    UnsupportedObjectError
        ``bad_dimensions`` (missing, not a number, out of range) or ``too_large`` (one frame
        over :data:`MAX_FRAME_BYTES`, or more than :data:`MAX_FRAMES` frames).
    """
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 8) or 0)
        raw_frames = ds.get("NumberOfFrames")
        text = "" if raw_frames is None else str(raw_frames).strip()
    except Exception as exc:  # a wrong VR or value is not an image we read
        raise UnsupportedObjectError("bad_dimensions", type(exc).__name__) from exc
    if not text and str(ds.get("SOPClassUID", "")) in _MULTI_FRAME_SOP_CLASSES:
        raise UnsupportedObjectError("bad_dimensions", "Number of Frames missing (multi-frame)")
    if text and not text.isdigit():  # "1.5", "-1", "abc": not a count
        raise UnsupportedObjectError("bad_dimensions", "Number of Frames is not a count")
    frames = int(text) if text else 1
    if not (1 <= rows <= 65535 and 1 <= columns <= 65535):
        raise UnsupportedObjectError("bad_dimensions", f"rows={rows} columns={columns}")
    if samples not in (1, 3) or bits not in (1, 8, 16, 32) or frames < 1:
        raise UnsupportedObjectError(
            "bad_dimensions", f"samples={samples} bits={bits} frames={frames}"
        )
    dims = Dimensions(rows, columns, samples, frames)
    if dims.frame_bytes > MAX_FRAME_BYTES or frames > MAX_FRAMES:
        raise UnsupportedObjectError("too_large", f"{frames} frames of {rows}x{columns}x{samples}")
    return dims


def _skip_code_checked(ds: Dataset) -> str | None:
    try:
        return skip_code(ds)
    except Exception as exc:  # a value that cannot be read as its VR
        raise UnsupportedObjectError("unreadable", type(exc).__name__) from exc


def _regions(ds: Dataset) -> tuple[UltrasoundRegion, ...]:
    """US Regions, or none when they are malformed (the image is still read, uncalibrated)."""
    try:
        return tissue_regions(ds)
    except Exception:  # noqa: BLE001 - hostile region values: NaN, inf, negative, wrong VR
        return ()


def _read_supported_header(path: str | PathLike[str]) -> Dataset:
    header = read_header(path)
    reason = _skip_code_checked(header)
    if reason is not None:
        raise UnsupportedObjectError(reason, f"sop={uid_hash(header.get('SOPInstanceUID'))}")
    photometric = str(header.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _PHOTOMETRICS:
        raise UnsupportedObjectError("unsupported_pixel_format", _safe_code_string(photometric))
    check_dimensions(header)
    return header


#: Deepest sequence nesting we accept; real ultrasound headers nest a few levels.
MAX_SEQUENCE_DEPTH = 16


def _check_all_elements(header: Dataset) -> None:
    """Parse every element now (pydicom converts values lazily) and bound the nesting.

    An element written with a VR pydicom does not know (a private tag with VR "XX", as some
    scanners write) is read with its dictionary VR, or as UN: pydicom reads and decodes such
    files, so do we. Any other corrupt element (a value that is not its VR) or sequences
    nested deeper than :data:`MAX_SEQUENCE_DEPTH` (SEG/SR building copies the source
    recursively) make the image unreadable here, not a crash later.
    """
    stack: list[tuple[Dataset, int]] = [(header, 0)]
    try:
        while stack:
            dataset, depth = stack.pop()
            for tag in list(dataset.keys()):
                try:
                    element = dataset[tag]
                except NotImplementedError:  # "Unknown Value Representation"
                    element = _with_known_vr(dataset, tag)
                value = element.value
                if element.VR == "SQ" and value:
                    if depth + 1 > MAX_SEQUENCE_DEPTH:
                        raise UnsupportedObjectError("unreadable", "sequences nested too deep")
                    stack.extend((item, depth + 1) for item in value)
    except UnsupportedObjectError:
        raise
    except Exception as exc:
        raise UnsupportedObjectError("unreadable", type(exc).__name__) from exc


def _with_known_vr(dataset: Dataset, tag: int) -> DataElement:
    """Re-read an element of unknown VR with its dictionary VR (public tags), else as UN."""
    raw = dataset.get_item(tag)
    if not isinstance(raw, RawDataElement):
        raise UnsupportedObjectError("unreadable", "element of unknown VR")
    try:
        vr = dictionary_VR(tag)
    except KeyError:  # private or unknown tag
        vr = "UN"
    if " or " in vr or vr == "SQ":  # ambiguous (US or SS) or a sequence: keep the bytes
        vr = "UN"
    dataset[tag] = raw._replace(VR=vr)
    try:
        return dataset[tag]
    except Exception:  # noqa: BLE001 - the bytes are not that VR either: keep them as UN
        dataset[tag] = raw._replace(VR="UN")
        return dataset[tag]


def _info(header: Dataset) -> ImageInfo:
    return ImageInfo(
        study_instance_uid=str(header.StudyInstanceUID),
        series_instance_uid=str(header.SeriesInstanceUID),
        sop_instance_uid=str(header.SOPInstanceUID),
        sop_class_uid=str(header.SOPClassUID),
        rows=int(header.Rows),
        columns=int(header.Columns),
        number_of_frames=max(1, int(header.get("NumberOfFrames", 1) or 1)),
        regions=_regions(header),
        laterality=_laterality(header),
    )


def read_info(path: str | PathLike[str]) -> ImageInfo:
    """Read what a supported instance is (UIDs, size, frame count, regions), not its pixels.

    Raises
    ------
    UnsupportedObjectError
        The codes of :func:`skip_code`, ``unreadable`` or ``unsupported_pixel_format``.
    """
    try:
        return _info(_read_supported_header(path))
    except DicomIOError:
        raise
    except Exception as exc:  # a lazily parsed element that is corrupt
        raise UnsupportedObjectError("unreadable", type(exc).__name__) from exc


def iter_frames(
    path: str | PathLike[str], batch: int = FRAME_BATCH
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Decode a supported instance ``batch`` frames at a time (see :func:`_iter_frames`).

    Any failure on corrupt input (a lazily parsed element, a decoder step) is raised as
    :class:`UnsupportedObjectError`, and each batch is checked to be ``(n, H, W)``.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    try:
        for numbers, pixels in _iter_frames(path, batch):
            if pixels.ndim != 3 or pixels.shape[0] != len(numbers):
                raise UnsupportedObjectError("undecodable", f"pixel array of shape {pixels.shape}")
            yield numbers, pixels
    except DicomIOError:
        raise
    except Exception as exc:
        raise UnsupportedObjectError("undecodable", type(exc).__name__) from exc


def _iter_frames(
    path: str | PathLike[str], batch: int = FRAME_BATCH
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Decode a supported instance ``batch`` frames at a time.

    Yields ``(frame_numbers, pixels)``: 1-based frame numbers and ``(n, H, W) float32``
    luminance in 0..1, exactly as :func:`read_frames` gives them, with ``n <= batch``, and
    fewer when ``n`` frames would take more than :data:`FRAME_BUDGET_BYTES` decoded.
    Pixel data is read frame by frame from the file (pydicom ``iter_pixels``), so memory
    is proportional to ``batch``, not to the length of a cine clip. Deflated files are
    the exception: the whole data set must be inflated first (at most
    :data:`~dicom_io.deflate.MAX_INFLATED_BYTES`).

    Raises
    ------
    UnsupportedObjectError
        As :func:`read_info`, and ``no_pixel_data`` / ``undecodable`` while iterating.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    header = _read_supported_header(path)
    dims = check_dimensions(header)
    batch = max(1, min(batch, FRAME_BUDGET_BYTES // dims.frame_bytes))
    photometric = str(header.PhotometricInterpretation).strip().upper()
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    # As decode_pixels: keep YBR_FULL(_422) and use Y; other colour models become RGB.
    as_rgb = photometric not in ("YBR_FULL", "YBR_FULL_422")
    decoded = photometric if samples == 1 or not as_rgb else "RGB"
    if decoded == "YBR_FULL_422":
        decoded = "YBR_FULL"  # decoders upsample 4:2:2 to full resolution
    sop = uid_hash(header.get("SOPInstanceUID"))
    syntax = UID(header.file_meta.get("TransferSyntaxUID", ""))
    if photometric == "YBR_FULL_422" and not syntax.is_compressed:
        # pydicom 3.0.2 iter_array miscounts the frame length of native 4:2:2 data
        # ("cannot reshape"): decode this rare case as a whole, then hand out batches.
        if dims.frames * dims.frame_bytes > MAX_DECODED_BYTES:
            raise UnsupportedObjectError(
                "too_large", f"{dims.frames} frames of {dims.rows}x{dims.columns} YBR_FULL_422"
            )
        pixels = decode_pixels(_dcmread(path))
        for start in range(0, pixels.shape[0], batch):
            numbers = tuple(range(start + 1, min(start + batch, pixels.shape[0]) + 1))
            yield numbers, pixels[start : start + batch]
        return
    source: str | Path | Dataset = Path(path)
    if header.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        source = _dcmread(path)  # the stream must be inflated as a whole (bounded)
        if "PixelData" not in source:
            raise UnsupportedObjectError("no_pixel_data", f"sop={sop}")
        _drop_excess_pixel_data(source)
    frames = iter_pixels(source, as_rgb=as_rgb)
    number = 0
    pending: list[np.ndarray] = []
    while True:
        try:
            try:
                frame = next(frames, None)
            except Exception:
                if number or pending or isinstance(source, Dataset):
                    raise
                # Streaming from the file failed before the first frame (no pixel data,
                # or e.g. an odd Basic Offset Table that pydicom's file-level parser
                # rejects): decode from the whole data set instead.
                source = _dcmread(path)
                if "PixelData" not in source:
                    raise UnsupportedObjectError("no_pixel_data", f"sop={sop}") from None
                frames = iter_pixels(source, as_rgb=as_rgb)
                continue
        except UnsupportedObjectError:
            raise
        except Exception as exc:  # any decoder failure: corrupt stream, missing plugin, ...
            raise UnsupportedObjectError("undecodable", f"{type(exc).__name__}, sop={sop}") from exc
        if frame is not None:
            pending.append(frame)
        if pending and (frame is None or len(pending) == batch):
            numbers = tuple(range(number + 1, number + len(pending) + 1))
            number += len(pending)
            pixels = to_grayscale(np.stack(pending), header, decoded)
            pending = []
            yield numbers, pixels
        if frame is None:
            break
    if number == 0:
        raise UnsupportedObjectError("no_pixel_data", f"sop={sop}")
