"""TID 1500 Measurement Report (Comprehensive 3D SR) of the model's findings, via highdicom.

Content tree (codes in :mod:`dicom_io.codes`, listed in docs/CONFORMANCE.md)::

    Imaging Measurement Report (DCM 126000), procedure: Ultrasonography of breast
    ├─ observer: Device = the model (name, manufacturer "WeCare", model name = version)
    ├─ Image Library: every source image
    └─ Imaging Measurements
       ├─ Measurement group "AI study classification" (TID 1501)
       │    Impression (DCM 121073) = Normal | Benign | Malignant (SCT)
       │    Lesion segmented by AI (99WECARE) = Yes | No (SCT)
       │    Probability of normal / of benign lesion (99WECARE), of cancer (DCM 111047),
       │    unit UCUM "1"; source images referenced
       └─ per lesion: Measurement group "Lesion k" (TID 1410), finding Lesion (SCT),
            site Breast (+ laterality), referencing the SEG segment frame and source frame;
            Long axis, Short axis (mm), Area (mm2) when the image has a calibrated
            ultrasound region, else "Lesion size measurement = Not measured: no
            calibrated ultrasound region" (99WECARE); Distance from skin (mm, the
            lesion's depth) and the BI-RADS descriptors Shape, Orientation, Margins (one
            item per word), Echo pattern, Posterior acoustic features (PS3.16 CID 6005,
            6152, 6007, 6154, 6155) when the finding carries a LesionDescription.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_io import codes
from dicom_io.headers import (
    RETIRED_SOP_CLASSES,
    log_notes,
    reference_header,
    restore_referenced_sop_classes,
    source_header,
)
from dicom_io.seg import AlgorithmInfo, seg_frames_by_source
from dicom_io.uids import WECARE_MANUFACTURER, output_uid

__all__ = [
    "CLASSES",
    "SR_SERIES_DESCRIPTION",
    "LesionDescription",
    "LesionFinding",
    "ReviewRecord",
    "StudyClassification",
    "build_sr",
    "sr_caution",
]

CLASSES = ("normal", "benign", "malignant")
SR_SERIES_DESCRIPTION = "WeCare AI breast ultrasound report"
_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# What this module and highdicom read of a source other than the first, from which
# highdicom copies nothing: references and the Image Library entry (TID 1602-1604).
_REFERENCED_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "Rows", "Columns", "NumberOfFrames", "FrameOfReferenceUID", "ImageLaterality",
    "Laterality", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient",
    "SliceThickness", "SpacingBetweenSlices", "PatientOrientation", "ImagerPixelSpacing",
)  # fmt: skip


def _concept(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)


@dataclass(frozen=True)
class LesionDescription:
    """BI-RADS ultrasound descriptors of a lesion, in the lexicon's words (lower case).

    Every word must be a key of its map in :mod:`dicom_io.codes` (``SHAPE_CODES``,
    ``ORIENTATION_CODES``, ``MARGIN_CODES``, ``ECHO_PATTERN_CODES``, ``POSTERIOR_CODES``);
    None (or an empty ``margin_detail``) leaves that item out. ``depth_mm``: distance from
    the skin to the lesion's top, None when not measured.
    """

    shape: str | None = None
    orientation: str | None = None
    margin: str | None = None
    margin_detail: tuple[str, ...] = ()
    echo_pattern: str | None = None
    posterior: str | None = None
    depth_mm: float | None = None

    def __post_init__(self) -> None:
        for name, allowed in (
            ("shape", codes.SHAPE_CODES),
            ("orientation", codes.ORIENTATION_CODES),
            ("margin", ("circumscribed", "not circumscribed")),
            ("echo_pattern", codes.ECHO_PATTERN_CODES),
            ("posterior", codes.POSTERIOR_CODES),
        ):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"LesionDescription.{name} must be None or one of {list(allowed)}")
        details = ("indistinct", "angular", "microlobulated", "spiculated")
        if not isinstance(self.margin_detail, tuple) or any(
            d not in details for d in self.margin_detail
        ):
            raise ValueError(f"LesionDescription.margin_detail must be a tuple of {details}")
        if self.margin_detail and self.margin != "not circumscribed":
            raise ValueError("LesionDescription.margin_detail needs margin 'not circumscribed'")
        if self.depth_mm is not None and not (math.isfinite(self.depth_mm) and self.depth_mm >= 0):
            raise ValueError("LesionDescription.depth_mm must be None or a finite number >= 0")

    def evaluations(self) -> list[tuple[Code, Code]]:
        """(concept name, value) pairs, in reading order; one Margins item per word."""
        pairs: list[tuple[Code, Code]] = []
        if self.shape:
            pairs.append((codes.SHAPE, codes.SHAPE_CODES[self.shape]))
        if self.orientation:
            pairs.append((codes.ORIENTATION, codes.ORIENTATION_CODES[self.orientation]))
        if self.margin == "circumscribed" or (self.margin and not self.margin_detail):
            pairs.append((codes.MARGINS, codes.MARGIN_CODES[self.margin]))
        for word in self.margin_detail:
            pairs.append((codes.MARGINS, codes.MARGIN_CODES[word]))
        if self.echo_pattern:
            pairs.append((codes.ECHO_PATTERN, codes.ECHO_PATTERN_CODES[self.echo_pattern]))
        if self.posterior:
            pairs.append((codes.POSTERIOR_ACOUSTIC_FEATURES, codes.POSTERIOR_CODES[self.posterior]))
        return pairs


@dataclass(frozen=True)
class LesionFinding:
    """One segmented lesion on one source frame.

    Attributes
    ----------
    source_sop_instance_uid: str
        The source instance the lesion was found on.
    frame_number: int | None
        1-based source frame for multi-frame sources, None for single-frame ones.
    area_mm2, long_axis_mm, short_axis_mm: float | None
        Sizes (see :func:`dicom_io.measure.mask_measurements`); None when the image has
        no calibrated ultrasound region.
    area_px: int
        Number of mask pixels (> 0).
    description: LesionDescription | None
        BI-RADS descriptors and depth, written as qualitative evaluations (and Distance
        from skin); None writes none.
    """

    source_sop_instance_uid: str
    frame_number: int | None
    area_mm2: float | None
    long_axis_mm: float | None
    short_axis_mm: float | None
    area_px: int
    description: LesionDescription | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source_sop_instance_uid, str) or not self.source_sop_instance_uid:
            raise ValueError("LesionFinding.source_sop_instance_uid must be a non-empty str")
        if self.frame_number is not None and (
            not isinstance(self.frame_number, int) or self.frame_number < 1
        ):
            raise ValueError("LesionFinding.frame_number must be None or an int >= 1")
        for name in ("area_mm2", "long_axis_mm", "short_axis_mm"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"LesionFinding.{name} must be None or a finite number >= 0")
        if not isinstance(self.area_px, int) or self.area_px <= 0:
            raise ValueError("LesionFinding.area_px must be a positive int")
        if self.description is not None and not isinstance(self.description, LesionDescription):
            raise ValueError("LesionFinding.description must be None or a LesionDescription")

    @property
    def is_measured(self) -> bool:
        """True when at least one size in mm is known."""
        return any(v is not None for v in (self.area_mm2, self.long_axis_mm, self.short_axis_mm))


@dataclass(frozen=True)
class StudyClassification:
    """Study-level class and calibrated probabilities.

    Attributes
    ----------
    predicted_class: str | None
        One of :data:`CLASSES`; None when no image was within the model's scope (the
        in-distribution check refused them all): the SR then gives no class and says why.
    probabilities: dict[str, float] | None
        Calibrated probability of each of :data:`CLASSES` (sums to 1 within 1e-3); None
        exactly when ``predicted_class`` is None.
    """

    predicted_class: str | None
    probabilities: dict[str, float] | None = field(hash=False)

    @property
    def outside_scope(self) -> bool:
        return self.predicted_class is None

    def __post_init__(self) -> None:
        if self.predicted_class is None or self.probabilities is None:
            if self.predicted_class is not None or self.probabilities is not None:
                raise ValueError("StudyClassification: no class goes with no probabilities")
            return
        if self.predicted_class not in CLASSES:
            raise ValueError(f"StudyClassification.predicted_class must be one of {CLASSES}")
        if set(self.probabilities) != set(CLASSES):
            raise ValueError(f"StudyClassification.probabilities must have the keys {CLASSES}")
        values = [float(self.probabilities[c]) for c in CLASSES]
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
            raise ValueError("StudyClassification.probabilities must be in 0..1")
        if abs(sum(values) - 1.0) > 1e-3:
            raise ValueError("StudyClassification.probabilities must sum to 1")


@dataclass(frozen=True)
class ReviewRecord:
    """A radiologist's review of the AI result, written into a corrected SR.

    Attributes
    ----------
    reviewer: str
        The radiologist (user name): Person Observer Name of the observation context.
    outcome: str
        A key of :data:`dicom_io.codes.REVIEW_CODES`: "accepted", "corrected", "drawn" or
        "rejected".
    label: str | None
        The radiologist's class (one of :data:`CLASSES`), None to state none.
    """

    reviewer: str
    outcome: str
    label: str | None = None

    def __post_init__(self) -> None:
        name = self.reviewer
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            raise ValueError("ReviewRecord.reviewer must be a non-empty str of at most 64")
        if any(c in name for c in "\\^=") or not all(" " <= c <= "~" for c in name):
            raise ValueError("ReviewRecord.reviewer must be printable ASCII without \\ ^ =")
        if self.outcome not in codes.REVIEW_CODES:
            raise ValueError(f"ReviewRecord.outcome must be one of {sorted(codes.REVIEW_CODES)}")
        if self.label is not None and self.label not in CLASSES:
            raise ValueError(f"ReviewRecord.label must be None or one of {CLASSES}")


def _laterality_code(datasets: Sequence[Dataset]) -> Code | None:
    values = set()
    for ds in datasets:
        for keyword in ("ImageLaterality", "Laterality"):
            value = str(ds.get(keyword, "") or "").strip().upper()
            if value:
                values.add(value)
                break
    if values == {"L"}:
        return codes.LEFT
    if values == {"R"}:
        return codes.RIGHT
    return None


def _finding_site(datasets: Sequence[Dataset]) -> hd.sr.FindingSite:
    laterality = _laterality_code(datasets)
    return hd.sr.FindingSite(
        anatomic_location=_concept(codes.BREAST),
        laterality=_concept(laterality) if laterality is not None else None,
    )


def _is_multiframe(ds: Dataset) -> bool:
    return "NumberOfFrames" in ds and int(ds.NumberOfFrames or 1) > 1


def _lesion_group(
    index: int,
    finding: LesionFinding,
    source: Dataset,
    segs: Sequence[Dataset],
    frames_of: Callable[[Dataset], Mapping[tuple[str, int], int]],
    algorithm_id: hd.sr.AlgorithmIdentification,
    version: str,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    # ``frames_of``: seg_frames_by_source of a SEG, read once per report.
    frame = finding.frame_number if _is_multiframe(source) else None
    for seg in segs:
        seg_frame = frames_of(seg).get((finding.source_sop_instance_uid, frame or 1))
        if seg_frame is not None:
            break
    else:
        raise ValueError(
            f"findings[{index}] has no SEG frame derived from its source instance/frame"
        )
    referenced_segment = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=str(seg.SOPClassUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        frame_number=seg_frame,
        segment_number=1,
        source_image=hd.sr.SourceImageForSegmentation(
            referenced_sop_class_uid=str(source.SOPClassUID),
            referenced_sop_instance_uid=str(source.SOPInstanceUID),
            referenced_frame_numbers=[frame] if frame is not None else None,
        ),
    )
    # PS3.3 Table 10-3 (Image SOP Instance Reference Macro): Referenced Segment Number is
    # 1C "required if ... Referenced Frame Number is not present", so the two must not
    # both be present (dciodvfy: "Shall not be present when ReferencedFrameNumber is
    # present"); highdicom writes both. A frame of a BINARY SEG belongs to exactly one
    # segment (its Segment Identification Sequence), so the frame reference alone is
    # unambiguous: drop the segment number.
    for item in referenced_segment:
        for reference in item.get("ReferencedSOPSequence", []):
            if reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID:
                if "ReferencedSegmentNumber" in reference:
                    del reference.ReferencedSegmentNumber
    measurements = []
    for value, name, unit in (
        (finding.long_axis_mm, codes.LONG_AXIS, codes.MILLIMETER),
        (finding.short_axis_mm, codes.SHORT_AXIS, codes.MILLIMETER),
        (finding.area_mm2, codes.AREA, codes.SQUARE_MILLIMETER),
    ):
        if value is not None:
            measurements.append(
                hd.sr.Measurement(
                    name=_concept(name), value=round(float(value), 2), unit=_concept(unit)
                )
            )
    description = finding.description
    if description is not None and description.depth_mm is not None:
        measurements.append(
            hd.sr.Measurement(
                name=_concept(codes.DISTANCE_FROM_SKIN),
                value=round(float(description.depth_mm), 2),
                unit=_concept(codes.MILLIMETER),
            )
        )
    evaluations = []
    if not finding.is_measured:
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=_concept(codes.SIZE_MEASUREMENT), value=_concept(codes.SIZE_NOT_MEASURED)
            )
        )
    if description is not None:
        evaluations.extend(
            hd.sr.QualitativeEvaluation(name=_concept(name), value=_concept(value))
            for name, value in description.evaluations()
        )
    key = f"{finding.source_sop_instance_uid}/{frame or 1}/{index}"
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=output_uid(key, version, "sr-lesion-tracking"),
            identifier=f"Lesion {index + 1}",
        ),
        referenced_segment=referenced_segment,
        finding_type=_concept(codes.LESION),
        algorithm_id=algorithm_id,
        finding_sites=[_finding_site([source])],
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
    )


def _add_deferred_content(
    sr: hd.sr.Comprehensive3DSR,
    library: hd.sr.ImageLibrary,
    groups: Sequence[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations],
) -> None:
    """Put the Image Library and the lesion groups where TID 1500 has them, after highdicom.

    highdicom deep-copies, re-parses and searches the whole content tree it is handed
    (``_SR.__init__``: ``deepcopy``, ``ContentItem._from_dataset_derived``,
    ``collect_evidence``): for 100 lesions (~25 items per lesion group, ~5 per library
    entry) about twice what building the items costs. It is therefore handed the report
    without them, and they are added here, in the order MeasurementReport puts them, to
    both the SR's content tree and its parsed ``content`` (the same item objects in both).
    Their references need no check: the library lists the sources, each lesion group a
    source and a SEG frame, all of them evidence.
    """
    for root in (sr, sr.content[0]):
        items = root.ContentSequence
        measurements = items[-1]  # Imaging Measurements: the report's last item (TID 1500)
        for item in library:
            items.insert(len(items) - 1, item)
        for group in groups:
            measurements.ContentSequence.extend(group)


def _person_observer(name: str) -> hd.sr.ObserverContext:
    """TID 1003 Person Observer of a reviewer: the user name as a PN family name ("name^")."""
    return hd.sr.ObserverContext(
        observer_type=_concept(codes.PERSON),
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=f"{name}^"),
    )


#: Concept name of the caution's TEXT item (PS3.16 DCM 121106).
_COMMENT = Code("121106", "DCM", "Comment")


def _plain_text(text: object) -> bool:
    """A caution fit for a UT value and any log: 1-1024 printable ASCII characters."""
    return (
        isinstance(text, str)
        and 0 < len(text.strip()) <= 1024
        and all(" " <= c <= "~" for c in text)
    )


def sr_caution(sr: Dataset) -> str | None:
    """The caution :func:`build_sr` wrote into ``sr`` (its classification group's Comment).

    For the dashboard, which shows what the SR says. None when the report carries none.
    """
    stack = list(sr.get("ContentSequence", []))
    while stack:
        item = stack.pop()
        name = item.get("ConceptNameCodeSequence")
        if (
            item.get("ValueType") == "TEXT"
            and name
            and str(name[0].CodeValue) == _COMMENT.value
            and str(name[0].CodingSchemeDesignator) == _COMMENT.scheme_designator
        ):
            text = str(item.get("TextValue", ""))
            return text if _plain_text(text) else None
        stack.extend(item.get("ContentSequence", []))
    return None


def build_sr(
    sources: Sequence[Dataset],
    segs: Sequence[Dataset],
    classification: StudyClassification,
    findings: Sequence[LesionFinding],
    algorithm: AlgorithmInfo,
    series_number: int,
    *,
    uid_source: str | None = None,
    predecessors: Sequence[Dataset] = (),
    instance_number: int = 1,
    caution: str | None = None,
    review: ReviewRecord | None = None,
    series_kind: str = "sr-series",
    series_description: str = SR_SERIES_DESCRIPTION,
) -> Dataset:
    """Build the TID 1500 Measurement Report of one study.

    Parameters
    ----------
    sources: Sequence[pydicom.Dataset]
        Every source instance analysed (one study; headers suffice).
    segs: Sequence[pydicom.Dataset]
        SEGs built by :func:`dicom_io.seg.build_seg` for these sources (may be empty
        when no lesion was found).
    classification: StudyClassification
        Study-level class and calibrated probabilities.
    findings: Sequence[LesionFinding]
        One per lesion; each must have a frame in one of ``segs``.
    algorithm: AlgorithmInfo
        The model: device observer (name, manufacturer "WeCare", model name = version)
        and Algorithm Identification of every measurement group.
    series_number: int
        Series Number of the SR series.
    uid_source: str, optional
        What the SOP Instance UID derives from; default the Study Instance UID. The
        service passes :func:`dicom_io.uids.content_key` of the study and the images
        reported, so a report on more images is a new instance.
    predecessors: Sequence[pydicom.Dataset]
        Earlier reports this one replaces (at least SOP Class, SOP Instance, Series and
        Study Instance UIDs): Predecessor Documents Sequence (0040,A360), PS3.3 C.17.2.
    instance_number: int
        Instance Number: 1 for the first report of the study, then one more per version.
    caution: str, optional
        A plain-text warning a reader must see beside the class, e.g.
        :data:`dicom_io.routing.DEVICE_CAUTION` for a scanner the model was not validated
        on: a TEXT item "Comment" (DCM 121106) in the study classification group. Printable
        ASCII, at most 1024 characters (UT allows more; a caution is a sentence).
    review: ReviewRecord, optional
        A radiologist's review (the corrected SR): the reviewer becomes the Person observer
        of the observation context (TID 1002, beside the device that measured), and the
        classification group gets "Radiologist review of AI result" = accepted, corrected,
        drawn or rejected, and "Radiologist's class" when the review gives one.
    series_kind: str
        The kind :func:`output_uid` derives the Series Instance UID from: "sr-series" for
        the AI reports, another kind puts the report in a series of its own.
    series_description: str
        Series Description of the SR.

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.sr.Comprehensive3DSR`` (COMPLETE, UNVERIFIED), Manufacturer
        "WeCare", Series Instance UID :func:`output_uid` of the Study Instance UID,
        ``algorithm.version`` and "sr-series" (every version of the report in one series),
        SOP Instance UID that of ``uid_source`` (default the Study Instance UID) and "sr".

    Raises
    ------
    ValueError, TypeError
        Inconsistent arguments (several studies, finding on an unknown source or
        without a SEG frame, ...).
    """
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError("algorithm must be an AlgorithmInfo")
    if not isinstance(classification, StudyClassification):
        raise TypeError("classification must be a StudyClassification")
    if not sources:
        raise ValueError("sources must not be empty")
    if not isinstance(series_number, int) or isinstance(series_number, bool) or series_number < 0:
        raise ValueError("series_number must be a non-negative int")
    if not isinstance(instance_number, int) or isinstance(instance_number, bool):
        raise TypeError("instance_number must be an int")
    if instance_number < 1:
        raise ValueError("instance_number must be >= 1")
    if uid_source is not None and (not isinstance(uid_source, str) or not uid_source):
        raise ValueError("uid_source must be a non-empty str or None")
    if review is not None and not isinstance(review, ReviewRecord):
        raise TypeError("review must be a ReviewRecord or None")
    if caution is not None and not _plain_text(caution):
        raise ValueError("caution must be non-empty printable ASCII of at most 1024 characters")
    studies = {str(ds.StudyInstanceUID) for ds in [*sources, *segs]}
    if len(studies) != 1:
        raise ValueError("sources and segs must belong to one study")
    for seg in segs:
        if str(seg.SOPClassUID) != _SEG_SOP_CLASS:
            raise ValueError("segs must be Segmentation instances")
    retired = {
        str(ds.SOPInstanceUID): str(ds.SOPClassUID)
        for ds in sources
        if str(ds.SOPClassUID) in RETIRED_SOP_CLASSES
    }
    # highdicom copies Patient/Study/Equipment from the first evidence item only: the
    # others need only what is referenced and described of them.
    first, notes = source_header(sources[0])
    sources = [first, *(reference_header(ds, _REFERENCED_KEYWORDS) for ds in sources[1:])]
    log_notes(notes, "SR")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    study_uid = studies.pop()
    version = algorithm.version

    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm.name, version=version)
    observer = hd.sr.ObserverContext(
        observer_type=_concept(codes.DEVICE),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=output_uid(algorithm.name, version, "device"),
            name=algorithm.name,
            manufacturer_name=WECARE_MANUFACTURER,
            model_name=version,
        ),
    )
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = []
    if classification.outside_scope and caution is None:
        raise ValueError("an SR without a class needs the caution that says why")
    probabilities = (
        [
            hd.sr.Measurement(
                name=_concept(codes.PROBABILITY_CODES[name]),
                value=round(float(classification.probabilities[name]), 6),
                unit=_concept(codes.NO_UNITS),
            )
            for name in CLASSES
        ]
        if classification.probabilities is not None
        else None
    )
    impression = (
        []
        if classification.predicted_class is None
        else [
            hd.sr.QualitativeEvaluation(
                name=_concept(codes.IMPRESSION),
                value=_concept(codes.CLASS_CODES[classification.predicted_class]),
            )
        ]
    )
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=output_uid(study_uid, version, "sr-classification-tracking"),
                identifier="AI study classification",
            ),
            finding_type=_concept(codes.STUDY_CLASSIFICATION),
            algorithm_id=algorithm_id,
            finding_sites=[_finding_site(sources)],
            measurements=probabilities,
            qualitative_evaluations=[
                *impression,
                hd.sr.QualitativeEvaluation(
                    name=_concept(codes.LESION_SEGMENTED),
                    value=_concept(codes.YES if findings else codes.NO),
                ),
            ],
            source_images=[
                hd.sr.SourceImageForMeasurementGroup(
                    referenced_sop_class_uid=str(ds.SOPClassUID),
                    referenced_sop_instance_uid=str(ds.SOPInstanceUID),
                )
                for ds in sources
            ],
        )
    )
    if caution is not None:
        groups[0][0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=_concept(_COMMENT),
                value=caution,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    if review is not None:
        items = [(codes.REVIEW, codes.REVIEW_CODES[review.outcome])]
        if review.label is not None:
            items.append((codes.REVIEWER_CLASS, codes.CLASS_CODES[review.label]))
        for name, value in items:
            groups[0][0].ContentSequence.append(
                hd.sr.CodeContentItem(
                    name=_concept(name),
                    value=_concept(value),
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                )
            )
    frame_index: dict[int, dict[tuple[str, int], int]] = {}

    def frames_of(seg: Dataset) -> dict[tuple[str, int], int]:
        if id(seg) not in frame_index:  # only the SEGs a lookup reaches, as a scan would
            frame_index[id(seg)] = seg_frames_by_source(seg)
        return frame_index[id(seg)]

    for index, finding in enumerate(findings):
        if not isinstance(finding, LesionFinding):
            raise TypeError(f"findings[{index}] must be a LesionFinding")
        source = by_uid.get(finding.source_sop_instance_uid)
        if source is None:
            raise ValueError(f"findings[{index}] refers to an instance not in sources")
        groups.append(_lesion_group(index, finding, source, segs, frames_of, algorithm_id, version))

    library = hd.sr.ImageLibrary(sources)  # every source (TID 1600), added after highdicom
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_person_context=_person_observer(review.reviewer) if review else None,
            observer_device_context=observer,
        ),
        procedure_reported=_concept(codes.ULTRASONOGRAPHY_OF_BREAST),
        imaging_measurements=groups[:1],  # the rest: _add_deferred_content
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, *segs],
        content=report,
        series_instance_uid=output_uid(study_uid, version, series_kind),
        series_number=series_number,
        sop_instance_uid=output_uid(uid_source or study_uid, version, "sr"),
        instance_number=instance_number,
        previous_versions=list(predecessors) or None,
        manufacturer=WECARE_MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description,
        manufacturer_model_name=algorithm.name,
        software_versions=version,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=codes.WECARE_SCHEME,
                name="WeCare private codes",
                responsible_organization=WECARE_MANUFACTURER,
            )
        ],
    )
    _add_deferred_content(sr, library, groups[1:])
    if retired:
        restore_referenced_sop_classes(sr, retired)
    return sr
