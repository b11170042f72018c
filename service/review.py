"""A radiologist's review of one image of a done job, as a chain of named stages::

    check ──▶ rasterise ──▶ measure ──▶ build ──▶ write ──▶ record
    (job done,  (outlines →   (sizes in mm   (corrected  (files,      (outputs + outbox
     image of    masks, or     from the US    SEG, review  each under   rows, review row,
     the job)    the AI mask)  region, and    SR)          its UID)     audit event)
                               BI-RADS words)

Accept keeps the AI outline (the AI SEG's frames, or the outlines the editor sends), edit
sends new outlines, reject says "no lesion". Every review except an empty one makes a
corrected SEG; every review makes a review SR (:mod:`dicom_io.corrected`). Both go to every
configured destination through the outbox, as the AI outputs did; those stay unchanged.

Idempotence: the review's content (job, image, action, origin, class, reviewer and the
rasterised mask of every reviewed frame) gives its key; the outputs' UIDs derive from that
key (:func:`dicom_io.uids.output_uid`) and the review row is unique on it, so a double click
makes one review, one SEG and one SR, and the second answer names the same objects.

Stages that refuse raise :class:`ReviewError` (HTTP status, code, a message without patient
data); nothing is recorded then.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from scipy import ndimage
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_io.corrected import build_corrected_seg, build_review_sr
from dicom_io.errors import DicomIOError, EmptySegmentationError
from dicom_io.polygons import (
    Polygon,
    PolygonError,
    mask_to_polygons,
    parse_polygons,
    polygons_to_mask,
)
from dicom_io.read import iter_frames, read_header, read_info
from dicom_io.regions import CropBox, analysis_boxes
from dicom_io.seg import AlgorithmInfo, seg_frame_mask
from dicom_io.sr import LesionFinding, ReviewRecord, StudyClassification
from dicom_io.types import ImageInfo
from service.logs import uid_hash
from service.pipeline import (
    WrittenOutput,
    algorithm_info,
    as_description,
    box_measurements,
    describe_in_box,
)
from storage.audit import AuditAction, record
from storage.files import checked_uid, write_atomic
from storage.models import AnalysedImage, Instance, Job, JobState, Output, Review
from storage.outbox import add_output
from storage.reviews import NewReview, add_review, find_by_key

log = logging.getLogger(__name__)

REVIEW_SEG_SERIES_NUMBER = 992
REVIEW_SR_SERIES_NUMBER = 993
ACTIONS = ("accept", "edit", "reject")
ORIGINS = ("ai", "scratch")
LABELS = ("benign", "malignant")


class ReviewError(Exception):
    """A review that cannot be made: HTTP status, a code and a message for the radiologist."""

    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# ---- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameOutlines:
    """What the editor sent for one frame: the outlines as JSON, checked in :func:`rasterise`."""

    frame: int
    lesions: Any


@dataclass(frozen=True)
class ReviewRequest:
    """One review as the editor sends it (see the API contract)."""

    sop_instance_uid: str
    action: str
    origin: str = "ai"
    label: str | None = None
    frames: tuple[FrameOutlines, ...] = ()

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ReviewError(
                HTTPStatus.UNPROCESSABLE_ENTITY, "bad_action", f"action must be one of {ACTIONS}"
            )
        if self.origin not in ORIGINS:
            raise ReviewError(
                HTTPStatus.UNPROCESSABLE_ENTITY, "bad_origin", f"origin must be one of {ORIGINS}"
            )
        if self.label is not None and self.label not in LABELS:
            raise ReviewError(
                HTTPStatus.UNPROCESSABLE_ENTITY, "bad_label", f"label must be null or {LABELS}"
            )


@dataclass(frozen=True)
class Reviewer:
    """Who reviews, and from where (for the audit trail)."""

    name: str
    client: str | None = None
    token_name: str | None = None


# ---- stage results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewTarget:
    """Stage 1's result: the job, the image and the AI outputs the review refers to."""

    job: Job
    source_path: Path
    header: Dataset = field(repr=False)
    info: ImageInfo
    algorithm: AlgorithmInfo
    classification: StudyClassification
    ai_seg: Output | None
    ai_sr: Output | None

    @property
    def multi_frame(self) -> bool:
        return self.info.number_of_frames > 1


