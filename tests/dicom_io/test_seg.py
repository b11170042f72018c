"""Tests of dicom_io.seg: conformance (dciodvfy), round trip through bytes, geometry."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_io.errors import EmptySegmentationError
from dicom_io.read import is_our_object, read_header, skip_reason
from dicom_io.seg import (
    SEG_SERIES_DESCRIPTION,
    AlgorithmInfo,
    SegmentationInputError,
    build_seg,
    seg_frame_for_source,
    seg_frames_by_source,
)
from dicom_io.uids import WECARE_MANUFACTURER, is_our_uid, output_uid
from tests.dciodvfy import needs_dciodvfy, validate_dataset
from tests.dicom_io.conftest import real_file
from tests.factories import lesion_mask, make_us_dataset

ALGORITHM = AlgorithmInfo("wecare-multitask", "wecare-multitask 2026-11-23 ab12cd34")

# Real sources (headers only: build_seg reads no pixels), with frames given a lesion.
REAL_SOURCES = {
    "OBXXXX1A.dcm": [1],
    "US1_UNCR.dcm": [1],
    "examples_palette.dcm": [1],
    "gdcm-US-ALOKA-16.dcm": [1],
    "JPGLosslessP14SV1_1s_1f_8b.dcm": [1],
    "color-px.dcm": [1],
    "SC_rgb.dcm": [1],
    "examples_ybr_color.dcm": [3, 4, 20],
    "OBXXXX1A_rle_2frame.dcm": [2],
    "data/ultrasounds/GREYSCALE_IMAGE.dcm": [1],
    "data/ultrasounds/ultrasound-multiframe.dcm": [1, 30],
}


# Attributes copied from the source into every derived object (Patient, Study, Equipment
# of the request): dciodvfy findings about them are the source's, not ours.
INHERITED_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientSize",
    "PatientWeight",
    "StudyID",
    "StudyTime",
    "ReferringPhysicianName",
    "ProcedureCodeSequence",
    "RequestingService",
)


def assert_only_inherited(source: Dataset, errors: list[str], warnings: list[str]) -> None:
    """Errors may only be illegal-root source UIDs; warnings only about copied attributes."""
    source_uids = {
        str(source.StudyInstanceUID),
        str(source.SeriesInstanceUID),
        str(source.SOPInstanceUID),
    }
    for line in errors:
        assert "Illegal root for UID" in line and any(uid in line for uid in source_uids), line
    for line in warnings:
        assert any(f"/{keyword}(" in line for keyword in INHERITED_KEYWORDS), line


def roundtrip(ds: Dataset) -> Dataset:
    """Write to bytes and read back, as a receiver would."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _masks_for(ds: Dataset, frames: list[int]) -> tuple[np.ndarray, list[int]]:
    mask = lesion_mask(
        int(ds.Rows), int(ds.Columns), radii=(int(ds.Rows) // 8, int(ds.Columns) // 8)
    )
    return np.repeat(mask[np.newaxis], len(frames), axis=0), frames


@pytest.mark.usefixtures("strict_writing")
def test_build_seg_synthetic_single_frame_roundtrips_mask_and_attributes() -> None:
    source = make_us_dataset()
    mask = lesion_mask()
    seg = roundtrip(build_seg([source], [mask[np.newaxis]], [[1]], ALGORITHM, 900))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.Manufacturer == WECARE_MANUFACTURER
    assert seg.SeriesDescription == SEG_SERIES_DESCRIPTION
    assert seg.SeriesNumber == 900
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.PatientID == source.PatientID
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "lesion"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentAlgorithmName == ALGORITHM.name
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert len(segment.RecommendedDisplayCIELabValue) == 3
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == ALGORITHM.version
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.1, 0.1]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [
        1,
        0,
        0,
        0,
        1,
        0,
    ]
    assert "FrameOfReferenceUID" not in source, "the source must not be modified"
    assert is_our_uid(seg.FrameOfReferenceUID)
    parsed = hd.seg.Segmentation.from_dataset(seg)
    pixels = parsed.get_pixels_by_source_instance([source.SOPInstanceUID])
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), mask)


