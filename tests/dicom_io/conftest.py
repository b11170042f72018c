"""Shared fixtures for dicom_io tests: real test files and strict pydicom settings."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.requirements import require_or_skip

# Every real ultrasound / secondary capture file shipped with pydicom, pydicom-data and
# deid-data, with the property each one exercises.
REAL_FILES: dict[str, str] = {
    # pydicom (test_files)
    "examples_palette.dcm": "US, PALETTE COLOR, US regions",
    "examples_rgb_color.dcm": "US, RGB, no regions",
    "examples_ybr_color.dcm": "US multi-frame (30), JPEG baseline YBR_FULL_422, regions",
    "examples_jpeg2k.dcm": "US, JPEG 2000 lossless YBR_RCT",
    "ExplVR_BigEnd.dcm": "US, RGB, explicit VR big endian",
    # pydicom-data (data_store)
    "US1_UNCR.dcm": "US, RGB",
    "US1_UNCI.dcm": "US, RGB",
    "US1_J2KR.dcm": "US, JPEG 2000 lossless YBR_RCT",
    "US1_J2KI.dcm": "US, JPEG 2000 YBR_ICT",
    "JPGLosslessP14SV1_1s_1f_8b.dcm": "US, JPEG lossless SV1, MONOCHROME2, regions",
    "OBXXXX1A.dcm": "US, PALETTE COLOR, regions",
    "OBXXXX1A_2frame.dcm": "US, PALETTE COLOR, 2 frames",
    "OBXXXX1A_expb.dcm": "US, PALETTE COLOR, big endian",
    "OBXXXX1A_expb_2frame.dcm": "US, PALETTE COLOR, big endian, 2 frames",
    "OBXXXX1A_rle.dcm": "US, PALETTE COLOR, RLE",
    "OBXXXX1A_rle_2frame.dcm": "US multi-frame, PALETTE COLOR, RLE, 2 frames",
    "color-pl.dcm": "retired US Image Storage, RGB planar",
    "color-px.dcm": "retired US Image Storage, RGB",
    "gdcm-US-ALOKA-16.dcm": "US, 16 bit PALETTE COLOR, implicit VR, laterality R",
    "gdcm-US-ALOKA-16_big.dcm": "US, 16 bit PALETTE COLOR, big endian",
    "color3d_jpeg_baseline.dcm": "US multi-frame (120), JPEG baseline YBR_FULL_422",
    "SC_rgb.dcm": "SC, RGB",
    "SC_rgb_16bit_2frame.dcm": "SC, 16 bit RGB, 2 frames",
    "SC_rgb_32bit.dcm": "SC, 32 bit RGB",
    "SC_rgb_rle_2frame.dcm": "SC, RGB RLE, 2 frames",
    "SC_rgb_jpeg_dcmtk.dcm": "SC, JPEG baseline YBR_FULL",
    "SC_rgb_dcmtk_+eb+cy+s2.dcm": "SC, JPEG baseline YBR_FULL_422",
    "SC_rgb_jpeg_gdcm.dcm": "SC, JPEG lossless RGB",
    "SC_rgb_gdcm_KY.dcm": "SC, JPEG 2000 RGB",
    "SC_ybr_full_uncompressed.dcm": "SC, uncompressed YBR_FULL",
    "SC_ybr_full_422_uncompressed.dcm": "SC, uncompressed YBR_FULL_422",
    "image_dfl.dcm": "SC, deflated explicit VR little endian, MONOCHROME2",
    "mlut_18.dcm": "SC, 16 bit MONOCHROME2",
}
# deid-data ultrasound files (paths relative to the deid_data package).
DEID_FILES: dict[str, str] = {
    "data/ultrasounds/GREYSCALE_IMAGE.dcm": "US, MONOCHROME2, regions",
    "data/ultrasounds/RGB_IMAGE.dcm": "US, RGB, regions",
    "data/ultrasounds/ultrasound-multiframe.dcm": "US multi-frame (30), RGB, regions",
}
# Real files with JPEG-LS pixel data but no Study/Series UID: decode-only tests.
JPEG_LS_FILES = [
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jls_lossy_line.dcm",
    "SC_rgb_jls_lossy_sample.dcm",
]


def real_file(name: str) -> Path:
    """Path of a real test file by name (pydicom, pydicom-data, or deid-data relative)."""
    if name in DEID_FILES:
        import deid_data

        return Path(deid_data.__file__).parent / name
    path = get_testdata_file(name)
    require_or_skip(path is not None, f"{name} is not installed (pydicom-data missing?)")
    return Path(path)


@pytest.fixture
def strict_writing():  # type: ignore[no-untyped-def]
    """Invalid values raise when writing (as highdicom's own tests do); reading stays
    tolerant like production, since real files bend the rules."""
    settings = pydicom.config.settings
    old = settings.writing_validation_mode
    settings.writing_validation_mode = pydicom.config.RAISE
    try:
        yield
    finally:
        settings.writing_validation_mode = old
