"""Tests of dicom_io.headers: real-world Patient/Study/Equipment values in SEG and SR.

Each quirk is planted in a synthetic US image that is written to a file and read back
the way the pipeline reads it; the SEG and SR built from it must round-trip through
bytes, pass dciodvfy with 0 errors, and the keyword left out must be recorded (in
``CopiedAttributes.notes`` and a warning naming the keyword, never the value).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_io.headers import (
    COPIED_KEYWORDS,
    copied_attributes,
    reference_header,
    source_header,
)
from dicom_io.seg import build_seg
from dicom_io.sr import LesionFinding, StudyClassification, build_sr
from tests.dciodvfy import needs_dciodvfy, validate_dataset
from tests.dicom_io.test_seg import ALGORITHM, roundtrip
from tests.factories import lesion_mask, make_us_dataset, write_dataset

MALIGNANT = StudyClassification("malignant", {"normal": 0.05, "benign": 0.25, "malignant": 0.7})


def _raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> None:
    # A value pydicom cannot convert must reach the file as is: plant the raw bytes.
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def _code_item(value: str, scheme: str, meaning: str | None) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = value, scheme
    if meaning is not None:
        item.CodeMeaning = meaning
    return item


def _species(ds: Dataset) -> None:
    ds.PatientSpeciesDescription = "Canis lupus familiaris"


def _non_ascii(ds: Dataset) -> None:
    del ds.SpecificCharacterSet
    _raw(ds, "PatientName", "PN", b"M\xfcller^Quirkina")


def _unknown_charset(ds: Dataset) -> None:
    ds.SpecificCharacterSet = "ISO_IR 999"
    _raw(ds, "PatientName", "PN", b"M\xfcller^Quirkina")


def _code_without_meaning(ds: Dataset) -> None:
    ds.ProcedureCodeSequence = [_code_item("Y3400", "SRT", None)]


def _charset_iso_ir_6(ds: Dataset) -> None:
    ds.SpecificCharacterSet = "ISO_IR 6"  # not a Defined Term (the default is no value)
    _raw(ds, "PatientName", "PN", b"M\xfcller^Quirkina")


def _clinical_trial_partial(ds: Dataset) -> None:
    ds.ClinicalTrialSponsorName = "Quirk Sponsor"  # Protocol ID, Subject ID missing (Type 1)


# id -> (plant the quirk, keyword that must be recorded or None, planted text that must
# appear in no log record; None when the value is not distinctive)
QUIRKS: dict[str, tuple[Callable[[Dataset], None], str | None, str | None]] = {
    "sex_lower_case": (lambda ds: setattr(ds, "PatientSex", "f"), "PatientSex", None),
    "sex_unknown_u": (lambda ds: setattr(ds, "PatientSex", "U"), "PatientSex", None),
    "sex_word": (lambda ds: setattr(ds, "PatientSex", "FEMALE"), "PatientSex", "FEMALE"),
    "sex_two_values": (lambda ds: setattr(ds, "PatientSex", ["F", "M"]), "PatientSex", None),
    "identity_removed_without_method": (
        lambda ds: setattr(ds, "PatientIdentityRemoved", "YES"),
        "DeidentificationMethod",
        None,
    ),
    "empty_procedure_code_sequence": (
        lambda ds: setattr(ds, "ProcedureCodeSequence", []),
        "ProcedureCodeSequence",
        None,
    ),
    "procedure_code_without_meaning": (_code_without_meaning, "ProcedureCodeSequence", None),
    "species_without_breed": (_species, "PatientBreedDescription", None),
    "birth_date_not_a_day": (
        lambda ds: setattr(ds, "PatientBirthDate", "19700231"),
        "PatientBirthDate",
        "19700231",
    ),
    "birth_date_unknown": (
        lambda ds: _raw(ds, "PatientBirthDate", "DA", b"unknown "),
        "PatientBirthDate",
        "unknown",
    ),
    "birth_time_bad": (
        lambda ds: _raw(ds, "PatientBirthTime", "TM", b"25:99 "),
        "PatientBirthTime",
        "25:99",
    ),
    "age_without_unit": (lambda ds: setattr(ds, "PatientAge", "45"), "PatientAge", None),
    "weight_not_a_number": (
        lambda ds: _raw(ds, "PatientWeight", "DS", b"heavy "),
        "PatientWeight",
        "heavy",
    ),
    "patient_id_too_long": (
        lambda ds: setattr(ds, "PatientID", "QUIRKID" + "9" * 70),
        "PatientID",
        "QUIRKID",
    ),
    "study_id_too_long": (
        lambda ds: setattr(ds, "StudyID", "QUIRKSTUDY123456789"),
        "StudyID",
        "QUIRKSTUDY",
    ),
    "accession_too_long": (
        lambda ds: setattr(ds, "AccessionNumber", "QUIRKACC123456789"),
        "AccessionNumber",
        "QUIRKACC",
    ),
    "study_description_control_character": (
        lambda ds: setattr(ds, "StudyDescription", "Quirk\x01Breast"),
        "StudyDescription",
        "Quirk",
    ),
    "non_ascii_without_charset": (_non_ascii, "PatientName", "Quirkina"),
    "unknown_charset": (_unknown_charset, "SpecificCharacterSet", "Quirkina"),
    "charset_iso_ir_6": (_charset_iso_ir_6, "SpecificCharacterSet", "Quirkina"),
    "referring_physician_four_groups": (
        lambda ds: setattr(ds, "ReferringPhysicianName", "Quirkdoc=b=c=d"),
        "ReferringPhysicianName",
        "Quirkdoc",
    ),
    "referring_physician_six_components": (
        lambda ds: setattr(ds, "ReferringPhysicianName", "Quirkdoc^b^c^d^e^f"),
        "ReferringPhysicianName",
        "Quirkdoc",
    ),
    "institution_name_too_long": (
        lambda ds: setattr(ds, "InstitutionName", "Quirk Hospital " + "x" * 60),
        "InstitutionName",
        "Quirk Hospital",
    ),
    "clinical_trial_partial": (_clinical_trial_partial, "ClinicalTrialSponsorName", None),
    "laterality_lower_case": (lambda ds: setattr(ds, "ImageLaterality", "l"), None, None),
}


def _quirky_source(tmp_path: Path, quirk: str) -> Dataset:
    """A US image with the quirk, written to a file and read back as the pipeline does."""
    ds = make_us_dataset()
    ds.PatientName = "Canary^Quirk"
    plant, _, _ = QUIRKS[quirk]
    plant(ds)
    path = write_dataset(ds, tmp_path / "source.dcm")
    return pydicom.dcmread(path, stop_before_pixels=True)


def _build(source: Dataset) -> tuple[Dataset, Dataset]:
    mask = lesion_mask()
    seg = build_seg([source], [mask[np.newaxis]], [[1]], ALGORITHM, 990)
    finding = LesionFinding(str(source.SOPInstanceUID), None, 20.0, 6.0, 4.0, int(mask.sum()))
    sr = build_sr([source], [seg], MALIGNANT, [finding], ALGORITHM, 991)
    return roundtrip(seg), roundtrip(sr)


def _logged_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        record.getMessage()
        + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        for record in caplog.records
    )


@needs_dciodvfy
@pytest.mark.parametrize("quirk", sorted(QUIRKS))
def test_build_seg_and_sr_source_quirk_passes_dciodvfy_and_is_recorded(
    quirk: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _quirky_source(tmp_path, quirk)
    _, keyword, planted = QUIRKS[quirk]
    with caplog.at_level(logging.WARNING, logger="dicom_io"):
        seg, sr = _build(source)
    for output in (seg, sr):
        errors, _ = validate_dataset(output)
        assert errors == [], (output.Modality, errors)
    if keyword is not None:
        assert keyword in copied_attributes(source).notes
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith("dicom_io") and r.levelno >= logging.WARNING
        ]
        assert any(keyword in message for message in warnings), warnings
    if planted is not None:
        assert planted not in _logged_text(caplog)


@pytest.mark.parametrize(
    ("value", "expected"), [("f", "F"), ("m", "M"), (" O", "O"), ("U", ""), ("FEMALE", "")]
)
def test_copied_attributes_patient_sex_mapped_case_insensitively(
    value: str, expected: str, tmp_path: Path
) -> None:
    ds = make_us_dataset()
    ds.PatientSex = value
    source = pydicom.dcmread(write_dataset(ds, tmp_path / "s.dcm"), stop_before_pixels=True)
    seg, sr = _build(source)
    assert seg.PatientSex == sr.PatientSex == expected
    assert copied_attributes(source).dataset.PatientSex == expected


def test_copied_attributes_valid_source_copied_unchanged_without_notes(tmp_path: Path) -> None:
    ds = make_us_dataset()
    ds.PatientName = "Canary^Quirk"
    ds.PatientID = "ID-123"
    ds.PatientBirthDate = "19700228"
    ds.PatientAge = "056Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Basic Profile"
    ds.ProcedureCodeSequence = [_code_item("Y3400", "SRT", "Ultrasound of breast")]
    ds.InstitutionName = "Quirk Hospital"
    source = pydicom.dcmread(write_dataset(ds, tmp_path / "s.dcm"), stop_before_pixels=True)
    copied = copied_attributes(source)
    assert copied.notes == {}
    seg, sr = _build(source)
    for output in (seg, sr):
        assert str(output.PatientName) == "Canary^Quirk"
        assert (output.PatientID, output.PatientBirthDate) == ("ID-123", "19700228")
        assert (output.PatientAge, output.PatientSex) == ("056Y", "F")
        assert output.DeidentificationMethod == "Basic Profile"
        assert output.ProcedureCodeSequence[0].CodeMeaning == "Ultrasound of breast"


def test_copied_attributes_identity_removed_without_method_says_unknown(tmp_path: Path) -> None:
    ds = make_us_dataset()
    ds.PatientIdentityRemoved = "YES"
    source = pydicom.dcmread(write_dataset(ds, tmp_path / "s.dcm"), stop_before_pixels=True)
    seg, sr = _build(source)
    for output in (seg, sr):
        assert output.PatientIdentityRemoved == "YES"
        assert "unknown" in output.DeidentificationMethod.lower()


def test_copied_attributes_caller_dataset_not_modified(tmp_path: Path) -> None:
    source = _quirky_source(tmp_path, "sex_lower_case")
    before = io.BytesIO()
    source.save_as(before)
    copied_attributes(source)
    _build(source)
    after = io.BytesIO()
    source.save_as(after)
    assert before.getvalue() == after.getvalue()


def test_copied_attributes_non_ascii_with_charset_kept(tmp_path: Path) -> None:
    ds = make_us_dataset()  # ISO_IR 100
    ds.PatientName = "Müller^Anna"
    source = pydicom.dcmread(write_dataset(ds, tmp_path / "s.dcm"), stop_before_pixels=True)
    assert copied_attributes(source).notes == {}
    seg, sr = _build(source)
    for output in (seg, sr):
        assert (str(output.PatientName), output.SpecificCharacterSet) == (
            "Müller^Anna",
            "ISO_IR 100",
        )


@pytest.mark.parametrize(
    "sop_class_uid",
    ["1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.5.1.4.1.1.7"],
)
def test_copied_keywords_cover_what_highdicom_copies(sop_class_uid: str) -> None:
    from highdicom._standard_utils import (  # pinned highdicom 0.28.2
        get_iod_module_map,
        get_module_attribute_map,
        get_sop_class_iod_map,
    )

    iod = get_sop_class_iod_map()[sop_class_uid]
    modules = [m["key"] for m in get_iod_module_map()[iod] if m["ie"] in ("Patient", "Study")]
    attributes = get_module_attribute_map()
    copied = {str(a["keyword"]) for module in modules for a in attributes[module] if not a["path"]}
    assert copied - {"StudyInstanceUID"} <= COPIED_KEYWORDS


_REFERENCE_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "Rows", "Columns", "NumberOfFrames", "ImageLaterality", "Laterality", "SeriesDate",
    "FrameOfReferenceUID", "PixelSpacing", "SliceThickness",
)  # fmt: skip


@pytest.mark.parametrize(
    "change",
    ["none", "retired_class", "no_modality", "multiframe", "invalid_value", "old_date"],
)
def test_reference_header_equals_source_header_restricted(tmp_path: Path, change: str) -> None:
    ds = make_us_dataset(frames=3 if change == "multiframe" else 1, laterality=None)
    if change == "retired_class":
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6"
    elif change == "no_modality":
        del ds.Modality
    elif change == "invalid_value":
        _raw(ds, "SliceThickness", "DS", b"thick ")  # kept as read, as source_header keeps it
    elif change == "old_date":
        ds.SeriesDate = "2026.11.23"
    header = pydicom.dcmread(write_dataset(ds, tmp_path / "s.dcm"), stop_before_pixels=True)
    full, _ = source_header(header)
    reference = reference_header(header, _REFERENCE_KEYWORDS)
    expected = {keyword: full[keyword].value for keyword in _REFERENCE_KEYWORDS if keyword in full}
    assert {element.keyword: element.value for element in reference} == expected


def test_reference_header_refuses_copied_keywords() -> None:
    with pytest.raises(ValueError, match="no Patient/Study/Equipment"):
        reference_header(make_us_dataset(), ["SOPInstanceUID", "PatientName"])