def test_build_seg_same_inputs_gives_same_uids() -> None:
    source = make_us_dataset()
    masks, frames = [lesion_mask()[np.newaxis]], [[1]]
    first = build_seg([source], masks, frames, ALGORITHM, 900)
    second = build_seg([source], masks, frames, ALGORITHM, 900)
    assert (
        first.SOPInstanceUID
        == second.SOPInstanceUID
        == output_uid(source.SeriesInstanceUID, ALGORITHM.version, "seg")
    )
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    other = build_seg([source], masks, frames, AlgorithmInfo("wecare-multitask", "v2"), 900)
    assert other.SOPInstanceUID != first.SOPInstanceUID


def test_build_seg_output_is_our_object_and_skipped() -> None:
    seg = build_seg([make_us_dataset()], [lesion_mask()[np.newaxis]], [[1]], ALGORITHM, 900)
    assert is_our_object(seg)
    assert skip_reason(seg).startswith("our_own_object: ")


@pytest.mark.parametrize("lesion_frames", [[1], [2, 3], [1, 5]])
def test_build_seg_multiframe_references_source_frames(lesion_frames: list[int]) -> None:
    source = make_us_dataset(frames=5)
    masks = np.zeros((5, 256, 320), bool)
    for number in lesion_frames:
        masks[number - 1] = lesion_mask(center=(100 + number, 150))
    seg = roundtrip(build_seg([source], [masks], [[1, 2, 3, 4, 5]], ALGORITHM, 900))
    assert int(seg.NumberOfFrames) == len(lesion_frames)
    referenced = [
        int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for item in seg.PerFrameFunctionalGroupsSequence
    ]
    assert referenced == lesion_frames
    parsed = hd.seg.Segmentation.from_dataset(seg)
    pixels = parsed.get_pixels_by_source_frame(source.SOPInstanceUID, lesion_frames)
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), masks[np.array(lesion_frames) - 1])
    for number in lesion_frames:
        assert seg_frame_for_source(seg, source.SOPInstanceUID, number) is not None
    assert (
        seg_frame_for_source(seg, source.SOPInstanceUID, 4 if 4 not in lesion_frames else 2) is None
    )


def test_build_seg_subset_of_frames_maps_to_given_frame_numbers() -> None:
    source = make_us_dataset(frames=10)
    mask = lesion_mask()
    seg = build_seg([source], [np.stack([mask, np.zeros_like(mask)])], [[7, 9]], ALGORITHM, 900)
    assert int(seg.NumberOfFrames) == 1
    assert seg_frame_for_source(seg, source.SOPInstanceUID, 7) == 1


def test_build_seg_series_of_single_frames_skips_empty_instances() -> None:
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    sources = [
        make_us_dataset(study_instance_uid=study, series_instance_uid=series, seed=i)
        for i in range(3)
    ]
    masks = [
        lesion_mask()[np.newaxis],
        np.zeros((1, 256, 320), bool),
        lesion_mask(center=(60, 80), radii=(10, 10))[np.newaxis],
    ]
    seg = roundtrip(build_seg(sources, masks, [[1], [1], [1]], ALGORITHM, 900))
    assert int(seg.NumberOfFrames) == 2
    parsed = hd.seg.Segmentation.from_dataset(seg)
    for source, mask in zip(sources, masks, strict=True):
        if mask.any():
            pixels = parsed.get_pixels_by_source_instance([source.SOPInstanceUID])
            np.testing.assert_array_equal(pixels[0, ..., 0].astype(bool), mask[0])
        else:
            assert seg_frame_for_source(seg, source.SOPInstanceUID) is None


def test_build_seg_uncalibrated_source_uses_unit_spacing() -> None:
    seg = build_seg(
        [make_us_dataset(regions=False)], [lesion_mask()[np.newaxis]], [[1]], ALGORITHM, 900
    )
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == [1.0, 1.0]


def test_build_seg_source_with_patient_geometry_keeps_its_frame_of_reference() -> None:
    source = make_us_dataset(frame_of_reference=True)
    source.ImagePositionPatient = [10.0, 20.0, 30.0]
    source.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    source.PixelSpacing = [0.2, 0.2]
    source.SliceThickness = 2.0
    seg = build_seg([source], [lesion_mask()[np.newaxis]], [[1]], ALGORITHM, 900)
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    assert [float(v) for v in position.ImagePositionPatient] == [10.0, 20.0, 30.0]


def test_build_seg_sources_at_same_position_get_synthetic_geometry() -> None:
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    sources = []
    for index in range(2):
        ds = make_us_dataset(
            study_instance_uid=study,
            series_instance_uid=series,
            seed=index,
            frame_of_reference=True,
        )
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.1, 0.1]
        sources.append(ds)
    seg = build_seg(sources, [lesion_mask()[np.newaxis]] * 2, [[1], [1]], ALGORITHM, 900)
    assert int(seg.NumberOfFrames) == 2
    assert seg.FrameOfReferenceUID == output_uid(
        series, ALGORITHM.version, "seg-frame-of-reference"
    )