@dataclass(frozen=True)
class CorrectedFrame:
    """One reviewed frame: its outlines and each lesion's mask on the full frame grid."""

    frame: int
    polygons: tuple[Polygon, ...]
    lesions: tuple[np.ndarray, ...] = field(repr=False)  # (H, W) bool each, non-empty

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """(H, W) bool: the union of the lesions (what the corrected SEG holds)."""
        out = np.zeros(shape, dtype=bool)
        for lesion in self.lesions:
            out |= lesion
        return out


@dataclass(frozen=True)
class CorrectedImage:
    """Stage 2's result: the reviewed frames, the outcome word and the content key."""

    frames: tuple[CorrectedFrame, ...]
    outcome: str  # accepted | corrected | drawn | rejected
    from_ai: bool
    content_key: str


@dataclass(frozen=True)
class MeasuredLesion:
    """Stage 3's result for one lesion: its SR finding and what the workspace shows."""

    frame: int
    finding: LesionFinding
    descriptors: dict[str, Any] | None


@dataclass(frozen=True)
class ReviewOutputPublic:
    kind: str
    sop_instance_uid: str
    destinations: list[str]


@dataclass(frozen=True)
class ReviewResult:
    """What the API answers: the review and the objects it made (or had made, if repeated)."""

    review_id: int
    seg_sop_instance_uid: str | None
    sr_sop_instance_uid: str
    outputs: list[ReviewOutputPublic]
    duplicate: bool
    stage_seconds: dict[str, float]


# ---- the chain ---------------------------------------------------------------------------------


def submit_review(
    session: Session,
    job_id: int,
    request: ReviewRequest,
    reviewer: Reviewer,
    *,
    out_root: Path,
    destinations: Sequence[str],
) -> ReviewResult:
    """Check, rasterise, measure, build, write and record one review (see the module doc).

    ``out_root`` is the data directory's outputs folder: files go to ``<out_root>/<job id>/``.
    Raises :class:`ReviewError` before anything is recorded.
    """
    times: dict[str, float] = {}
    tick = time.perf_counter()
    target = check_request(session, job_id, request)
    tick = _lap(times, "check", tick)
    corrected = rasterise(target, request, reviewer.name)
    tick = _lap(times, "rasterise", tick)
    existing = find_by_key(session, corrected.content_key)
    if existing is not None:
        # The same review again (a double click): the answer names what the first one made.
        _audit(session, reviewer, existing, target, duplicate=True)
        return _result(session, existing, duplicate=True, times=times)
    lesions = measure(target, corrected)
    tick = _lap(times, "measure", tick)
    seg, sr = build(session, target, corrected, lesions, request, reviewer.name)
    tick = _lap(times, "build", tick)
    written = write([d for d in (seg, sr) if d is not None], out_root / str(job_id))
    tick = _lap(times, "write", tick)
    review, created = record_review(
        session, target, request, corrected, lesions, written, reviewer, destinations
    )
    _lap(times, "record", tick)
    return _result(session, review, duplicate=not created, times=times)


