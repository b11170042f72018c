"""Objects we store but do not analyse: a stable code and a reason people can read.

`skip_reason` is what the receiver stores in `Instance.skip_reason` (and the dashboard
shows); it must say what the object is and why it is left alone, with no patient data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_io.errors import SKIP_REASONS, UnsupportedObjectError
from dicom_io.read import read_frames, read_info, skip_code, skip_reason
from dicom_io.seg import AlgorithmInfo, build_seg
from dicom_io.sr import StudyClassification, build_sr
from tests.dicom_io.conftest import real_file
from tests.factories import CANARY, lesion_mask, make_us_dataset, write_dataset

ALGORITHM = AlgorithmInfo("WeCare test", "test 2026-11-23 00000000")


def _pdf() -> Dataset:
    ds = make_us_dataset()
    for keyword in list(ds.dir()):
        if keyword.startswith(("Rows", "Columns", "Pixel", "Bits", "HighBit", "Samples")):
            delattr(ds, keyword)
    del ds.PhotometricInterpretation, ds.SequenceOfUltrasoundRegions
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%CANARY-PID-0042\n"
    return ds


def _case(name: str) -> Dataset:
    import pydicom

    if name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "JPEGLSNearLossless_08.dcm"):
        return pydicom.dcmread(real_file(name))
    source = make_us_dataset()
    if name == "our SEG":
        return build_seg([source], [lesion_mask()[np.newaxis]], [[1]], ALGORITHM, 990)
    if name == "our SR":
        normal = StudyClassification("normal", {"normal": 0.9, "benign": 0.05, "malignant": 0.05})
        return build_sr([source], [], normal, [], ALGORITHM, 991)
    if name == "other SEG":
        seg = build_seg([source], [lesion_mask()[np.newaxis]], [[1]], ALGORITHM, 990)
        seg.Manufacturer = "Other AI"
        seg.SeriesInstanceUID = seg.SOPInstanceUID = "1.2.826.0.1.3680043.10.999.1"
        return seg
    if name == "US from WeCare":
        source.Manufacturer = "WeCare"
        return source
    if name == "Encapsulated PDF":
        return _pdf()
    if name == "SC of a CT":
        source.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        source.Modality = "CT"
        return source
    if name == "presentation state":
        source.SOPClassUID = "1.2.840.10008.5.1.4.1.1.11.1"
        return source
    raise ValueError(name)


CASES = [
    ("CT_small.dcm", "not_ultrasound", "CT Image Storage"),
    ("MR_small.dcm", "not_ultrasound", "MR Image Storage"),
    ("JPEG2000.dcm", "not_ultrasound", "Modality NM"),
    ("SC of a CT", "not_ultrasound", "Modality CT"),
    ("Encapsulated PDF", "not_ultrasound", "Encapsulated PDF Storage"),
    ("our SEG", "our_own_object", "Segmentation Storage"),
    ("our SR", "our_own_object", "Comprehensive 3D SR Storage"),
    ("US from WeCare", "our_own_object", "created by WeCare"),
    ("other SEG", "derived_object", "Segmentation Storage"),
    ("presentation state", "derived_object", "Grayscale Softcopy Presentation State"),
    ("JPEGLSNearLossless_08.dcm", "missing_uid", "without Study, Series or SOP Instance UID"),
]


@pytest.mark.parametrize(("name", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_skip_reason_says_what_and_why_in_plain_words(name: str, code: str, words: str) -> None:
    ds = _case(name)
    assert skip_code(ds) == code and code in SKIP_REASONS
    reason = skip_reason(ds)
    assert reason is not None
    assert reason.startswith(f"{code}: ") and words in reason
    assert reason.endswith("stored, not analysed")
    for value in CANARY.values():
        assert value.split("^")[0] not in reason
    assert "CANARY" not in reason


@pytest.mark.parametrize(("name", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_unsupported_objects_never_decoded_raise_their_code(
    tmp_path: Path, name: str, code: str, words: str
) -> None:
    path = write_dataset(_case(name), tmp_path / "x.dcm")
    for reader in (read_frames, read_info):
        with pytest.raises(UnsupportedObjectError) as info:
            reader(path)
        assert info.value.code == code
        assert "CANARY" not in str(info.value)


def test_skip_reason_of_processed_ultrasound_is_none() -> None:
    assert skip_reason(make_us_dataset()) is None
    assert skip_code(make_us_dataset(frames=2)) is None


@pytest.mark.parametrize(
    "sop_class",
    [
        "<img src=x onerror=alert(1)>",
        "1.2.3\r\nWARNING forged log line",
        "1." * 5_000 + "1",
        "1.2.840.10008.5.1.4.1.1.2\u202e\u4e2d",
        "1.2.840.10008.5.1.4.1.1.02",
        "1.2.840.10008.5.1.4.1.1.6.1.",
    ],
    ids=["html", "crlf", "10k", "non-ascii", "leading-zero", "trailing-dot"],
)
def test_skip_reason_hostile_sop_class_uid_replaced_by_placeholder(sop_class: str) -> None:
    ds = make_us_dataset()
    ds.SOPClassUID = sop_class

    reason = skip_reason(ds)

    assert reason == (
        "not_ultrasound: an object with an invalid SOP Class UID is not an ultrasound or "
        "secondary capture image; stored, not analysed"
    )


def test_skip_reason_valid_unknown_uid_named_by_its_digits() -> None:
    ds = make_us_dataset()
    ds.SOPClassUID = "1.2.3.4.5"
    assert skip_reason(ds) == (
        "not_ultrasound: SOP class 1.2.3.4.5 is not an ultrasound or secondary capture image; "
        "stored, not analysed"
    )


@pytest.mark.parametrize(
    "modality, shown",
    [("<b>CT</b>", "BCTB"), ("ÉCHO\n", "CHO"), ("中文", "none"), ("MR" * 5000, "MRMRMRMRMRMRMRMR")],
)
def test_skip_reason_hostile_modality_only_ascii_code_string(modality: str, shown: str) -> None:
    ds = make_us_dataset(sop_class_uid="1.2.840.10008.5.1.4.1.1.7")
    ds.Modality = modality

    reason = skip_reason(ds)

    assert reason == (
        f"not_ultrasound: Secondary Capture Image Storage with Modality {shown} is not an "
        "ultrasound screen capture; stored, not analysed"
    )


def test_unsupported_photometric_hostile_text_not_in_error(tmp_path: Path) -> None:
    ds = make_us_dataset()
    ds.PhotometricInterpretation = "<script>\nÉ"
    path = write_dataset(ds, tmp_path / "x.dcm")

    with pytest.raises(UnsupportedObjectError) as caught:
        read_info(path)

    assert caught.value.code == "unsupported_pixel_format"
    assert caught.value.detail == "SCRIPT"