@needs_dciodvfy
@pytest.mark.parametrize("slice_thickness", [2.0, None])
def test_build_seg_source_patient_geometry_passes_dciodvfy(slice_thickness: float | None) -> None:
    source = make_us_dataset(frame_of_reference=True)
    source.ImagePositionPatient = [0.0, 0.0, 0.0]
    source.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    source.PixelSpacing = [0.1, 0.1]
    if slice_thickness is not None:
        source.SliceThickness = slice_thickness
    seg = build_seg([source], [lesion_mask()[np.newaxis]], [[1]], ALGORITHM, 900)
    native = slice_thickness is not None
    assert (seg.FrameOfReferenceUID == source.FrameOfReferenceUID) == native
    assert validate_dataset(seg) == ([], [])
    hd.seg.Segmentation.from_dataset(roundtrip(seg))


def test_build_seg_retired_sop_class_source_referenced_with_its_class() -> None:
    source = make_us_dataset(sop_class_uid="1.2.840.10008.5.1.4.1.1.6")
    seg = build_seg([source], [lesion_mask()[np.newaxis]], [[1]], ALGORITHM, 900)
    frame_ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert frame_ref.SourceImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.6"
    series_ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert series_ref.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.6"
    assert source.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6"


def test_build_seg_all_masks_empty_raises_empty_segmentation() -> None:
    with pytest.raises(EmptySegmentationError, match="no frame contains a lesion") as info:
        build_seg([make_us_dataset()], [np.zeros((1, 256, 320), bool)], [[1]], ALGORITHM, 900)
    assert info.value.code == "empty_segmentation"


def test_build_seg_two_multiframe_sources_with_lesions_raises() -> None:
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    sources = [
        make_us_dataset(frames=2, study_instance_uid=study, series_instance_uid=series)
        for _ in range(2)
    ]
    masks = [np.stack([lesion_mask()] * 2)] * 2
    with pytest.raises(SegmentationInputError, match="one SEG per instance"):
        build_seg(sources, masks, [[1, 2], [1, 2]], ALGORITHM, 900)


def test_build_seg_images_of_different_sizes_raise_then_per_instance_uids_differ() -> None:
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    small = make_us_dataset(study_instance_uid=study, series_instance_uid=series)
    large = make_us_dataset(
        study_instance_uid=study, series_instance_uid=series, rows=300, columns=400
    )
    masks = [lesion_mask()[np.newaxis], lesion_mask(300, 400)[np.newaxis]]
    with pytest.raises(SegmentationInputError, match="different sizes"):
        build_seg([small, large], masks, [[1], [1]], ALGORITHM, 900)
    segs = [
        build_seg([ds], [mask], [[1]], ALGORITHM, 900, uid_source=str(ds.SOPInstanceUID))
        for ds, mask in zip([small, large], masks, strict=True)
    ]
    assert segs[0].SOPInstanceUID != segs[1].SOPInstanceUID
    assert segs[0].SOPInstanceUID == output_uid(small.SOPInstanceUID, ALGORITHM.version, "seg")


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ("wrong_shape", ValueError, "must be"),
        ("not_bool", TypeError, "bool"),
        ("frame_out_of_range", ValueError, "distinct values"),
        ("count_mismatch", ValueError, "one number per mask frame"),
        ("two_series", ValueError, "one series"),
        ("lengths", ValueError, "same length"),
        ("series_number", ValueError, "series_number"),
    ],
)
def test_build_seg_invalid_arguments_raise(change: str, error: type, match: str) -> None:
    sources = [make_us_dataset()]
    masks: list[np.ndarray] = [lesion_mask()[np.newaxis]]
    frames: list[list[int]] = [[1]]
    series_number = 900
    if change == "wrong_shape":
        masks = [np.zeros((1, 10, 10), bool)]
    elif change == "not_bool":
        masks = [masks[0].astype(np.uint8)]
    elif change == "frame_out_of_range":
        frames = [[2]]
    elif change == "count_mismatch":
        frames = [[1, 2]]
    elif change == "two_series":
        sources = [sources[0], make_us_dataset()]
        masks, frames = masks * 2, frames * 2
    elif change == "lengths":
        frames = [[1], [1]]
    elif change == "series_number":
        series_number = -1
    with pytest.raises(error, match=match):
        build_seg(sources, masks, frames, ALGORITHM, series_number)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"name": ""}, "name"), ({"version": "x" * 65}, "64"), ({"family": "Magic"}, "family")],
)
def test_algorithm_info_invalid_values_raise(kwargs: dict, match: str) -> None:
    values = {"name": "m", "version": "v"}
    values.update(kwargs)
    with pytest.raises(ValueError, match=match):
        AlgorithmInfo(**values)