def check_request(session: Session, job_id: int, request: ReviewRequest) -> ReviewTarget:
    """Stage 1: the job exists and is done, the image is one this job reported."""
    job = session.get(Job, job_id)
    if job is None:
        raise ReviewError(HTTPStatus.NOT_FOUND, "not_found", f"no job {job_id}")
    if job.state != JobState.DONE:
        raise ReviewError(
            HTTPStatus.CONFLICT,
            "job_not_done",
            f"job {job_id} is {job.state}: only a done job's results can be reviewed",
        )
    if not job.model_version or not job.predicted_class or not job.probabilities:
        raise ReviewError(
            HTTPStatus.CONFLICT,
            "no_ai_result",
            f"job {job_id} has no AI class to review (no image was analysed within the "
            "model's scope)",
        )
    uid = request.sop_instance_uid
    instance = session.scalar(
        select(Instance).where(
            Instance.study_id == job.study_id,
            Instance.sop_instance_uid == uid,
            Instance.conflict_of_id.is_(None),
            Instance.skip_reason.is_(None),
        )
    )
    analysed = session.scalar(
        select(AnalysedImage).where(
            AnalysedImage.sop_instance_uid == uid,
            AnalysedImage.model_version == job.model_version,
            AnalysedImage.job_id <= job.id,
        )
    )
    if instance is None or analysed is None or not Path(instance.path).is_file():
        raise ReviewError(
            HTTPStatus.NOT_FOUND,
            "image_not_in_job",
            f"image {uid} is not an image of job {job_id}: review it on its own job's page",
        )
    try:
        header = read_header(instance.path)
        info = read_info(instance.path)
    except DicomIOError as exc:
        raise ReviewError(
            HTTPStatus.UNPROCESSABLE_ENTITY, "unreadable_image", f"the image cannot be read: {exc}"
        ) from None
    ai_sr = session.scalar(
        select(Output)
        .where(Output.job_id == job.id, Output.kind == "sr")
        .order_by(Output.id.desc())
        .limit(1)
    )
    probabilities = {k: float(v) for k, v in (job.probabilities or {}).items()}
    ai_seg = analysed.seg_output
    for output in (ai_seg, ai_sr):
        if output is not None and not Path(output.path).is_file():
            # Referenced by UID all the same would need its header: go without, and say so.
            log.warning("AI %s of job %d is no longer on disk: not referenced", output.kind, job.id)
    if ai_seg is not None and not Path(ai_seg.path).is_file():
        ai_seg = None
    if ai_sr is not None and not Path(ai_sr.path).is_file():
        ai_sr = None
    return ReviewTarget(
        job=job,
        source_path=Path(instance.path),
        header=header,
        info=info,
        algorithm=algorithm_info(_JobModel(job.model_version, job.model_status or "")),
        classification=StudyClassification(job.predicted_class, probabilities),
        ai_seg=ai_seg,
        ai_sr=ai_sr,
    )


def rasterise(target: ReviewTarget, request: ReviewRequest, reviewer: str) -> CorrectedImage:
    """Stage 2: the outlines (or, for a bare accept, the AI mask) as lesion masks per frame.

    Refuses (422) outlines :func:`dicom_io.polygons.parse_polygons` refuses, frame numbers
    outside the image or repeated, an edit without frames and a reject with outlines.
    """
    shape = target.info.shape
    total = target.info.number_of_frames
    numbers = [item.frame for item in request.frames]
    for number in numbers:
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= total:
            raise _unprocessable(
                "bad_frame", f"frame {number} is not a frame of this image (1..{total})"
            )
    if len(set(numbers)) != len(numbers):
        raise _unprocessable("bad_frame", "each frame may be sent once")
    frames: list[CorrectedFrame] = []
    if request.action == "reject":
        if any(_has_outlines(item.lesions) for item in request.frames):
            raise _unprocessable("reject_with_outline", "a rejection (no lesion) sends no outline")
        for number in numbers or _ai_frames(target) or [1]:
            frames.append(CorrectedFrame(number, (), ()))
    elif request.action == "accept" and not request.frames:
        for number, mask in _ai_masks(target):
            frames.append(_frame_from_mask(number, mask))
        if not frames:  # the model found no lesion, and the radiologist agrees
            frames.append(CorrectedFrame(1, (), ()))
    else:
        if not request.frames:
            raise _unprocessable("no_frames", "an edit sends the outlines of at least one frame")
        for item in request.frames:
            try:
                polygons = parse_polygons(item.lesions, shape)
            except PolygonError as exc:
                raise _unprocessable("bad_polygon", f"frame {item.frame}: {exc}") from None
            frames.append(_frame_from_polygons(item.frame, polygons, shape))
    frames.sort(key=lambda f: f.frame)
    outcome = {"accept": "accepted", "reject": "rejected"}.get(request.action) or (
        "corrected" if request.origin == "ai" else "drawn"
    )
    from_ai = request.action == "accept" or request.origin == "ai"
    return CorrectedImage(
        frames=tuple(frames),
        outcome=outcome,
        from_ai=from_ai,
        content_key=_content_key(target, request, reviewer, frames, outcome),
    )


def measure(target: ReviewTarget, corrected: CorrectedImage) -> list[MeasuredLesion]:
    """Stage 3: each lesion's size (its US region's calibration) and BI-RADS descriptors.

    As the pipeline does: measured with :func:`dicom_io.measure.mask_measurements` in the
    calibration of the analysis box (:func:`dicom_io.regions.analysis_boxes`) that holds most
    of the lesion, and described by :func:`inference.descriptors.describe_lesion` on that
    box's pixels.
    """
    wanted = {f.frame: f for f in corrected.frames if f.lesions}
    if not wanted:
        return []
    boxes = analysis_boxes(target.info.regions, target.info.shape)
    measured: list[MeasuredLesion] = []
    for numbers, pixels in iter_frames(target.source_path):
        for k, number in enumerate(numbers):
            frame = wanted.get(int(number))
            if frame is None:
                continue
            for lesion in frame.lesions:
                measured.append(_measure_lesion(target, number, pixels[k], lesion, boxes))
    measured.sort(key=lambda m: m.frame)
    return measured


