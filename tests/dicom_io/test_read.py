"""Tests of dicom_io.read, dicom_io.regions and dicom_io.types on synthetic and real files."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io.errors import SKIP_REASONS, UnsupportedObjectError
from dicom_io.read import decode_pixels, is_our_object, read_frames, read_header, skip_code
from dicom_io.regions import bmode_region, crop_box, parse_regions, tissue_regions
from dicom_io.types import Frames, UltrasoundRegion
from dicom_io.uids import output_uid
from tests.dicom_io.conftest import DEID_FILES, JPEG_LS_FILES, REAL_FILES, real_file
from tests.factories import CANARY, MM_PER_PIXEL, lesion_mask, make_us_dataset, make_us_image
from tests.requirements import require_or_skip

LOSSLESS = [
    "implicit",
    "explicit",
    "big-endian",
    "deflate",
    "jpeg-lossless",
    "jpeg-ls",
    "jpeg2000-lossless",
    "rle",
]
LOSSY = ["jpeg-baseline", "jpeg-ls-near", "jpeg2000"]
# JPEG baseline/lossless test files are made with dcmtk's dcmcjpeg.
HAS_DCMTK = shutil.which("dcmcjpeg") is not None


def _contrast(frames: Frames) -> tuple[float, float]:
    mask = lesion_mask(*frames.shape)
    return float(frames.pixels[:, mask].mean()), float(frames.pixels[:, ~mask].mean())


# Lossy compression of palette indices is not allowed (PS3.5 8.2): those pairs are left out.
SYNTAX_PHOTOMETRIC = [
    (syntax, photometric)
    for photometric in ["MONOCHROME2", "MONOCHROME1", "RGB", "YBR_FULL", "PALETTE COLOR"]
    for syntax in LOSSLESS + LOSSY
    if not (photometric == "PALETTE COLOR" and syntax in LOSSY)
]


@pytest.mark.parametrize(("transfer_syntax", "photometric"), SYNTAX_PHOTOMETRIC)
def test_read_frames_synthetic_syntax_and_photometric_gives_bright_lesion(
    tmp_path: Path, transfer_syntax: str, photometric: str
) -> None:
    if (
        transfer_syntax.startswith("jpeg-")
        and not transfer_syntax.startswith("jpeg-ls")
        and not HAS_DCMTK
    ):
        require_or_skip(False, "dcmcjpeg (dcmtk) not installed")
    path = make_us_image(
        tmp_path / "us.dcm", photometric=photometric, transfer_syntax=transfer_syntax, frames=2
    )
    frames = read_frames(path)
    assert frames.pixels.shape == (2, 256, 320)
    assert frames.pixels.dtype == np.float32
    assert frames.frame_numbers == (1, 2)
    inside, outside = _contrast(frames)
    tolerance = 0.02 if transfer_syntax in LOSSLESS else 0.05
    assert inside == pytest.approx(0.9, abs=tolerance)
    assert outside == pytest.approx(0.25, abs=tolerance)


@pytest.mark.parametrize(
    "transfer_syntax",
    ["explicit", "big-endian", "jpeg-lossless", "jpeg-ls", "jpeg2000-lossless", "rle"],
)
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_read_frames_16_bit_gives_same_values_as_8_bit(
    tmp_path: Path, transfer_syntax: str, photometric: str
) -> None:
    if transfer_syntax == "jpeg-lossless":
        require_or_skip(HAS_DCMTK, "dcmcjpeg (dcmtk) not installed")
    eight = read_frames(make_us_image(tmp_path / "8.dcm", photometric=photometric, bits=8))
    sixteen = read_frames(
        make_us_image(
            tmp_path / "16.dcm", photometric=photometric, bits=16, transfer_syntax=transfer_syntax
        )
    )
    np.testing.assert_allclose(sixteen.pixels, eight.pixels, atol=1 / 255)


def test_read_frames_synthetic_carries_uids_regions_and_laterality(tmp_path: Path) -> None:
    ds = make_us_dataset(laterality="R")
    path = tmp_path / "us.dcm"
    ds.save_as(path, enforce_file_format=True)
    frames = read_frames(path)
    assert (frames.study_instance_uid, frames.series_instance_uid, frames.sop_instance_uid) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )
    assert frames.sop_class_uid == "1.2.840.10008.5.1.4.1.1.6.1"
    assert frames.laterality == "R"
    assert frames.regions == (UltrasoundRegion(10, 10, 310, 246, 1, MM_PER_PIXEL, MM_PER_PIXEL),)


@pytest.mark.parametrize("name", sorted(REAL_FILES) + sorted(DEID_FILES))
def test_read_frames_real_file_decodes_all_frames(name: str) -> None:
    path = real_file(name)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    frames = read_frames(path)
    expected_frames = int(header.get("NumberOfFrames", 1) or 1)
    assert frames.pixels.shape == (expected_frames, header.Rows, header.Columns)
    assert frames.frame_numbers == tuple(range(1, expected_frames + 1))
    assert 0.0 <= float(frames.pixels.min()) <= float(frames.pixels.max()) <= 1.0
    assert float(frames.pixels.std()) > 0.01, "decoded to a flat image"
    assert frames.sop_instance_uid == header.SOPInstanceUID


@pytest.mark.parametrize(
    ("reference", "variants"),
    [
        ("US1_UNCR.dcm", ["US1_J2KR.dcm", "examples_jpeg2k.dcm"]),
        ("OBXXXX1A.dcm", ["OBXXXX1A_expb.dcm", "OBXXXX1A_rle.dcm"]),
        ("gdcm-US-ALOKA-16.dcm", ["gdcm-US-ALOKA-16_big.dcm"]),
        (
            "SC_rgb.dcm",
            [
                "SC_rgb_rle_2frame.dcm",
                "SC_rgb_32bit.dcm",
                "SC_rgb_jpeg_gdcm.dcm",
                "SC_ybr_full_uncompressed.dcm",
                "SC_ybr_full_422_uncompressed.dcm",
                "SC_rgb_gdcm_KY.dcm",
            ],
        ),
    ],
)
def test_read_frames_real_lossless_variants_equal_reference(
    reference: str, variants: list[str]
) -> None:
    expected = read_frames(real_file(reference)).pixels[0]
    for name in variants:
        np.testing.assert_allclose(
            read_frames(real_file(name)).pixels[0], expected, atol=2.5 / 255, err_msg=name
        )


@pytest.mark.parametrize(
    ("reference", "lossy"),
    [
        ("US1_UNCR.dcm", "US1_J2KI.dcm"),
        ("SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm"),
        ("SC_rgb.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm"),
    ],
)
def test_read_frames_real_lossy_variant_close_to_reference(reference: str, lossy: str) -> None:
    expected = read_frames(real_file(reference)).pixels[0]
    actual = read_frames(real_file(lossy)).pixels[0]
    assert float(np.abs(actual - expected).mean()) < 0.02


@pytest.mark.parametrize("name", JPEG_LS_FILES)
def test_decode_pixels_real_jpeg_ls_gives_grayscale(name: str) -> None:
    ds = pydicom.dcmread(real_file(name))
    pixels = decode_pixels(ds)
    assert pixels.shape == (1, ds.Rows, ds.Columns)
    assert 0.0 <= float(pixels.min()) < float(pixels.max()) <= 1.0


def test_read_frames_real_palette_regions_calibrated_in_mm() -> None:
    frames = read_frames(real_file("OBXXXX1A.dcm"))
    assert len(frames.regions) == 1
    region = frames.regions[0]
    assert (region.x0, region.y0, region.x1, region.y1) == (120, 60, 800, 519)
    assert region.mm_per_pixel_x == pytest.approx(0.2623, abs=1e-4)


def test_read_frames_real_aloka_laterality_right() -> None:
    assert read_frames(real_file("gdcm-US-ALOKA-16.dcm")).laterality == "R"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("liver.dcm", "derived_object"),
        ("JPEG2000.dcm", "not_ultrasound"),  # NM secondary capture
        ("CT_small.dcm", "not_ultrasound"),
        ("JPEGLSNearLossless_08.dcm", "missing_uid"),
    ],
)
def test_read_frames_real_unsupported_raises_reason(name: str, reason: str) -> None:
    with pytest.raises(UnsupportedObjectError, match=reason) as info:
        read_frames(real_file(name))
    assert info.value.code == reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"Manufacturer": "WeCare"}, "our_own_object"),
        ({"SeriesInstanceUID": output_uid("1.2.3", "v1", "seg-series")}, "our_own_object"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.66.4"}, "derived_object"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.34"}, "derived_object"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, "not_ultrasound"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "Modality": "CT"}, "not_ultrasound"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "Modality": "OT"}, None),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.6"}, None),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.3"}, None),
        ({}, None),
    ],
)
def test_skip_reason_header_variants_give_expected_code(
    changes: dict[str, str], reason: str | None
) -> None:
    ds = make_us_dataset()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    assert skip_code(ds) == reason
    assert reason is None or reason in SKIP_REASONS
    assert is_our_object(ds) == (reason in ("our_own_object", "derived_object"))


def test_read_frames_no_pixel_data_raises(tmp_path: Path) -> None:
    ds = make_us_dataset()
    del ds.PixelData
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    with pytest.raises(UnsupportedObjectError, match="no_pixel_data"):
        read_frames(tmp_path / "x.dcm")


def test_read_frames_corrupt_jpeg_raises_undecodable(tmp_path: Path) -> None:
    path = make_us_image(tmp_path / "j.dcm", transfer_syntax="rle")
    ds = pydicom.dcmread(path)
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\x00" * 64])
    ds.save_as(path)
    with pytest.raises(UnsupportedObjectError, match="undecodable"):
        read_frames(path)


def test_read_frames_not_dicom_raises_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"hello" * 100)
    with pytest.raises(UnsupportedObjectError, match="unreadable"):
        read_frames(path)


@pytest.mark.parametrize("name", ["OBXXXX1A.dcm", "US1_UNCR.dcm"])
def test_read_header_real_file_has_no_pixels(name: str) -> None:
    ds = read_header(real_file(name))
    assert "PixelData" not in ds and ds.Rows > 0


def test_unsupported_object_error_message_has_no_patient_data(tmp_path: Path) -> None:
    path = make_us_image(tmp_path / "x.dcm", sop_class_uid="1.2.840.10008.5.1.4.1.1.2")
    with pytest.raises(UnsupportedObjectError) as info:
        read_frames(path)
    message = str(info.value)
    assert not any(value.split("^")[0] in message for value in CANARY.values())
    assert pydicom.dcmread(path).SOPInstanceUID not in message


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({}, (10, 10, 310, 246, 0.1, 0.1)),
        ({"PhysicalDeltaY": -0.01}, (10, 10, 310, 246, 0.1, 0.1)),
        ({"PhysicalUnitsXDirection": 0}, (10, 10, 310, 246, None, None)),
        ({"PhysicalDeltaX": 0.0}, (10, 10, 310, 246, None, None)),
        ({"RegionLocationMaxX1": 5000}, (10, 10, 320, 246, 0.1, 0.1)),
    ],
)
def test_parse_regions_item_variants_give_box_and_mm(item: dict, expected: tuple) -> None:
    ds = make_us_dataset()
    for keyword, value in item.items():
        setattr(ds.SequenceOfUltrasoundRegions[0], keyword, value)
    (region,) = parse_regions(ds)
    got = (region.x0, region.y0, region.x1, region.y1, region.mm_per_pixel_x, region.mm_per_pixel_y)
    assert got[:4] == expected[:4]
    for value, want in zip(got[4:], expected[4:], strict=True):
        assert value == (None if want is None else pytest.approx(want))


def test_tissue_regions_skips_non_2d_and_flow_regions() -> None:
    ds = make_us_dataset()
    tissue = ds.SequenceOfUltrasoundRegions[0]
    mmode = copy.deepcopy(tissue)
    mmode.RegionSpatialFormat = 2
    flow = copy.deepcopy(tissue)
    flow.RegionDataType = 2
    ds.SequenceOfUltrasoundRegions = [mmode, tissue, flow]
    assert len(parse_regions(ds)) == 3
    assert [r.spatial_format for r in tissue_regions(ds)] == [1]


@pytest.mark.parametrize(
    ("regions", "expected"),
    [
        ((), (0, 0, 320, 256)),
        ((UltrasoundRegion(10, 20, 300, 240, 1, 0.1, 0.1),), (10, 20, 300, 240)),
        (
            (
                UltrasoundRegion(0, 0, 150, 256, 1, None, None),
                UltrasoundRegion(160, 0, 320, 256, 1, None, None),
            ),
            (160, 0, 320, 256),
        ),
        ((UltrasoundRegion(0, 0, 320, 50, 2, None, None),), (0, 0, 320, 256)),
        ((UltrasoundRegion(10, 20, 400, 300, 1, None, None),), (10, 20, 320, 256)),
    ],
)
def test_crop_box_regions_give_bmode_box(regions: tuple, expected: tuple) -> None:
    assert crop_box(regions, (256, 320)) == expected


def test_bmode_region_none_without_2d_region() -> None:
    assert bmode_region((UltrasoundRegion(0, 0, 10, 10, 3, None, None),), (256, 320)) is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"x0": 5, "x1": 5}, ValueError),
        ({"x0": -1}, ValueError),
        ({"mm_per_pixel_x": 0.0}, ValueError),
        ({"mm_per_pixel_y": None}, ValueError),
        ({"x0": 1.5}, TypeError),
    ],
)
def test_ultrasound_region_invalid_values_raise(kwargs: dict, error: type) -> None:
    values = dict(
        x0=0, y0=0, x1=10, y1=10, spatial_format=1, mm_per_pixel_x=0.1, mm_per_pixel_y=0.1
    )
    values.update(kwargs)
    with pytest.raises(error):
        UltrasoundRegion(**values)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pixels": np.zeros((4, 4), np.float32)}, "float32"),
        ({"pixels": np.zeros((1, 4, 4), np.float64)}, "float32"),
        ({"frame_numbers": (1, 2)}, "one number per frame"),
        ({"frame_numbers": (0,)}, "1-based"),
        ({"laterality": "B"}, "laterality"),
        ({"sop_instance_uid": ""}, "sop_instance_uid"),
    ],
)
def test_frames_invalid_values_raise(kwargs: dict, match: str) -> None:
    values = dict(
        study_instance_uid="1.2",
        series_instance_uid="1.3",
        sop_instance_uid="1.4",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1",
        pixels=np.zeros((1, 4, 4), np.float32),
        frame_numbers=(1,),
        regions=(),
        laterality=None,
    )
    values.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Frames(**values)


@pytest.mark.parametrize(
    ("sop_class_uid", "reason"),
    [
        ("1.2.840.10008.5.1.4.1.1.7.1", "not_ultrasound"),  # multi-frame single bit SC
        ("1.2.840.10008.5.1.4.1.1.7.2", None),
        ("1.2.840.10008.5.1.4.1.1.7.3", None),
        ("1.2.840.10008.5.1.4.1.1.7.4", None),
    ],
)
def test_skip_reason_multiframe_secondary_capture_variants(
    sop_class_uid: str, reason: str | None
) -> None:
    ds = make_us_dataset(frames=2, sop_class_uid=sop_class_uid)
    assert skip_code(ds) == reason


def test_dicom_io_imports_no_torch_database_or_network() -> None:
    import subprocess
    import sys

    code = (
        "import sys, dicom_io, dicom_io.read, dicom_io.seg, dicom_io.sr, dicom_io.measure;"
        "bad = [m for m in ('torch', 'monai', 'sqlalchemy', 'pynetdicom', 'fastapi',"
        " 'service', 'storage', 'inference') if m in sys.modules];"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    assert result.stdout.strip() == ""


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"frames": 3},
        {"photometric": "RGB"},
        {"photometric": "PALETTE COLOR"},
        {"regions": False, "laterality": None},
    ],
    ids=["default", "multiframe", "rgb", "palette", "plain"],
)
def test_make_us_image_variants_pass_dciodvfy(tmp_path: Path, kwargs: dict) -> None:
    from tests.dciodvfy import dciodvfy_available, run_dciodvfy

    require_or_skip(dciodvfy_available(), "dciodvfy not installed")
    errors, warnings = run_dciodvfy(make_us_image(tmp_path / "us.dcm", **kwargs))
    assert errors == []
    # Unknown laterality of a breast image: dciodvfy reminds that empty means unknown.
    assert all("Laterality(0020,0060)> - is only permitted to be empty" in w for w in warnings)
    assert len(warnings) == (1 if kwargs.get("laterality", "L") is None else 0)


def _with_unknown_vr_elements(path: Path) -> Path:
    """Insert elements with a VR pydicom does not know ("XX"), as some scanners write: one
    private, one public (Station Name), right before Patient's Name."""
    import struct

    def element(group: int, number: int, vr: bytes, value: bytes) -> bytes:
        return struct.pack("<HH2sH", group, number, vr, len(value)) + value

    extra = (
        element(0x0008, 0x1010, b"XX", b"STATION1")
        + element(0x0009, 0x0010, b"LO", b"ACME")
        + element(0x0009, 0x1001, b"XX", b"\x01\x02\x03\x04")
    )
    raw = path.read_bytes()
    at = raw.find(struct.pack("<HH", 0x0010, 0x0010) + b"PN")
    assert at > 0
    path.write_bytes(raw[:at] + extra + raw[at:])
    return path