@needs_dciodvfy
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"regions": False},
        {"frames": 4},
        {"photometric": "RGB"},
        {"photometric": "PALETTE COLOR", "laterality": None},
        {"frame_of_reference": True},
    ],
    ids=["default", "uncalibrated", "multiframe", "rgb", "palette", "frame-of-reference"],
)
def test_build_seg_synthetic_passes_dciodvfy(kwargs: dict) -> None:
    source = make_us_dataset(**kwargs)
    frames = int(source.get("NumberOfFrames", 1))
    masks = np.repeat(lesion_mask()[np.newaxis], frames, axis=0)
    errors, warnings = validate_dataset(
        build_seg([source], [masks], [list(range(1, frames + 1))], ALGORITHM, 900)
    )
    assert errors == []
    assert warnings == []


@needs_dciodvfy
@pytest.mark.parametrize("name", sorted(REAL_SOURCES))
def test_build_seg_real_source_passes_dciodvfy_and_roundtrips(name: str) -> None:
    source = read_header(real_file(name))
    masks, frames = _masks_for(source, REAL_SOURCES[name])
    seg = build_seg([source], [masks], [frames], ALGORITHM, 900)
    errors, warnings = validate_dataset(seg)
    assert_only_inherited(source, errors, warnings)
    parsed = hd.seg.Segmentation.from_dataset(roundtrip(seg))
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        pixels = parsed.get_pixels_by_source_frame(source.SOPInstanceUID, frames)
    else:
        pixels = parsed.get_pixels_by_source_instance([source.SOPInstanceUID])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), masks)


def test_build_seg_long_multiframe_builds_quickly() -> None:
    import time

    source = make_us_dataset(frames=120, rows=480, columns=640)
    masks = np.zeros((120, 480, 640), bool)
    masks[::2] = lesion_mask(480, 640)
    start = time.perf_counter()
    seg = build_seg([source], [masks], [list(range(1, 121))], ALGORITHM, 900)
    assert int(seg.NumberOfFrames) == 60
    assert time.perf_counter() - start < 10.0


def test_build_seg_writes_no_file(tmp_path: Path) -> None:
    before = set(tmp_path.iterdir())
    build_seg([make_us_dataset()], [lesion_mask()[np.newaxis]], [[1]], ALGORITHM, 900)
    assert set(tmp_path.iterdir()) == before


@pytest.mark.parametrize("frames", [1, 5])
def test_seg_frames_by_source_gives_every_answer_of_seg_frame_for_source(frames: int) -> None:
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    count = 3 if frames == 1 else 1
    sources = [
        make_us_dataset(frames=frames, study_instance_uid=study, series_instance_uid=series, seed=k)
        for k in range(count)
    ]
    masks = [np.zeros((frames, 256, 320), bool) for _ in sources]
    for k, mask in enumerate(masks):
        mask[[0, frames - 1] if k != 1 else []] = lesion_mask()  # the second: no lesion
    seg = roundtrip(build_seg(sources, masks, [list(range(1, frames + 1))] * count, ALGORITHM, 900))
    index = seg_frames_by_source(seg)
    for ds in sources:
        uid = str(ds.SOPInstanceUID)
        for number in range(1, frames + 1):
            expected = seg_frame_for_source(seg, uid, number if frames > 1 else None)
            assert index.get((uid, number)) == expected
    assert sorted(index.values()) == list(range(1, int(seg.NumberOfFrames) + 1))


def test_load_standard_tables_reads_highdicom_tables_once_at_start_up() -> None:
    """A worker reads highdicom's tables of the standard at start-up (not in its first study):
    after the call they are cached, so the first SEG/SR build does not read them."""
    from highdicom import _standard_utils as tables

    from dicom_io.seg import load_standard_tables

    load_standard_tables()
    for name in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
        assert getattr(tables, name).cache_info().currsize == 1