def build(
    session: Session,
    target: ReviewTarget,
    corrected: CorrectedImage,
    lesions: Sequence[MeasuredLesion],
    request: ReviewRequest,
    reviewer: str,
) -> tuple[Dataset | None, Dataset]:
    """Stage 4: the corrected SEG (None when no frame holds a lesion) and the review SR."""
    ai_seg = dcmread(target.ai_seg.path, stop_before_pixels=True) if target.ai_seg else None
    ai_sr = dcmread(target.ai_sr.path, stop_before_pixels=True) if target.ai_sr else None
    seg: Dataset | None = None
    with_lesion = [f for f in corrected.frames if f.lesions]
    if with_lesion:
        shape = target.info.shape
        try:
            seg = build_corrected_seg(
                target.header,
                np.stack([f.mask(shape) for f in with_lesion]),
                [f.frame for f in with_lesion],
                target.algorithm,
                reviewer=reviewer,
                from_ai=corrected.from_ai,
                ai_seg=ai_seg,
                uid_source=corrected.content_key,
                series_number=REVIEW_SEG_SERIES_NUMBER,
            )
        except EmptySegmentationError:
            seg = None
    earlier = session.scalar(
        select(func.count(Review.id)).where(Review.sop_instance_uid == target.info.sop_instance_uid)
    )
    sr = build_review_sr(
        target.header,
        seg,
        target.classification,
        [m.finding for m in lesions] if seg is not None else [],
        target.algorithm,
        ReviewRecord(reviewer=reviewer, outcome=corrected.outcome, label=request.label),
        ai_sr=ai_sr,
        uid_source=corrected.content_key,
        series_number=REVIEW_SR_SERIES_NUMBER,
        instance_number=int(earlier or 0) + 1,
    )
    return seg, sr


def write(datasets: Sequence[Dataset], out_dir: Path) -> list[WrittenOutput]:
    """Stage 5: each object in ``<out_dir>/<SOPInstanceUID>.dcm`` (kept if already there)."""
    written = []
    for ds in datasets:
        kind = "sr" if str(ds.Modality) == "SR" else "seg"
        path = out_dir / f"{checked_uid(str(ds.SOPInstanceUID))}.dcm"
        if not path.exists():
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            write_atomic(path, buf.getvalue())
        written.append(
            WrittenOutput(
                kind, str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPClassUID), path
            )
        )
    return written


def record_review(
    session: Session,
    target: ReviewTarget,
    request: ReviewRequest,
    corrected: CorrectedImage,
    lesions: Sequence[MeasuredLesion],
    written: Sequence[WrittenOutput],
    reviewer: Reviewer,
    destinations: Sequence[str],
) -> tuple[Review, bool]:
    """Stage 6: outputs and their outbox rows, the review row and the audit event, in the
    caller's transaction (all or nothing)."""
    job = target.job
    try:
        # One savepoint: if an identical review committed meanwhile (a concurrent double
        # click), its outputs and outbox rows are the ones kept, and ours are rolled back.
        with session.begin_nested():
            recorded: dict[str, Output] = {}
            for out in written:
                recorded[out.kind] = add_output(
                    session,
                    job,
                    kind=out.kind,
                    sop_instance_uid=out.sop_instance_uid,
                    series_instance_uid=out.series_instance_uid,
                    sop_class_uid=out.sop_class_uid,
                    path=str(out.path),
                    destinations=destinations,
                    model_version=job.model_version,
                    predecessor_id=target.ai_sr.id if out.kind == "sr" and target.ai_sr else None,
                )
            seg_out, sr_out = recorded.get("seg"), recorded.get("sr")
            review, created = add_review(
                session,
                NewReview(
                    job_id=job.id,
                    sop_instance_uid=target.info.sop_instance_uid,
                    reviewer=reviewer.name,
                    action=request.action,
                    origin="ai" if corrected.from_ai else "scratch",
                    outcome=corrected.outcome,
                    label=request.label,
                    frames=_frames_json(corrected, lesions),
                    content_key=corrected.content_key,
                    seg_output_id=seg_out.id if seg_out else None,
                    sr_output_id=sr_out.id if sr_out else None,
                ),
            )
            if not created:
                raise _AlreadyRecorded(review.id)
    except _AlreadyRecorded as done:
        existing = session.get(Review, done.review_id)
        assert existing is not None
        review, created = existing, False
    _audit(session, reviewer, review, target, duplicate=not created)
    log.info(
        "review %d of image %s (job %d): %s, %d lesion(s)",
        review.id,
        uid_hash(target.info.sop_instance_uid),
        job.id,
        corrected.outcome,
        len(lesions),
    )
    return review, created


