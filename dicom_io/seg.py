"""DICOM Segmentation (PS3.3 A.51) of the lesion mask, built with highdicom.

Geometry of ultrasound sources
------------------------------
Most ultrasound images have no Frame of Reference, Image Position/Orientation (Patient)
or Pixel Spacing. highdicom 0.28 then (a) writes no Pixel Measures and no Plane
Orientation functional group, which OHIF 3 cannot display (see
``shared/tools/viewer-check/README.md``) and (b) accepts only one source frame
(highdicom issue #284), so a cine clip cannot be segmented at all.

We therefore give the SEG its own, explicitly synthetic planar geometry: highdicom
receives header-only copies of the sources to which we add a new Frame of Reference UID
that belongs to this SEG only (derived from the source series and model version), Image
Orientation (Patient) 1\\0\\0\\0\\1\\0 (the orientation viewers assume for images
without one), Image Position (Patient) 0\\0\\-k for the k-th source frame, Slice
Thickness 1 and, as Pixel Spacing, the calibration of the B-mode region (Physical Delta
X/Y) of the boxes the model analysed (:func:`dicom_io.regions.analysis_boxes`) when every
box of every source shares one, else 1\\1 (pixel units). No attribute of the source
is changed and no source shares that Frame of Reference, so the SEG claims no spatial
relation to anything else; the frame-to-frame link stays where PS3.3 A.51.5.1 puts it
for sources without a Frame of Reference: the per-frame Derivation Image Sequence
(Source Image Sequence with Referenced Frame Number). Sources that already carry a
complete patient geometry (Frame of Reference, position, orientation, pixel spacing,
slice thickness, distinct positions) are passed to highdicom unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom._standard_utils import is_multiframe_image  # pinned highdicom 0.28.2
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicom_io import codes
from dicom_io.errors import DicomIOError, EmptySegmentationError
from dicom_io.headers import log_notes, restore_referenced_sop_classes, source_header
from dicom_io.regions import analysis_boxes, common_pixel_spacing, tissue_regions
from dicom_io.uids import WECARE_MANUFACTURER, content_key, output_uid

__all__ = [
    "SEGMENT_LABEL",
    "SEG_SERIES_DESCRIPTION",
    "AlgorithmInfo",
    "SegmentationInputError",
    "SourceMasks",
    "build_seg",
    "build_segs",
    "seg_frame_for_source",
    "seg_frame_mask",
    "seg_frames_by_source",
]

SEG_SERIES_DESCRIPTION = "WeCare AI lesion segmentation"
SEGMENT_LABEL = "lesion"
#: RecommendedDisplayCIELabValue of the lesion segment: a saturated yellow, visible on
#: grey ultrasound (sRGB ≈ 255, 221, 0).
LESION_DISPLAY_COLOR = hd.color.CIELabColor(88.0, -5.0, 88.0)
_MULTIFRAME_US = "1.2.840.10008.5.1.4.1.1.3.1"
_IDENTITY_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Synthetic frames are 1 mm slabs 1 mm apart (z = k); readers (highdicom's own among
# them) require Slice Thickness in Pixel Measures once a Frame of Reference is present.
_SYNTHETIC_SLICE_MM = 1.0


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model that produced the outputs (SEG Algorithm Identification, SR observer).

    Attributes
    ----------
    name: str
        Algorithm Name (0066,0036), e.g. "wecare-multitask".
    version: str
        Algorithm Version (0066,0031): the model version string (name, training date,
        weights hash). Also the seed of our deterministic output UIDs.
    family: str
        A key of :data:`dicom_io.codes.ALGORITHM_FAMILIES` (CID 7162).
    """

    name: str
    version: str
    family: str = "Artificial Intelligence"

    def __post_init__(self) -> None:
        for field in ("name", "version"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"AlgorithmInfo.{field} must be a non-empty str")
            if len(value) > 64:
                raise ValueError(f"AlgorithmInfo.{field} must be at most 64 characters (LO)")
            if "\\" in value:
                raise ValueError(f"AlgorithmInfo.{field} must not contain a backslash")
        if self.family not in codes.ALGORITHM_FAMILIES:
            raise ValueError(
                f"AlgorithmInfo.family must be one of {sorted(codes.ALGORITHM_FAMILIES)}"
            )

    @property
    def family_code(self) -> hd.sr.CodedConcept:
        """Algorithm Family Code Sequence item (CID 7162)."""
        code = codes.ALGORITHM_FAMILIES[self.family]
        return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)


