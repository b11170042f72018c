"""Tests of dicom_io.corrected: the radiologist's corrected SEG and review SR."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_io import codes
from dicom_io.corrected import (
    CORRECTED_SEG_SERIES_DESCRIPTION,
    REVIEW_SR_SERIES_DESCRIPTION,
    build_corrected_seg,
    build_review_sr,
)
from dicom_io.errors import EmptySegmentationError
from dicom_io.read import read_header
from dicom_io.seg import AlgorithmInfo, build_seg, seg_frame_mask
from dicom_io.sr import LesionFinding, ReviewRecord, StudyClassification, build_sr
from tests.dciodvfy import needs_dciodvfy, validate_dataset
from tests.dicom_io.conftest import real_file
from tests.dicom_io.test_seg import assert_only_inherited
from tests.factories import lesion_mask, make_us_dataset

ALGORITHM = AlgorithmInfo("wecare-multitask", "wecare-multitask 2026-11-23 ab12cd34")
CLASSIFICATION = StudyClassification(
    "malignant", {"normal": 0.1, "benign": 0.2, "malignant": 0.7}
)


def roundtrip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def ai_outputs(source: Dataset, frames: list[int]) -> tuple[Dataset, Dataset]:
    """The model's SEG (ellipse on `frames`) and SR of `source`, as the pipeline makes them."""
    masks = np.repeat(lesion_mask()[np.newaxis], len(frames), axis=0)
    seg = build_seg([source], [masks], [frames], ALGORITHM, 990)
    multi = int(source.get("NumberOfFrames", 1) or 1) > 1
    finding = LesionFinding(str(source.SOPInstanceUID), frames[0] if multi else None,
                            10.0, 4.0, 3.0, int(masks[0].sum()))
    sr = build_sr([source], [seg], CLASSIFICATION, [finding], ALGORITHM, 991)
    return seg, sr


def edited_mask() -> np.ndarray:
    mask = np.zeros((256, 320), dtype=bool)
    mask[100:150, 120:200] = True
    return mask


def sr_items(sr: Dataset) -> list[Dataset]:
    found, stack = [], list(sr.ContentSequence)
    while stack:
        item = stack.pop(0)
        found.append(item)
        stack[0:0] = list(item.get("ContentSequence", []))
    return found


def code_values(items: list[Dataset], name: object) -> list[str]:
    return [
        str(i.ConceptCodeSequence[0].CodeValue)
        for i in items
        if i.ValueType == "CODE"
        and i.ConceptNameCodeSequence[0].CodeValue == name.value  # type: ignore[attr-defined]
    ]


@pytest.mark.parametrize("from_ai", [True, False], ids=["semiautomatic", "manual"])
def test_corrected_seg_new_series_reviewer_type_and_ai_seg_reference(from_ai: bool) -> None:
    source = make_us_dataset()
    ai_seg, _ = ai_outputs(source, [1])
    seg = roundtrip(
        build_corrected_seg(source, edited_mask()[np.newaxis], [1], ALGORITHM, reviewer="rhea",
                            from_ai=from_ai, ai_seg=ai_seg, uid_source="key-1",
                            series_number=992)
    )
    segment = seg.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == ("SEMIAUTOMATIC" if from_ai else "MANUAL")
    assert ("SegmentAlgorithmName" in segment) is from_ai
    assert str(seg.ContentCreatorName) == "rhea^"
    assert seg.SeriesDescription == CORRECTED_SEG_SERIES_DESCRIPTION
    assert seg.SeriesInstanceUID != ai_seg.SeriesInstanceUID
    assert seg.SOPInstanceUID != ai_seg.SOPInstanceUID
    assert seg.FrameOfReferenceUID != ai_seg.FrameOfReferenceUID
    # Source series first (the one viewers overlay), then the AI SEG's series.
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [
        source.SeriesInstanceUID,
        ai_seg.SeriesInstanceUID,
    ]
    assert [r.ReferencedSOPInstanceUID for r in seg.SourceImageSequence] == [
        source.SOPInstanceUID,
        ai_seg.SOPInstanceUID,
    ]
    np.testing.assert_array_equal(seg_frame_mask(seg, source.SOPInstanceUID), edited_mask())
    parsed = hd.seg.Segmentation.from_dataset(seg)
    pixels = parsed.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), edited_mask())