# ---- helpers -----------------------------------------------------------------------------------


class _AlreadyRecorded(Exception):
    """The same review was recorded by a concurrent request: roll ours back, use that one."""

    def __init__(self, review_id: int) -> None:
        super().__init__(review_id)
        self.review_id = review_id


@dataclass(frozen=True)
class _JobModel:
    """The model as the job recorded it, for :func:`service.pipeline.algorithm_info`."""

    version: str
    status: str


def _lap(times: dict[str, float], stage: str, since: float) -> float:
    now = time.perf_counter()
    times[stage] = round(now - since, 3)
    return now


def _unprocessable(code: str, message: str) -> ReviewError:
    return ReviewError(HTTPStatus.UNPROCESSABLE_ENTITY, code, message)


def _has_outlines(raw: Any) -> bool:
    return not (raw is None or (isinstance(raw, list | tuple) and len(raw) == 0))


def _ai_seg_dataset(target: ReviewTarget) -> Dataset | None:
    return dcmread(target.ai_seg.path) if target.ai_seg is not None else None


def _ai_frames(target: ReviewTarget) -> list[int]:
    """The image's frames with an AI lesion (from the AI SEG's derivation references)."""
    if target.ai_seg is None:
        return []
    seg = dcmread(target.ai_seg.path, stop_before_pixels=True)
    uid = target.info.sop_instance_uid
    found: set[int] = set()
    for item in seg.PerFrameFunctionalGroupsSequence:
        for derivation in item.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                if source.ReferencedSOPInstanceUID != uid:
                    continue
                numbers = source.get("ReferencedFrameNumber")
                if numbers is None:
                    found.add(1)
                else:
                    values = [numbers] if isinstance(numbers, int | str) else list(numbers)
                    found.update(int(n) for n in values)
    return sorted(found)


def _ai_masks(target: ReviewTarget) -> list[tuple[int, np.ndarray]]:
    """(frame, (H, W) bool) of every frame the AI SEG holds for the image."""
    seg = _ai_seg_dataset(target)
    if seg is None:
        return []
    uid = target.info.sop_instance_uid
    out = []
    for number in _ai_frames(target):
        mask = seg_frame_mask(seg, uid, number if target.multi_frame else None)
        if mask is not None and mask.any():
            out.append((number, mask))
    return out