@pytest.mark.parametrize("bits, stored, signed", [(8, 8, 0), (16, 12, 0), (16, 12, 1)])
def test_read_jpeg_ls_unknown_vr_elements_read_and_decoded_as_pydicom(
    tmp_path: Path, bits: int, stored: int, signed: int
) -> None:
    from dicom_io.read import iter_frames, read_info
    from tests.factories import write_dataset

    # Issue 28: a JPEG-LS Lossless 768x1024 MONOCHROME2 US image that pydicom reads and
    # decodes was refused as "unreadable (NotImplementedError)": an element of unknown VR.
    ds = make_us_dataset(rows=768, columns=1024, bits=bits)
    if bits == 16:
        values = np.frombuffer(ds.PixelData, "<u2") >> (16 - stored)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = stored, stored - 1, signed
        if signed:
            values = (values.astype(np.int32) - (1 << (stored - 1))).astype("<i2")
        ds.PixelData = values.astype("<u2" if not signed else "<i2").tobytes()
    path = _with_unknown_vr_elements(write_dataset(ds, tmp_path / "jls.dcm", "jpeg-ls"))
    expected = pydicom.dcmread(path).pixel_array.astype(np.float64)

    info = read_info(path)
    pixels = np.concatenate([batch for _, batch in iter_frames(path)])
    header = read_header(path)

    assert (info.rows, info.columns, info.number_of_frames) == (768, 1024, 1)
    offset = (1 << (stored - 1)) if signed else 0
    np.testing.assert_allclose(pixels[0], (expected + offset) / ((1 << stored) - 1), atol=1e-6)
    assert (header["StationName"].VR, header.StationName) == ("SH", "STATION1")
    assert (header[0x00091001].VR, header[0x00091001].value) == ("UN", b"\x01\x02\x03\x04")
    header.save_as(tmp_path / "copy.dcm")  # SEG/SR building copies it: writable as read