class SegmentationInputError(DicomIOError):
    """The sources cannot be encoded in one SEG (e.g. two cine clips with lesions)."""

    code = "seg_unsupported_input"


def _number_of_frames(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _has_patient_geometry(ds: Dataset) -> bool:
    # Complete single-frame patient geometry that highdicom can use as is.
    return (
        _number_of_frames(ds) == 1
        and all(
            keyword in ds
            for keyword in (
                "FrameOfReferenceUID",
                "ImagePositionPatient",
                "ImageOrientationPatient",
                "PixelSpacing",
                "SliceThickness",  # required in Pixel Measures once there is a Frame of Reference
            )
        )
        and ds.SliceThickness not in (None, "")
    )


def _pixel_spacing(sources: Sequence[Dataset]) -> tuple[float, float]:
    # (row spacing, column spacing) in mm when one calibration fits all, else 1\1. The boxes
    # are those the model analysed (dicom_io.regions.analysis_boxes): the same policy as the
    # crops and the SR's measurements, so the SEG never claims a calibration they did not use.
    spacings = set()
    for ds in sources:
        shape = (int(ds.Rows), int(ds.Columns))
        spacing = common_pixel_spacing(analysis_boxes(tissue_regions(ds), shape))
        if spacing is None:
            return (1.0, 1.0)
        spacings.add(spacing)
    if len(spacings) != 1:
        return (1.0, 1.0)
    return spacings.pop()


def _with_synthetic_geometry(
    headers: Sequence[Dataset], frame_of_reference_uid: str
) -> list[Dataset]:
    # ``headers`` are our copies (:func:`source_header`): changed in place.
    spacing = [f"{value:.10g}" for value in _pixel_spacing(headers)]
    proxies = []
    position = 0
    for proxy in headers:
        proxy.FrameOfReferenceUID = frame_of_reference_uid
        proxy.PositionReferenceIndicator = ""
        for keyword in (
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "PixelSpacing",
            "SliceThickness",
            "SharedFunctionalGroupsSequence",
            "PerFrameFunctionalGroupsSequence",
        ):
            if keyword in proxy:
                delattr(proxy, keyword)
        if _number_of_frames(proxy) == 1:
            proxy.ImageOrientationPatient = list(_IDENTITY_ORIENTATION)
            proxy.ImagePositionPatient = [0.0, 0.0, -float(position)]
            proxy.PixelSpacing = spacing
            proxy.SliceThickness = _SYNTHETIC_SLICE_MM
            position += 1
        else:
            measures = Dataset()
            measures.PixelSpacing = spacing
            measures.SliceThickness = _SYNTHETIC_SLICE_MM
            orientation = Dataset()
            orientation.ImageOrientationPatient = list(_IDENTITY_ORIENTATION)
            shared = Dataset()
            shared.PixelMeasuresSequence = DicomSequence([measures])
            shared.PlaneOrientationSequence = DicomSequence([orientation])
            proxy.SharedFunctionalGroupsSequence = DicomSequence([shared])
            per_frame = []
            for _ in range(_number_of_frames(proxy)):
                plane = Dataset()
                plane.ImagePositionPatient = [0.0, 0.0, -float(position)]
                item = Dataset()
                item.PlanePositionSequence = DicomSequence([plane])
                per_frame.append(item)
                position += 1
            proxy.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
        proxies.append(proxy)
    return proxies


def _validate(
    sources: Sequence[Dataset],
    masks: Sequence[np.ndarray],
    frame_numbers: Sequence[Sequence[int]],
    series_number: int,
) -> list[tuple[np.ndarray, tuple[int, ...]]]:
    # Each mask with its frame numbers, sorted by frame number; no full-clip array is
    # made (a 600-frame cine would need one byte per pixel of every frame).
    if not sources:
        raise ValueError("sources must not be empty")
    if not (len(sources) == len(masks) == len(frame_numbers)):
        raise ValueError("sources, masks and frame_numbers must have the same length")
    if not isinstance(series_number, int) or isinstance(series_number, bool) or series_number < 0:
        raise ValueError("series_number must be a non-negative int")
    series = {str(ds.SeriesInstanceUID) for ds in sources}
    studies = {str(ds.StudyInstanceUID) for ds in sources}
    if len(series) != 1 or len(studies) != 1:
        raise ValueError("sources must be instances of one series")
    if len({str(ds.SOPInstanceUID) for ds in sources}) != len(sources):
        raise ValueError("sources must not repeat an instance")
    checked: list[tuple[np.ndarray, tuple[int, ...]]] = []
    for index, (ds, mask, numbers) in enumerate(zip(sources, masks, frame_numbers, strict=True)):
        mask = np.asarray(mask)
        rows, columns, total = int(ds.Rows), int(ds.Columns), _number_of_frames(ds)
        if mask.ndim == 2:
            mask = mask[np.newaxis]
        if mask.ndim != 3 or mask.shape[1:] != (rows, columns):
            raise ValueError(
                f"masks[{index}] must be (N, {rows}, {columns}) for its source, got {mask.shape}"
            )
        if mask.dtype != bool:
            raise TypeError(f"masks[{index}] must be a bool array, got {mask.dtype}")
        numbers = [int(n) for n in numbers]
        if len(numbers) != mask.shape[0]:
            raise ValueError(f"frame_numbers[{index}] must have one number per mask frame")
        if len(set(numbers)) != len(numbers) or any(n < 1 or n > total for n in numbers):
            raise ValueError(f"frame_numbers[{index}] must be distinct values in 1..{total}")
        order = np.argsort(np.asarray(numbers, dtype=int), kind="stable")
        checked.append((mask[order], tuple(int(numbers[k]) for k in order)))
    return checked


def build_seg(
    sources: Sequence[Dataset],
    masks: Sequence[np.ndarray],
    frame_numbers: Sequence[Sequence[int]],
    algorithm: AlgorithmInfo,
    series_number: int,
    *,
    uid_source: str | None = None,
    algorithm_type: str = "AUTOMATIC",
    content_creator: str | None = None,
    further_sources: Sequence[Dataset] = (),
    series_description: str = SEG_SERIES_DESCRIPTION,
) -> Dataset:
    """Build a BINARY Segmentation with one segment "lesion".

    Parameters
    ----------
    sources: Sequence[pydicom.Dataset]
        Source instances of one series (headers suffice; Pixel Data is not read).
    masks: Sequence[numpy.ndarray]
        ``masks[i]`` is ``(N_i, Rows, Columns) bool`` for ``sources[i]``, on the source's
        full pixel grid.
    frame_numbers: Sequence[Sequence[int]]
        ``frame_numbers[i]`` are the 1-based source frame numbers of ``masks[i]``
        (frames not listed are treated as "no lesion").
    algorithm: AlgorithmInfo
        Model identity: Segment Algorithm Name/Version, Manufacturer Model Name and
        Software Versions.
    series_number: int
        Series Number of the SEG series.
    uid_source: str, optional
        UID the output UIDs derive from; default the sources' Series Instance UID. Pass
        the source SOP Instance UID when building one SEG per instance of a series
        (after :class:`SegmentationInputError`), so the SEGs get distinct UIDs.
    algorithm_type: str
        Segment Algorithm Type (0062,0008): "AUTOMATIC" (the model's SEG), "SEMIAUTOMATIC"
        (a radiologist accepted or edited the model's outline) or "MANUAL" (drawn from
        nothing: no Segment Algorithm Identification is written).
    content_creator: str, optional
        Content Creator's Name (0070,0084): the radiologist who made a corrected SEG.
    further_sources: Sequence[pydicom.Dataset]
        Other images of the study this SEG derives from without a frame-to-frame link
        (e.g. the AI SEG a radiologist corrected; headers with SOP Class/Instance, Series
        and Study Instance UIDs): listed in the Source Image Sequence (0008,2112) of the
        General Image module and, as their own series after the sources' series, in the
        Referenced Series Sequence of the Common Instance Reference module (PS3.3 C.12.2).
    series_description: str
        Series Description (and Content Description) of the SEG.

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.seg.Segmentation``: Manufacturer "WeCare", Series Description
        :data:`SEG_SERIES_DESCRIPTION`, one frame per source frame that contains lesion
        pixels, each referencing its source instance and frame (Derivation Image
        Sequence). Series/SOP Instance UIDs are :func:`output_uid` of the source Series
        Instance UID (or ``uid_source``), ``algorithm.version`` and "seg-series"/"seg",
        so a re-run reproduces them.

    Raises
    ------
    EmptySegmentationError
        No mask has a positive pixel. By design no SEG is built for a normal study: an
        empty SEG shows nothing in the viewer yet adds a series the radiologist must
        open, and several PACS refuse or mis-display SEGs without frames. The SR states
        "no lesion found" instead.
    SegmentationInputError
        Lesions on frames of more than one multi-frame instance, on both multi-frame
        and single-frame instances, or on images of different sizes (not representable
        in one SEG by highdicom); call once per instance with ``uid_source`` instead.
    ValueError, TypeError
        Inconsistent arguments (shapes, frame numbers, several series).
    """
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError("algorithm must be an AlgorithmInfo")
    algorithm_kind = hd.seg.SegmentAlgorithmTypeValues(algorithm_type)
    checked = _validate(sources, masks, frame_numbers, series_number)
    keep = [index for index, (mask, _) in enumerate(checked) if mask.any()]
    if not keep:
        raise EmptySegmentationError("no frame contains a lesion: no SEG is built")
    kept_sources = [sources[index] for index in keep]
    kept_masks = [checked[index] for index in keep]
    multi = [ds for ds in kept_sources if _number_of_frames(ds) > 1]
    if multi and len(kept_sources) > 1:
        raise SegmentationInputError(
            "lesions on a multi-frame instance and on other instances: build one SEG per instance"
        )

    if len({(int(ds.Rows), int(ds.Columns)) for ds in kept_sources}) > 1:
        raise SegmentationInputError(
            "lesions on images of different sizes: build one SEG per instance"
        )
    if uid_source is not None and (not isinstance(uid_source, str) or not uid_source):
        raise ValueError("uid_source must be a non-empty str or None")
    series_uid = uid_source or str(kept_sources[0].SeriesInstanceUID)
    positions = {tuple(float(v) for v in ds.get("ImagePositionPatient", [])) for ds in kept_sources}
    headers = [source_header(ds) for ds in kept_sources]
    if all(_has_patient_geometry(ds) for ds in kept_sources) and len(positions) == len(
        kept_sources
    ):
        proxies = [header for header, _ in headers]
    else:
        proxies = _with_synthetic_geometry(
            [header for header, _ in headers],
            output_uid(series_uid, algorithm.version, "seg-frame-of-reference"),
        )
    # highdicom copies Patient/Study/Equipment from the first source only.
    log_notes(headers[0][1], "SEG")
    plane_positions = None
    if multi and not is_multiframe_image(proxies[0]):
        # Several frames in a single-frame IOD (US Image or Secondary Capture with Number
        # of Frames > 1, as some writers do): highdicom can only segment such a clip as
        # the multi-frame class; the references get the real class back below.
        proxies[0].SOPClassUID = _MULTIFRAME_US
    if multi:
        # One cine clip: give highdicom only the frames with a lesion and their planes
        # (frame n of the synthetic geometry lies at z = -(n - 1)); highdicom matches
        # each plane to its source frame for the Derivation Image Sequence. Memory is
        # then ∝ lesion frames, not clip length (highdicom otherwise wants every frame).
        mask, numbers = kept_masks[0]
        lesion = [k for k in range(len(numbers)) if mask[k].any()]
        pixel_array = mask[lesion]
        plane_positions = [
            hd.PlanePositionSequence(
                hd.CoordinateSystemNames.PATIENT, (0.0, 0.0, -float(numbers[k] - 1))
            )
            for k in lesion
        ]
    else:
        pixel_array = np.concatenate([mask for mask, _ in kept_masks], axis=0)

    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=codes.LESION,
        algorithm_type=algorithm_kind,
        # PS3.3 C.8.20.4: Segment Algorithm Identification only for (semi)automatic segments.
        algorithm_identification=None
        if algorithm_kind == hd.seg.SegmentAlgorithmTypeValues.MANUAL
        else hd.AlgorithmIdentificationSequence(
            name=algorithm.name, family=algorithm.family_code, version=algorithm.version
        ),
        tracking_id="lesion",
        tracking_uid=output_uid(series_uid, algorithm.version, "seg-tracking"),
        anatomic_regions=[codes.BREAST],
        display_color=LESION_DISPLAY_COLOR,
    )
    seg = hd.seg.Segmentation(
        source_images=proxies,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=output_uid(series_uid, algorithm.version, "seg-series"),
        series_number=series_number,
        sop_instance_uid=output_uid(series_uid, algorithm.version, "seg"),
        instance_number=1,
        manufacturer=WECARE_MANUFACTURER,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=output_uid(algorithm.name, algorithm.version, "device")[-16:],
        content_label="LESION",
        content_description=series_description,
        content_creator_name=content_creator,
        series_description=series_description,
        omit_empty_frames=True,
        plane_positions=plane_positions,
        further_source_images=list(further_sources) or None,
    )
    retired = {
        str(ds.SOPInstanceUID): str(ds.SOPClassUID)
        for ds, proxy in zip(kept_sources, proxies, strict=True)
        if str(ds.SOPClassUID) != str(proxy.SOPClassUID)
    }
    if retired:
        restore_referenced_sop_classes(seg, retired)
    return seg