def _frame_from_mask(number: int, mask: np.ndarray) -> CorrectedFrame:
    """A frame accepted as the AI segmented it: one lesion per 8-connected component."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    lesions = tuple(labels == k for k in range(1, count + 1))
    return CorrectedFrame(number, tuple(mask_to_polygons(mask)), lesions)


def _frame_from_polygons(
    number: int, polygons: Sequence[Polygon], shape: tuple[int, int]
) -> CorrectedFrame:
    """A frame as outlined: one lesion per polygon (an outline covering no pixel centre is
    kept as sent but measures nothing)."""
    lesions = []
    for polygon in polygons:
        mask = polygons_to_mask([polygon], shape).astype(bool)
        if mask.any():
            lesions.append(mask)
    return CorrectedFrame(number, tuple(polygons), tuple(lesions))


def _content_key(
    target: ReviewTarget,
    request: ReviewRequest,
    reviewer: str,
    frames: Sequence[CorrectedFrame],
    outcome: str,
) -> str:
    """sha256 of what the review says: same content, same key (and same output UIDs)."""
    shape = target.info.shape
    digest = hashlib.sha256()
    head = {
        "job": target.job.id,
        "image": target.info.sop_instance_uid,
        "model": target.algorithm.version,
        "outcome": outcome,
        "label": request.label,
        "reviewer": reviewer,
        "frames": [[f.frame, len(f.lesions)] for f in frames],
    }
    digest.update(json.dumps(head, sort_keys=True).encode())
    for f in frames:
        digest.update(np.packbits(f.mask(shape)).tobytes())
    return digest.hexdigest()


def _box_of(lesion: np.ndarray, boxes: Sequence[CropBox]) -> CropBox | None:
    """The analysis box holding most of the lesion (None: none holds any of it)."""
    best, most = None, 0
    for box in boxes:
        inside = int(np.count_nonzero(lesion[box.slices]))
        if inside > most:
            best, most = box, inside
    return best


def _measure_lesion(
    target: ReviewTarget,
    number: int,
    pixels: np.ndarray,
    lesion: np.ndarray,
    boxes: Sequence[CropBox],
) -> MeasuredLesion:
    box = _box_of(lesion, boxes)
    area_mm2 = long_mm = short_mm = None
    description, words = None, None
    if box is not None:  # sizes and words as the pipeline gives the AI's lesions
        area_mm2, long_mm, short_mm = box_measurements(lesion, box)
        found = describe_in_box(pixels[box.slices], lesion[box.slices], box)
        words = found.as_dict() if found is not None else None
        description = as_description(found)
    finding = LesionFinding(
        source_sop_instance_uid=target.info.sop_instance_uid,
        frame_number=int(number) if target.multi_frame else None,
        area_mm2=area_mm2,
        long_axis_mm=long_mm,
        short_axis_mm=short_mm,
        area_px=int(np.count_nonzero(lesion)),
        description=description,
    )
    return MeasuredLesion(int(number), finding, words)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def _frames_json(
    corrected: CorrectedImage, lesions: Sequence[MeasuredLesion]
) -> list[dict[str, Any]]:
    """The review row's frames: outlines as sent (or as vectorised from the AI mask) and,
    per lesion, what was measured."""
    by_frame: dict[int, list[MeasuredLesion]] = {}
    for lesion in lesions:
        by_frame.setdefault(lesion.frame, []).append(lesion)
    out = []
    for frame in corrected.frames:
        out.append(
            {
                "frame": frame.frame,
                "lesions": [p.to_json() for p in frame.polygons],
                "measurements": [
                    {
                        "long_axis_mm": _round(m.finding.long_axis_mm),
                        "short_axis_mm": _round(m.finding.short_axis_mm),
                        "area_mm2": _round(m.finding.area_mm2),
                        "area_px": m.finding.area_px,
                        "descriptors": m.descriptors,
                    }
                    for m in by_frame.get(frame.frame, [])
                ],
            }
        )
    return out


def _audit(
    session: Session, reviewer: Reviewer, review: Review, target: ReviewTarget, *, duplicate: bool
) -> None:
    """Reviewer, job id and image UID (no patient data) of every review, repeated ones too."""
    frames = ",".join(str(f["frame"]) for f in review.frames or [])
    record(
        session,
        AuditAction.REVIEW,
        actor=reviewer.name,
        token_name=reviewer.token_name,
        client=reviewer.client,
        target=f"job:{target.job.id}",
        detail=(
            f"review {review.id} {review.outcome} image {review.sop_instance_uid} "
            f"frames {frames or '-'} label {review.label or '-'}"
            + (" (repeated: no new objects)" if duplicate else "")
        ),
    )


def _result(
    session: Session,
    review: Review,
    *,
    duplicate: bool,
    times: dict[str, float],
) -> ReviewResult:
    outputs = []
    seg_uid = None
    sr_uid = ""
    for output_id in (review.seg_output_id, review.sr_output_id):
        if output_id is None:
            continue
        output = session.get(Output, output_id)
        if output is None:
            continue
        if output.kind == "seg":
            seg_uid = output.sop_instance_uid
        else:
            sr_uid = output.sop_instance_uid
        outputs.append(
            ReviewOutputPublic(
                output.kind,
                output.sop_instance_uid,
                sorted({item.destination for item in output.outbox}),
            )
        )
    return ReviewResult(
        review_id=review.id,
        seg_sop_instance_uid=seg_uid,
        sr_sop_instance_uid=sr_uid,
        outputs=outputs,
        duplicate=duplicate,
        stage_seconds=times,
    )
