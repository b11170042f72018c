"""Tests of dicom_io.sr: TID 1500 content, dciodvfy conformance and round trip."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_io import codes
from dicom_io.measure import mask_measurements
from dicom_io.read import read_header, skip_reason
from dicom_io.seg import build_seg
from dicom_io.sr import (
    SR_SERIES_DESCRIPTION,
    LesionDescription,
    LesionFinding,
    StudyClassification,
    build_sr,
)
from dicom_io.uids import output_uid
from tests.dciodvfy import needs_dciodvfy, validate_dataset
from tests.dicom_io.conftest import real_file
from tests.dicom_io.test_seg import ALGORITHM, REAL_SOURCES, _masks_for, roundtrip
from tests.factories import MM_PER_PIXEL, lesion_mask, make_us_dataset

MALIGNANT = StudyClassification("malignant", {"normal": 0.05, "benign": 0.25, "malignant": 0.7})
NORMAL = StudyClassification("normal", {"normal": 0.9, "benign": 0.06, "malignant": 0.04})
# Only our private coding scheme may draw warnings (dciodvfy knows no "99WECARE").
PRIVATE_SCHEME_WARNING = "Unrecognized defined term = <99WECARE>"


def _finding(
    source: Dataset, mask: np.ndarray, frame: int | None, calibrated: bool
) -> LesionFinding:
    area, long_axis, short_axis = (
        mask_measurements(mask, MM_PER_PIXEL, MM_PER_PIXEL) if calibrated else (None,) * 3
    )
    return LesionFinding(
        str(source.SOPInstanceUID), frame, area, long_axis, short_axis, int(mask.sum())
    )


def _case(kind: str) -> tuple[list[Dataset], list[Dataset], list[LesionFinding]]:
    """Sources, SEGs and findings of a named scenario."""
    mask = lesion_mask()
    if kind == "normal":
        return [make_us_dataset(lesion=None)], [], []
    if kind in ("calibrated", "uncalibrated"):
        source = make_us_dataset(regions=kind == "calibrated")
        seg = build_seg([source], [mask[np.newaxis]], [[1]], ALGORITHM, 900)
        return [source], [seg], [_finding(source, mask, None, kind == "calibrated")]
    if kind == "multiframe":
        source = make_us_dataset(frames=4)
        masks = np.zeros((4, 256, 320), bool)
        masks[[1, 3]] = mask
        seg = build_seg([source], [masks], [[1, 2, 3, 4]], ALGORITHM, 900)
        return [source], [seg], [_finding(source, mask, 2, True), _finding(source, mask, 4, True)]
    if kind == "two_series":
        study = pydicom.uid.generate_uid()
        first = make_us_dataset(study_instance_uid=study, laterality="L")
        second = make_us_dataset(study_instance_uid=study, laterality="R", lesion=None)
        seg = build_seg([first], [mask[np.newaxis]], [[1]], ALGORITHM, 900)
        return [first, second], [seg], [_finding(first, mask, None, True)]
    raise ValueError(kind)


CASES = ["normal", "calibrated", "uncalibrated", "multiframe", "two_series"]


@needs_dciodvfy
@pytest.mark.parametrize("kind", CASES)
def test_build_sr_scenarios_pass_dciodvfy(kind: str) -> None:
    sources, segs, findings = _case(kind)
    classification = NORMAL if kind == "normal" else MALIGNANT
    errors, warnings = validate_dataset(
        build_sr(sources, segs, classification, findings, ALGORITHM, 901)
    )
    assert errors == []
    assert all(PRIVATE_SCHEME_WARNING in line for line in warnings), warnings


@pytest.mark.usefixtures("strict_writing")
@pytest.mark.parametrize("kind", CASES)
def test_build_sr_roundtrip_gives_classification_and_findings(kind: str) -> None:
    sources, segs, findings = _case(kind)
    classification = NORMAL if kind == "normal" else MALIGNANT
    sr = roundtrip(build_sr(sources, segs, classification, findings, ALGORITHM, 901))
    assert sr.Manufacturer == "WeCare"
    assert sr.SeriesDescription == SR_SERIES_DESCRIPTION
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.SOPInstanceUID == output_uid(sources[0].StudyInstanceUID, ALGORITHM.version, "sr")
    assert skip_reason(sr).startswith("our_own_object: ")
    content = _flatten(sr)
    # Observer device = the model.
    assert ("Device Observer Name", ALGORITHM.name) in content["text"]
    assert ("Device Observer Model Name", ALGORITHM.version) in content["text"]
    assert ("Device Observer Manufacturer", "WeCare") in content["text"]
    # Study classification and probabilities.
    predicted = codes.CLASS_CODES[classification.predicted_class].value
    assert ("Impression", predicted) in content["code"]
    for name, probability in classification.probabilities.items():
        concept = codes.PROBABILITY_CODES[name].meaning
        assert content["num"][concept] == [pytest.approx(probability)]
    segmented = codes.YES.value if findings else codes.NO.value
    assert ("Lesion segmented by AI", segmented) in content["code"]
    # Source images are referenced (image library + measurement group).
    referenced = content["image"]
    for source in sources:
        assert str(source.SOPInstanceUID) in referenced
    for seg in segs:
        assert str(seg.SOPInstanceUID) in referenced
    # Lesion sizes or the "not measured" statement.
    measured = [f for f in findings if f.is_measured]
    assert len(content["num"].get("Long axis", [])) == len(measured)
    for finding, value in zip(measured, content["num"].get("Long axis", []), strict=True):
        assert value == pytest.approx(finding.long_axis_mm, abs=0.01)
    not_measured = sum(1 for f in findings if not f.is_measured)
    assert (
        content["code"].count(("Lesion size measurement", codes.SIZE_NOT_MEASURED.value))
        == not_measured
    )
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {str(ds.SOPInstanceUID) for ds in [*sources, *segs]}


def test_build_sr_multiframe_finding_references_seg_frame_and_source_frame() -> None:
    sources, segs, findings = _case("multiframe")
    sr = roundtrip(build_sr(sources, segs, MALIGNANT, findings, ALGORITHM, 901))
    references = _segmentation_references(sr)
    assert references == [
        (segs[0].SOPInstanceUID, 1, sources[0].SOPInstanceUID, 2),
        (segs[0].SOPInstanceUID, 2, sources[0].SOPInstanceUID, 4),
    ]


def test_build_sr_lesion_groups_parse_with_highdicom() -> None:
    sources, segs, findings = _case("calibrated")
    sr = roundtrip(build_sr(sources, segs, MALIGNANT, findings, ALGORITHM, 901))
    parsed = hd.sr.srread(_to_bytes(sr))
    groups = parsed.content.get_planar_roi_measurement_groups()
    assert len(groups) == 1
    (group,) = groups
    names = {m.name.value: m.value for m in group.get_measurements()}
    assert names[codes.AREA.value] == pytest.approx(findings[0].area_mm2, abs=0.01)
    assert names[codes.SHORT_AXIS.value] == pytest.approx(findings[0].short_axis_mm, abs=0.01)
    assert group.finding_sites[0].laterality.value == codes.LEFT.value
    (classification_group,) = parsed.content.get_image_measurement_groups()
    evaluations = {
        e.name.value: e.value.value for e in classification_group.get_qualitative_evaluations()
    }
    assert evaluations[codes.IMPRESSION.value] == codes.CLASS_CODES["malignant"].value


def test_build_sr_same_inputs_gives_same_uids() -> None:
    sources, segs, findings = _case("calibrated")
    first = build_sr(sources, segs, MALIGNANT, findings, ALGORITHM, 901)
    second = build_sr(sources, segs, MALIGNANT, findings, ALGORITHM, 901)
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (
        second.SOPInstanceUID,
        second.SeriesInstanceUID,
    )


@needs_dciodvfy
@pytest.mark.parametrize("name", sorted(REAL_SOURCES))
def test_build_sr_real_source_passes_dciodvfy(name: str) -> None:
    from tests.dicom_io.test_seg import assert_only_inherited

    source = read_header(real_file(name))
    masks, frames = _masks_for(source, REAL_SOURCES[name])
    seg = build_seg([source], [masks], [frames], ALGORITHM, 900)
    multiframe = int(source.get("NumberOfFrames", 1) or 1) > 1
    findings = [
        LesionFinding(
            str(source.SOPInstanceUID),
            frame if multiframe else None,
            12.5,
            5.0,
            3.0,
            int(mask.sum()),
        )
        for mask, frame in zip(masks, frames, strict=True)
    ]
    sr = build_sr([source], [seg], MALIGNANT, findings, ALGORITHM, 901)
    errors, warnings = validate_dataset(sr)
    assert_only_inherited(source, errors, [w for w in warnings if PRIVATE_SCHEME_WARNING not in w])
    assert len(_segmentation_references(roundtrip(sr))) == len(findings)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ("unknown_source", ValueError, "not in sources"),
        ("no_seg_frame", ValueError, "no SEG frame"),
        ("two_studies", ValueError, "one study"),
        ("no_sources", ValueError, "must not be empty"),
        ("not_seg", ValueError, "Segmentation"),
    ],
)
def test_build_sr_invalid_arguments_raise(change: str, error: type, match: str) -> None:
    sources, segs, findings = _case("calibrated")
    if change == "unknown_source":
        findings = [LesionFinding("1.2.3.4", None, None, None, None, 10)]
    elif change == "no_seg_frame":
        segs = []
    elif change == "two_studies":
        sources = [*sources, make_us_dataset()]
    elif change == "no_sources":
        sources = []
    elif change == "not_seg":
        segs = [sources[0]]
    with pytest.raises(error, match=match):
        build_sr(sources, segs, MALIGNANT, findings, ALGORITHM, 901)


@pytest.mark.parametrize(
    ("predicted", "probabilities", "match"),
    [
        ("cancer", {"normal": 0.2, "benign": 0.3, "malignant": 0.5}, "predicted_class"),
        ("benign", {"normal": 0.2, "benign": 0.3}, "keys"),
        ("benign", {"normal": 0.2, "benign": 0.3, "malignant": 0.6}, "sum to 1"),
        ("benign", {"normal": -0.2, "benign": 0.7, "malignant": 0.5}, "0..1"),
    ],
)
def test_study_classification_invalid_values_raise(
    predicted: str, probabilities: dict[str, float], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        StudyClassification(predicted, probabilities)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"area_px": 0}, "area_px"),
        ({"frame_number": 0}, "frame_number"),
        ({"long_axis_mm": float("nan")}, "long_axis_mm"),
        ({"source_sop_instance_uid": ""}, "uid"),
    ],
)
def test_lesion_finding_invalid_values_raise(kwargs: dict, match: str) -> None:
    values = dict(
        source_sop_instance_uid="1.2.3",
        frame_number=None,
        area_mm2=1.0,
        long_axis_mm=1.0,
        short_axis_mm=1.0,
        area_px=10,
    )
    values.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LesionFinding(**values)


def _to_bytes(ds: Dataset):  # type: ignore[no-untyped-def]
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer


def _flatten(sr: Dataset) -> dict:
    """Collect (concept meaning, value) of TEXT/UIDREF, CODE, NUM and IMAGE items."""
    out: dict = {"text": [], "code": [], "num": {}, "image": set()}

    def walk(items: list[Dataset]) -> None:
        for item in items:
            name = (
                item.ConceptNameCodeSequence[0].CodeMeaning
                if "ConceptNameCodeSequence" in item
                else ""
            )
            kind = item.ValueType
            if kind in ("TEXT", "UIDREF"):
                out["text"].append((name, str(item.get("TextValue", item.get("UID", "")))))
            elif kind == "CODE":
                out["code"].append((name, item.ConceptCodeSequence[0].CodeValue))
            elif kind == "NUM":
                value = float(item.MeasuredValueSequence[0].NumericValue)
                out["num"].setdefault(name, []).append(value)
            elif kind == "IMAGE":
                out["image"].add(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            walk(list(item.get("ContentSequence", [])))

    walk(list(sr.ContentSequence))
    return out


def _segmentation_references(sr: Dataset) -> list[tuple[str, int, str, int | None]]:
    """(SEG UID, SEG frame, source UID, source frame) of every Referenced Segmentation Frame."""
    found = []

    def walk(items: list[Dataset]) -> None:
        for index, item in enumerate(items):
            concept = item.get("ConceptNameCodeSequence")
            if item.ValueType == "IMAGE" and concept and concept[0].CodeValue == "121214":
                seg_ref = item.ReferencedSOPSequence[0]
                source_item = items[index + 1]
                source_ref = source_item.ReferencedSOPSequence[0]
                frame = source_ref.get("ReferencedFrameNumber")
                found.append(
                    (
                        seg_ref.ReferencedSOPInstanceUID,
                        int(seg_ref.ReferencedFrameNumber),
                        source_ref.ReferencedSOPInstanceUID,
                        int(frame) if frame is not None else None,
                    )
                )
            walk(list(item.get("ContentSequence", [])))

    walk(list(sr.ContentSequence))
    return found


DESCRIBED = LesionDescription(
    shape="irregular",
    orientation="not parallel",
    margin="not circumscribed",
    margin_detail=("indistinct", "spiculated"),
    echo_pattern="heterogeneous",
    posterior="shadowing",
    depth_mm=7.25,
)


def _described_case(
    description: LesionDescription,
) -> tuple[list[Dataset], list[Dataset], list[LesionFinding]]:
    sources, segs, findings = _case("calibrated")
    finding = findings[0]
    return (
        sources,
        segs,
        [
            LesionFinding(
                finding.source_sop_instance_uid,
                None,
                finding.area_mm2,
                finding.long_axis_mm,
                finding.short_axis_mm,
                finding.area_px,
                description=description,
            )
        ],
    )


@needs_dciodvfy
def test_build_sr_with_descriptors_passes_dciodvfy() -> None:
    sources, segs, findings = _described_case(DESCRIBED)
    errors, warnings = validate_dataset(
        build_sr(sources, segs, MALIGNANT, findings, ALGORITHM, 901)
    )
    assert errors == []
    assert all(PRIVATE_SCHEME_WARNING in line for line in warnings), warnings


@pytest.mark.usefixtures("strict_writing")
@pytest.mark.parametrize(
    "description",
    [
        DESCRIBED,
        LesionDescription("oval", "parallel", "circumscribed", (), "hypoechoic", "enhancement"),
        LesionDescription("round", None, "not circumscribed", (), "complex cystic and solid"),
    ],
)
def test_build_sr_descriptors_written_with_standard_codes(
    description: LesionDescription,
) -> None:
    sources, segs, findings = _described_case(description)
    content = _flatten(roundtrip(build_sr(sources, segs, MALIGNANT, findings, ALGORITHM, 901)))
    expected = [(codes.SHAPE.meaning, codes.SHAPE_CODES[description.shape].value)]
    if description.orientation:
        expected.append(
            (codes.ORIENTATION.meaning, codes.ORIENTATION_CODES[description.orientation].value)
        )
    margin_words = description.margin_detail or (description.margin,)
    expected += [(codes.MARGINS.meaning, codes.MARGIN_CODES[w].value) for w in margin_words]
    expected.append(
        (codes.ECHO_PATTERN.meaning, codes.ECHO_PATTERN_CODES[description.echo_pattern].value)
    )
    if description.posterior:
        expected.append(
            (
                codes.POSTERIOR_ACOUSTIC_FEATURES.meaning,
                codes.POSTERIOR_CODES[description.posterior].value,
            )
        )
    for pair in expected:
        assert pair in content["code"]
    margins = [value for name, value in content["code"] if name == codes.MARGINS.meaning]
    assert len(margins) == len(margin_words)
    if description.depth_mm is not None:
        assert content["num"][codes.DISTANCE_FROM_SKIN.meaning] == [description.depth_mm]
    else:
        assert codes.DISTANCE_FROM_SKIN.meaning not in content["num"]
    assert content["num"][codes.LONG_AXIS.meaning] == [
        pytest.approx(findings[0].long_axis_mm, abs=0.01)
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": "lobulated"}, "shape"),
        ({"margin": "circumscribed", "margin_detail": ("indistinct",)}, "needs margin"),
        ({"margin": "not circumscribed", "margin_detail": ("fuzzy",)}, "margin_detail"),
        ({"echo_pattern": "Hypoechoic"}, "echo_pattern"),
        ({"depth_mm": -1.0}, "depth_mm"),
    ],
)
def test_lesion_description_invalid_words_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LesionDescription(**kwargs)


def _many_lesions(count: int) -> tuple[list[Dataset], list[Dataset], list[LesionFinding]]:
    """A series of `count` images with a lesion each, one SEG, a described finding each."""
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    sources = [
        make_us_dataset(study_instance_uid=study, series_instance_uid=series, seed=k)
        for k in range(count)
    ]
    mask = lesion_mask()
    seg = build_seg(sources, [mask[np.newaxis]] * count, [[1]] * count, ALGORITHM, 900)
    description = LesionDescription(shape="oval", margin="circumscribed", depth_mm=4.0)
    findings = [
        LesionFinding(str(ds.SOPInstanceUID), None, 10.0, 5.0, 3.0, 100, description)
        for ds in sources
    ]
    return sources, [seg], findings


def test_build_sr_many_lesions_content_view_matches_the_written_tree() -> None:
    # The Image Library and lesion groups are added after highdicom's constructor: the
    # written tree and the object's parsed `content` must both hold them, in TID 1500 order.
    sources, segs, findings = _many_lesions(4)
    sr = build_sr(sources, segs, MALIGNANT, findings, ALGORITHM, 901)
    assert [item.to_json_dict() for item in sr.content[0].ContentSequence] == [
        item.to_json_dict() for item in sr.ContentSequence
    ]
    parsed = hd.sr.srread(_to_bytes(roundtrip(sr)))
    groups = parsed.content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [f"Lesion {k + 1}" for k in range(4)]
    assert [
        g.referenced_segmentation_frame[0].ReferencedSOPSequence[0].ReferencedFrameNumber
        for g in groups
    ] == [1, 2, 3, 4]
    names = [item.ConceptNameCodeSequence[0].CodeValue for item in sr.ContentSequence]
    # ... procedure reported, Image Library (111028), Imaging Measurements (126010) last.
    assert names[-2:] == ["111028", "126010"]
    library = sr.ContentSequence[-2].ContentSequence[0].ContentSequence
    assert [str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in library] == [
        str(ds.SOPInstanceUID) for ds in sources
    ]


@needs_dciodvfy
def test_build_sr_many_lesions_passes_dciodvfy() -> None:
    sources, segs, findings = _many_lesions(3)
    errors, warnings = validate_dataset(
        build_sr(sources, segs, MALIGNANT, findings, ALGORITHM, 901)
    )
    assert errors == []
    assert all(PRIVATE_SCHEME_WARNING in line for line in warnings), warnings
