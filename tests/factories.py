"""Synthetic ultrasound DICOM files for tests (pydicom only, plus dcmtk for JPEG).

Every file carries distinctive fake patient data (:data:`CANARY`) so tests can assert
that it never reaches a log line, an error message or an output we did not intend.

Typical use::

    from tests.factories import make_us_image
    path = make_us_image(tmp_path / "us.dcm")                       # 256×320, 1 lesion
    path = make_us_image(tmp_path / "mf.dcm", frames=5, transfer_syntax="jpeg-baseline")
    path = make_us_image(tmp_path / "n.dcm", lesion=None, regions=False)  # normal, uncalibrated
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

__all__ = [
    "CANARY",
    "MM_PER_PIXEL",
    "TRANSFER_SYNTAXES",
    "US_IMAGE_STORAGE",
    "US_MULTIFRAME_STORAGE",
    "lesion_mask",
    "make_us_dataset",
    "make_us_image",
    "make_us_series",
    "write_dataset",
]

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
#: Default calibration of the synthetic B-mode region (mm per pixel, both axes).
MM_PER_PIXEL = 0.1
#: Fake identifying values: tests grep for them in logs and outputs.
CANARY = {
    "PatientName": "CANARY^Wilhelmina^Fakeperson",
    "PatientID": "CANARY-PID-0042",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "CANARYACC17",
    "ReferringPhysicianName": "CANARY^Referrer",
    "InstitutionName": "Canary Test Hospital",
}
#: Short names accepted by :func:`write_dataset` / :func:`make_us_image`.
TRANSFER_SYNTAXES: dict[str, UID] = {
    "implicit": ImplicitVRLittleEndian,
    "explicit": ExplicitVRLittleEndian,
    "big-endian": ExplicitVRBigEndian,
    "deflate": DeflatedExplicitVRLittleEndian,
    "jpeg-baseline": JPEGBaseline8Bit,
    "jpeg-extended": JPEGExtended12Bit,
    "jpeg-lossless": JPEGLosslessSV1,
    "jpeg-ls": JPEGLSLossless,
    "jpeg-ls-near": JPEGLSNearLossless,
    "jpeg2000-lossless": JPEG2000Lossless,
    "jpeg2000": JPEG2000,
    "rle": RLELossless,
}
_DCMTK = {
    # +sr: keep the stored range (default +sp rescales min..max); +un: keep our UIDs.
    JPEGBaseline8Bit: ["dcmcjpeg", "+eb", "+sr", "+un"],
    JPEGExtended12Bit: ["dcmcjpeg", "+ee", "+sr", "+un"],
    JPEGLosslessSV1: ["dcmcjpeg", "+e1", "+un"],
}


def lesion_mask(
    rows: int = 256,
    columns: int = 320,
    center: tuple[int, int] | None = None,
    radii: tuple[int, int] = (30, 45),
) -> np.ndarray:
    """Return the ``(rows, columns) bool`` ellipse used as the synthetic lesion.

    ``center`` is (row, column), default the centre of the image; ``radii`` (row, column).
    """
    cy, cx = center if center is not None else (rows // 2, columns // 2)
    yy, xx = np.mgrid[:rows, :columns]
    return ((yy - cy) / radii[0]) ** 2 + ((xx - cx) / radii[1]) ** 2 <= 1.0


def _gray_frames(
    frames: int, rows: int, columns: int, mask: np.ndarray | None, seed: int
) -> np.ndarray:
    # Speckle-like background (mid grey), a dark hypoechoic lesion is typical, but a
    # bright lesion makes the luminance checks in tests unambiguous.
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.15, 0.35, size=(frames, rows, columns))
    if mask is not None:
        images[:, mask] = 0.9
    return images


def make_us_dataset(
    *,
    rows: int = 256,
    columns: int = 320,
    frames: int = 1,
    photometric: str = "MONOCHROME2",
    bits: int = 8,
    lesion: tuple[int, int] | None | str = "center",
    lesion_radii: tuple[int, int] = (30, 45),
    lesion_frames: Sequence[int] | None = None,
    regions: bool = True,
    mm_per_pixel: float = MM_PER_PIXEL,
    negative_delta: bool = False,
    planar_configuration: int = 0,
    laterality: str | None = "L",
    sop_class_uid: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    frame_of_reference: bool = False,
    manufacturer: str = "Canary Ultrasound Inc.",
    seed: int = 0,
) -> Dataset:
    """Build a synthetic ultrasound instance in memory (uncompressed pixel data).

    Parameters
    ----------
    rows, columns, frames: int
        Size; ``frames > 1`` makes an Ultrasound Multi-frame Image (with cine attributes).
    photometric: str
        MONOCHROME2, MONOCHROME1, RGB, YBR_FULL, YBR_FULL_422 (uncompressed: Y Y Cb Cr
        per pair of pixels, even ``columns``) or PALETTE COLOR.
    planar_configuration: int
        0 (R G B R G B ...) or 1 (all R, then G, then B) for RGB and YBR_FULL.
    bits: int
        8 or 16 (16 only for MONOCHROME*).
    lesion: "center" | (row, column) | None
        Centre of the bright elliptic lesion, or None for a normal image.
    lesion_frames: Sequence[int] | None
        0-based indices of the frames that show the lesion (default: every frame).
    regions: bool
        Add a Sequence of Ultrasound Regions with one calibrated 2D tissue region
        covering the image minus a 10-pixel margin (``mm_per_pixel`` in cm as DICOM says).
    negative_delta: bool
        Store Physical Delta Y negative, as some scanners do.
    laterality: str | None
        Image Laterality (0020,0062).
    frame_of_reference: bool
        Add a Frame of Reference UID (most US has none).

    The ground-truth lesion mask is :func:`lesion_mask` with the same arguments. The
    defaults, RGB and PALETTE COLOR pass dciodvfy without findings; 16 bit and uncompressed
    YBR_FULL are outside the US Image IOD (PS3.3 C.8.5.6) and exist to test the reader.
    """
    photometric = photometric.upper()
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    if bits == 16 and not photometric.startswith("MONOCHROME"):
        raise ValueError("16 bit synthetic images are MONOCHROME only")
    mask = None
    if lesion is not None:
        center = None if lesion == "center" else tuple(lesion)  # type: ignore[arg-type]
        mask = lesion_mask(rows, columns, center, lesion_radii)  # type: ignore[arg-type]
    gray = _gray_frames(frames, rows, columns, mask, seed)
    if mask is not None and lesion_frames is not None:
        plain = np.ones(frames, dtype=bool)
        plain[list(lesion_frames)] = False
        gray[plain] = _gray_frames(int(plain.sum()), rows, columns, None, seed)

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid or (US_MULTIFRAME_STORAGE if frames > 1 else US_IMAGE_STORAGE)
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "BREAST", "0001"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20261123"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.Modality = "US"
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = "Canary 1"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.PatientSex = "F"
    for keyword, value in CANARY.items():
        setattr(ds, keyword, value)
    ds.BodyPartExamined = "BREAST"
    if laterality is not None:
        ds.ImageLaterality = laterality
    else:
        ds.Laterality = ""  # Type 2C for a paired body part: present, unknown
    if frame_of_reference:
        ds.FrameOfReferenceUID = generate_uid()
        ds.PositionReferenceIndicator = ""

    ds.Rows, ds.Columns = rows, columns
    ds.PixelRepresentation = 0
    if photometric in ("MONOCHROME2", "MONOCHROME1"):
        maximum = (1 << bits) - 1
        values = gray if photometric == "MONOCHROME2" else 1.0 - gray
        data = np.round(values * maximum).astype(np.uint8 if bits == 8 else np.uint16)
        ds.SamplesPerPixel = 1
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        # Slightly tinted grey, as US screen captures are; luminance stays ≈ gray.
        rgb = np.stack([gray * 1.0, gray * 0.98, gray * 1.04], axis=-1).clip(0, 1)
        data = np.round(rgb * 255).astype(np.uint8)
        if photometric != "RGB":
            data = convert_color_space(data, "RGB", "YBR_FULL")
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = planar_configuration
        if photometric == "YBR_FULL_422":
            if columns % 2 or planar_configuration:
                raise ValueError("YBR_FULL_422 needs even columns and planar configuration 0")
            pairs = data.reshape(frames, rows, columns // 2, 2, 3).astype(np.uint16)
            chroma = np.round(pairs[..., 1:].mean(axis=3)).astype(np.uint8)  # (f, r, c/2, 2)
            data = np.concatenate([pairs[..., 0].astype(np.uint8), chroma], axis=-1)
        elif planar_configuration == 1:
            data = np.ascontiguousarray(data.transpose(0, 3, 1, 2))
    elif photometric == "PALETTE COLOR":
        # Index i maps to grey level 255 - i: the LUT matters (identity would hide bugs).
        # 16 bit LUT entries, as the US Palette Color module requires.
        data = (255 - np.round(gray * 255)).astype(np.uint8)
        lut = ((255 - np.arange(256)) * 257).astype(np.uint16)
        ds.SamplesPerPixel = 1
        for colour in ("Red", "Green", "Blue"):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", lut.astype("<u2").tobytes())
    else:
        raise ValueError(f"Unsupported photometric {photometric!r}")
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    else:
        data = data[0]
    ds.PixelData = data.tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    ds.LossyImageCompression = "00"

    if regions:
        region = Dataset()
        region.RegionSpatialFormat = 1
        region.RegionDataType = 1
        region.RegionFlags = 0
        region.RegionLocationMinX0 = 10
        region.RegionLocationMinY0 = 10
        region.RegionLocationMaxX1 = columns - 11
        region.RegionLocationMaxY1 = rows - 11
        region.PhysicalUnitsXDirection = 3
        region.PhysicalUnitsYDirection = 3
        region.PhysicalDeltaX = mm_per_pixel / 10.0
        region.PhysicalDeltaY = (-1 if negative_delta else 1) * mm_per_pixel / 10.0
        region.ReferencePixelX0 = columns // 2
        region.ReferencePixelY0 = 10
        ds.SequenceOfUltrasoundRegions = [region]

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def write_dataset(ds: Dataset, path: Path | str, transfer_syntax: str | UID = "explicit") -> Path:
    """Write ``ds`` (uncompressed) to ``path`` in ``transfer_syntax``.

    ``transfer_syntax`` is a key of :data:`TRANSFER_SYNTAXES` or a UID. Native syntaxes
    and RLE / JPEG-LS / JPEG 2000 use pydicom's encoders; JPEG baseline and JPEG lossless
    use dcmtk ``dcmcjpeg`` (pydicom has no JPEG encoder).
    """
    path = Path(path)
    uid = UID(TRANSFER_SYNTAXES.get(str(transfer_syntax), str(transfer_syntax)))
    ds = ds.copy()
    ds.file_meta = ds.file_meta.copy()
    if uid == JPEGBaseline8Bit and int(ds.BitsAllocated) != 8:
        raise ValueError("JPEG baseline needs 8 bit data")
    if uid in _DCMTK:
        if shutil.which(_DCMTK[uid][0]) is None:
            raise RuntimeError(f"{_DCMTK[uid][0]} (dcmtk) is needed for {uid.name}")
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / "plain.dcm"
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.save_as(plain, enforce_file_format=True)
            subprocess.run([*_DCMTK[uid], str(plain), str(path)], check=True, capture_output=True)
        return path
    if uid.is_compressed and int(ds.get("PlanarConfiguration", 0) or 0) == 1:
        # Planar configuration describes native data only: compress interleaved pixels.
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        planes = np.frombuffer(ds.PixelData, np.uint8).reshape(
            frames, 3, int(ds.Rows), int(ds.Columns)
        )
        ds.PixelData = np.ascontiguousarray(planes.transpose(0, 2, 3, 1)).tobytes()
        ds.PlanarConfiguration = 0
    if uid.is_compressed:
        kwargs = {}
        if uid == JPEGLSNearLossless:
            kwargs["jls_error"] = 2
        elif uid == JPEG2000:
            kwargs["j2k_cr"] = [20]
        if ds.get("PhotometricInterpretation") == "RGB" and uid in (JPEG2000Lossless, JPEG2000):
            kwargs["use_mct"] = False
        ds.compress(uid, encoding_plugin="", **kwargs)
        if uid in (JPEGLSNearLossless, JPEG2000):
            ds.LossyImageCompression = "01"
    else:
        ds.file_meta.TransferSyntaxUID = uid
        if uid == ExplicitVRBigEndian and int(ds.BitsAllocated) > 8:
            # pydicom writes Pixel Data bytes as given: swap them for big endian.
            ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def make_us_image(
    path: Path | str,
    *,
    transfer_syntax: str | UID = "explicit",
    **kwargs: object,
) -> Path:
    """Write a synthetic breast ultrasound image to ``path`` and return the path.

    Defaults: Ultrasound Image Storage, 256 × 320, MONOCHROME2, 8 bit, one bright
    elliptic lesion at the centre (radii 30 × 45 px, see :func:`lesion_mask`), one
    calibrated 2D tissue region (0.1 mm per pixel), Image Laterality "L", no Frame of
    Reference, fake patient data from :data:`CANARY`, explicit VR little endian.

    Parameters
    ----------
    path: Path | str
        Where to write.
    transfer_syntax: str | UID
        A key of :data:`TRANSFER_SYNTAXES` (``"jpeg-baseline"``, ``"rle"``, ...) or a UID.
    **kwargs
        Passed to :func:`make_us_dataset` (``frames``, ``photometric``, ``bits``,
        ``lesion``, ``regions``, ``laterality``, the UIDs, ...).
    """
    ds = make_us_dataset(**kwargs)  # type: ignore[arg-type]
    return write_dataset(ds, path, transfer_syntax)


def make_us_series(directory: Path | str, count: int = 2, **kwargs: object) -> list[Path]:
    """Write ``count`` images of one series (shared study/series UIDs) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    study = str(kwargs.pop("study_instance_uid", None) or generate_uid())
    series = str(kwargs.pop("series_instance_uid", None) or generate_uid())
    paths = []
    for index in range(count):
        ds = make_us_dataset(  # type: ignore[arg-type]
            study_instance_uid=study, series_instance_uid=series, seed=index, **kwargs
        )
        ds.InstanceNumber = index + 1
        paths.append(write_dataset(ds, directory / f"{index + 1:03d}.dcm"))
    return paths