def test_corrected_seg_uids_follow_the_review_key() -> None:
    source = make_us_dataset()
    ai_seg, _ = ai_outputs(source, [1])

    def made(key: str) -> Dataset:
        return build_corrected_seg(source, edited_mask()[np.newaxis], [1], ALGORITHM,
                                   reviewer="rhea", from_ai=True, ai_seg=ai_seg,
                                   uid_source=key, series_number=992)

    first, again, other = made("key-1"), made("key-1"), made("key-2")
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (
        again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID != other.SOPInstanceUID
    assert first.SeriesInstanceUID != other.SeriesInstanceUID


def test_corrected_seg_cine_holds_only_the_reviewed_frames() -> None:
    source = make_us_dataset(frames=6, lesion_frames=[0, 1])
    ai_seg, _ = ai_outputs(source, [1, 2])
    seg = roundtrip(build_corrected_seg(
        source, np.stack([edited_mask(), np.zeros((256, 320), bool)]), [4, 2], ALGORITHM,
        reviewer="rhea", from_ai=True, ai_seg=ai_seg, uid_source="cine", series_number=992,
    ))
    assert int(seg.NumberOfFrames) == 1
    np.testing.assert_array_equal(seg_frame_mask(seg, source.SOPInstanceUID, 4), edited_mask())
    for frame in (1, 2, 3, 5, 6):
        assert seg_frame_mask(seg, source.SOPInstanceUID, frame) is None


def test_corrected_seg_with_no_lesion_is_not_built() -> None:
    source = make_us_dataset()
    with pytest.raises(EmptySegmentationError):
        build_corrected_seg(source, np.zeros((1, 256, 320), bool), [1], ALGORITHM,
                            reviewer="rhea", from_ai=True, ai_seg=None, uid_source="k",
                            series_number=992)


def test_corrected_seg_source_with_patient_geometry_and_ai_seg_on_its_frame_of_reference() -> None:
    # The AI SEG then shares the source's Frame of Reference: it is referenced, not matched.
    source = make_us_dataset(frame_of_reference=True)
    source.ImagePositionPatient = [10.0, 20.0, 30.0]
    source.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    source.PixelSpacing = [0.2, 0.2]
    source.SliceThickness = 2.0
    ai_seg, _ = ai_outputs(source, [1])
    assert ai_seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    seg = build_corrected_seg(source, edited_mask()[np.newaxis], [1], ALGORITHM,
                              reviewer="rhea", from_ai=True, ai_seg=ai_seg, uid_source="k",
                              series_number=992)
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ai_seg.SOPInstanceUID in {r.ReferencedSOPInstanceUID for r in seg.SourceImageSequence}


@needs_dciodvfy
@pytest.mark.parametrize("frames", [1, 5], ids=["single", "cine"])
@pytest.mark.parametrize("from_ai", [True, False], ids=["semiautomatic", "manual"])
def test_corrected_seg_and_review_sr_pass_dciodvfy(frames: int, from_ai: bool) -> None:
    source = make_us_dataset(frames=frames)
    ai_seg, ai_sr = ai_outputs(source, [1])
    number = 3 if frames > 1 else 1
    seg = build_corrected_seg(source, edited_mask()[np.newaxis], [number], ALGORITHM,
                              reviewer="rhea", from_ai=from_ai, ai_seg=ai_seg,
                              uid_source="k", series_number=992)
    errors, warnings = validate_dataset(seg)
    assert errors == [] and warnings == []
    finding = LesionFinding(str(source.SOPInstanceUID), number if frames > 1 else None,
                            40.0, 8.0, 5.0, int(edited_mask().sum()))
    sr = build_review_sr(source, seg, CLASSIFICATION, [finding], ALGORITHM,
                         ReviewRecord("rhea", "corrected" if from_ai else "drawn", "benign"),
                         ai_sr=ai_sr, uid_source="k", series_number=993)
    errors, _ = validate_dataset(sr)
    assert errors == []


@needs_dciodvfy
@pytest.mark.parametrize(
    "name, frame", [("US1_UNCR.dcm", 1), ("examples_ybr_color.dcm", 7),
                    ("data/ultrasounds/ultrasound-multiframe.dcm", 30)],
)
def test_corrected_seg_real_sources_only_inherited_findings(name: str, frame: int) -> None:
    source = read_header(real_file(name))
    rows, columns = int(source.Rows), int(source.Columns)
    ai_mask = lesion_mask(rows, columns, radii=(rows // 8, columns // 8))
    ai_seg = build_seg([source], [ai_mask[np.newaxis]], [[frame]], ALGORITHM, 990)
    edit = lesion_mask(rows, columns, radii=(rows // 6, columns // 7))
    seg = build_corrected_seg(source, edit[np.newaxis], [frame], ALGORITHM, reviewer="rhea",
                              from_ai=True, ai_seg=ai_seg, uid_source="k", series_number=992)
    errors, warnings = validate_dataset(seg)
    assert_only_inherited(source, errors, warnings)
    multi = int(source.get("NumberOfFrames", 1) or 1) > 1
    mask = seg_frame_mask(roundtrip(seg), str(source.SOPInstanceUID), frame if multi else None)
    np.testing.assert_array_equal(mask, edit)


def test_review_sr_reviewer_outcome_class_predecessor_and_own_series() -> None:
    source = make_us_dataset()
    ai_seg, ai_sr = ai_outputs(source, [1])
    seg = build_corrected_seg(source, edited_mask()[np.newaxis], [1], ALGORITHM,
                              reviewer="rhea", from_ai=True, ai_seg=ai_seg, uid_source="k",
                              series_number=992)
    finding = LesionFinding(str(source.SOPInstanceUID), None, 40.0, 8.0, 5.0,
                            int(edited_mask().sum()))
    sr = roundtrip(build_review_sr(source, seg, CLASSIFICATION, [finding], ALGORITHM,
                                   ReviewRecord("rhea", "corrected", "benign"), ai_sr=ai_sr,
                                   uid_source="k", series_number=993, instance_number=2))
    assert sr.SeriesDescription == REVIEW_SR_SERIES_DESCRIPTION
    assert sr.SeriesInstanceUID != ai_sr.SeriesInstanceUID
    assert int(sr.InstanceNumber) == 2
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.SeriesInstanceUID == ai_sr.SeriesInstanceUID
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ai_sr.SOPInstanceUID
    items = sr_items(sr)
    assert [str(i.PersonName) for i in items if i.ValueType == "PNAME"] == ["rhea^"]
    observers = code_values(items, hd.sr.CodedConcept("121005", "DCM", "Observer Type"))
    assert observers == ["121006", "121007"]  # the person, then the measuring device
    assert code_values(items, codes.REVIEW) == [codes.REVIEW_CODES["corrected"].value]
    assert code_values(items, codes.REVIEWER_CLASS) == [codes.CLASS_CODES["benign"].value]
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = parsed.content.get_planar_roi_measurement_groups()
    assert len(groups) == 1
    long_axis = groups[0].get_measurements(name=codes.LONG_AXIS)
    assert [m.value for m in long_axis] == [8.0]


def test_review_sr_of_a_rejection_has_no_lesion_and_no_class_unless_given() -> None:
    source = make_us_dataset()
    _, ai_sr = ai_outputs(source, [1])
    sr = build_review_sr(source, None, CLASSIFICATION, [], ALGORITHM,
                         ReviewRecord("rhea", "rejected"), ai_sr=ai_sr, uid_source="r",
                         series_number=993)
    items = sr_items(sr)
    assert code_values(items, codes.REVIEW) == [codes.REVIEW_CODES["rejected"].value]
    assert code_values(items, codes.REVIEWER_CLASS) == []
    assert code_values(items, codes.LESION_SEGMENTED) == [codes.NO.value]
    assert hd.sr.Comprehensive3DSR.from_dataset(roundtrip(sr)).content is not None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"reviewer": ""}, "reviewer"),
        ({"reviewer": "a^b"}, "reviewer"),
        ({"reviewer": "x" * 65}, "reviewer"),
        ({"outcome": "approved"}, "outcome"),
        ({"label": "suspicious"}, "label"),
    ],
)
def test_review_record_refuses_bad_values(kwargs: dict, match: str) -> None:
    values = {"reviewer": "rhea", "outcome": "accepted", "label": None} | kwargs
    with pytest.raises(ValueError, match=match):
        ReviewRecord(**values)