@dataclass(frozen=True)
class SourceMasks:
    """The lesion masks of one source instance, as :func:`build_segs` takes them.

    Attributes
    ----------
    source: pydicom.Dataset
        The source's header (Pixel Data is never read).
    masks: numpy.ndarray
        ``(N, Rows, Columns) bool``, one per entry of ``frame_numbers``.
    frame_numbers: tuple[int, ...]
        1-based source frame numbers of ``masks`` (frames not listed have no lesion).
    """

    source: Dataset
    masks: np.ndarray
    frame_numbers: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.masks, np.ndarray) or self.masks.ndim != 3:
            raise ValueError("SourceMasks.masks must be an (N, H, W) array")
        if len(self.frame_numbers) != self.masks.shape[0]:
            raise ValueError("SourceMasks.frame_numbers must have one number per mask")


def build_segs(
    items: Sequence[SourceMasks], algorithm: AlgorithmInfo, series_number: int
) -> list[Dataset]:
    """The SEGs of a set of sources: as few as the standard allows, versioned by content.

    One SEG per source series holding every source of that series with a lesion; where one
    SEG cannot hold them (several cine clips, a clip beside single frames, mixed sizes: see
    :class:`SegmentationInputError`), one SEG per instance. Each SEG's UIDs derive from
    :func:`dicom_io.uids.content_key` of its series and the instances it holds, so a late
    image of a series gets a SEG of its own and never changes the one already sent, while
    the same images give the same UIDs again. Series without a lesion get no SEG.
    """
    by_series: dict[str, list[SourceMasks]] = {}
    for item in items:
        by_series.setdefault(str(item.source.SeriesInstanceUID), []).append(item)
    segs: list[Dataset] = []
    for series_uid, group in by_series.items():
        with_lesion = [item for item in group if item.masks.any()]
        if not with_lesion:
            continue
        try:
            segs.append(_build_for(with_lesion, series_uid, algorithm, series_number))
        except SegmentationInputError:
            segs.extend(
                _build_for([item], series_uid, algorithm, series_number) for item in with_lesion
            )
    return segs


def _build_for(
    items: Sequence[SourceMasks], series_uid: str, algorithm: AlgorithmInfo, series_number: int
) -> Dataset:
    key = content_key(series_uid, [str(item.source.SOPInstanceUID) for item in items])
    return build_seg(
        [item.source for item in items],
        [item.masks for item in items],
        [item.frame_numbers for item in items],
        algorithm,
        series_number,
        uid_source=key,
    )


def seg_frame_for_source(
    seg: Dataset, sop_instance_uid: str, frame_number: int | None = None
) -> int | None:
    """Return the SEG frame number (1-based) derived from a source instance/frame.

    ``frame_number`` None matches a single-frame source (no Referenced Frame Number, or
    frame 1). Returns None when the SEG has no frame for it (no lesion there).
    """
    return seg_frames_by_source(seg).get((str(sop_instance_uid), frame_number or 1))


def seg_frames_by_source(seg: Dataset) -> dict[tuple[str, int], int]:
    """Every answer of :func:`seg_frame_for_source` for ``seg`` at once, read in one pass
    (one scan of the SEG; :func:`seg_frame_for_source` is a look-up in it).

    Keys are (source SOP Instance UID, source frame number; 1 for a single-frame source),
    values the first SEG frame (1-based) derived from it. For a report with a lesion
    group per frame of a many-frame SEG (one lookup each instead of a scan each).
    """
    frames: dict[tuple[str, int], int] = {}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        for derivation in item.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                uid = str(source.ReferencedSOPInstanceUID)
                numbers = source.get("ReferencedFrameNumber")
                values = [1] if numbers is None else [int(n) for n in _as_list(numbers)]
                for number in values:
                    frames.setdefault((uid, number), index)
    return frames


def seg_frame_mask(
    seg: Dataset, sop_instance_uid: str, frame_number: int | None = None
) -> np.ndarray | None:
    """The ``(Rows, Columns) bool`` mask a BINARY SEG holds for one source frame, or None.

    Only that frame's bits are unpacked (PS3.5 8.1.1: frames follow each other bit by bit,
    least significant bit first), so a dashboard preview of a 200-frame SEG stays cheap.
    None: the SEG has no frame for that source frame (no lesion there).
    """
    index = seg_frame_for_source(seg, sop_instance_uid, frame_number)
    if index is None:
        return None
    rows, columns = int(seg.Rows), int(seg.Columns)
    size = rows * columns
    start_bit = (index - 1) * size
    data = np.frombuffer(seg.PixelData, dtype=np.uint8)
    first, last = start_bit // 8, (start_bit + size + 7) // 8
    bits = np.unpackbits(data[first:last], bitorder="little")
    offset = start_bit - first * 8
    return bits[offset : offset + size].reshape(rows, columns).astype(bool)


def _as_list(value: object) -> list[object]:
    # Referenced Frame Number is IS with VM 1-n: a MultiValue or a single value.
    if isinstance(value, str | int | float):  # IS values are str/int subclasses
        return [value]
    return list(value)  # type: ignore[call-overload]


def load_standard_tables() -> None:
    """Read highdicom's tables of the standard (SOP class -> IOD -> modules -> attributes) now.

    highdicom reads them (about 0.3 s) on the first SEG or SR a process builds, and caches
    them; a worker calls this at start-up so its first study does not wait for them.
    Tables of a highdicom version that has none of these loaders are left to load lazily.
    """
    from highdicom import _standard_utils as tables  # private, hence the getattr below

    for name in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
        loader = getattr(tables, name, None)
        if callable(loader):
            loader()

