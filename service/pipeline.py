"""One study through the models, as a chain of named stages over typed results::

    inspect ──▶ analyse ──▶ collect ──▶ classify ──▶ build ──▶ write
    (headers)   (decode, crop,  (per image:   (study    (SEG per   (files, each
                 predict in      lesion        class)    series,    under its
                 batches across  frames, best            one SR)    UID)
                 images/frames)  lesions)

Each stage is a function with typed inputs and outputs (frozen dataclasses): the crop policy
is :func:`dicom_io.regions.analysis_boxes`, the class rule :func:`inference.study.study_class`,
mask pasting :func:`inference.study.paste_masks`, SEG grouping and its fallback
:func:`dicom_io.seg.build_segs`. Each stage raises; `service/worker.py` owns the one try per job.

Outputs are versioned by what they hold (see :mod:`dicom_io.uids`): images already analysed
by this model version (``prior``) are not analysed, segmented or written again; the SEGs hold
only the images analysed now; the SR reports the whole study under a UID derived from every
image it covers, naming the previous SR (``predecessor``) when there was one. A re-run of the
same job gives the same UIDs and the same content; a file already written under a UID is
never replaced.

Previews (mask outline, Grad-CAM) are not made here: the dashboard renders them on demand
from the stored source and SEG (:mod:`service.previews`).
"""

from __future__ import annotations

import io
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_io.errors import DicomIOError
from dicom_io.measure import mask_measurements
from dicom_io.read import FRAME_BATCH, iter_frames, read_header, read_info
from dicom_io.regions import CropBox, analysis_boxes
from dicom_io.routing import device_caution
from dicom_io.seg import AlgorithmInfo, SourceMasks, build_segs
from dicom_io.sr import LesionDescription, LesionFinding, StudyClassification, build_sr
from dicom_io.types import ImageInfo
from dicom_io.uids import content_key
from inference.descriptors import LesionDescriptors, describe_lesion
from inference.study import (
    CLASSES,
    agree_with_masks,
    disagreement_caution,
    paste_masks,
    study_class,
)
from service.errors import JobError
from service.logs import uid_hash
from storage.files import checked_uid, write_atomic

log = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 990
SR_SERIES_NUMBER = 991
PREDICT_BATCH = 8  # crops per model call, gathered across frames and images
PREVIEW_FRAMES = 4  # dashboard rows (and previews on demand) for the first frames of an image
#: Frames decoded ahead of the model: one model batch of single-frame images, one frame batch
#: of a clip (a batch is decoded whole); memory stays flat whatever the study's size.
DECODE_AHEAD_FRAMES = PREDICT_BATCH
#: Why an image was not analysed when the model's in-distribution check refused every frame.
OUTSIDE_SCOPE_REASON = (
    "outside_scope: the image is unlike the breast ultrasound the model was trained on "
    "(in-distribution check); no class or lesion is given for it"
)
#: The SR's caution when no image of the study was within the model's scope.
OUTSIDE_SCOPE_CAUTION = (
    "Outside the model's scope: no image of this study resembles the breast ultrasound the "
    "model was trained on, so no class and no lesion are given. Read the images without AI."
)
ALGORITHM_NAME = "WeCare breast lesion AI"


class PredictionLike(Protocol):
    mask: np.ndarray
    probabilities: dict[str, float]
    predicted_class: str


class ModelLike(Protocol):
    version: str
    status: str

    def predict(self, images: Sequence[np.ndarray], with_cam: bool = False) -> list[Any]: ...


# ---- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceImage:
    """One processable instance of the study, as the job sees it."""

    sop_instance_uid: str
    series_instance_uid: str
    path: Path


@dataclass(frozen=True)
class PriorImage:
    """An image this model version analysed in an earlier job: reused, not analysed again.

    Attributes
    ----------
    probabilities: dict[str, float]
        Its most suspicious frame's calibrated probabilities (see ``study_class``).
    findings: tuple[LesionFinding, ...]
        Its lesions as the earlier SR reported them.
    seg_path: Path | None
        The stored SEG holding its lesion frames (None: no lesion found).
    """

    probabilities: dict[str, float] = field(hash=False)
    findings: tuple[LesionFinding, ...]
    seg_path: Path | None


@dataclass(frozen=True)
class PriorReport:
    """The study's latest SR by this model version: the predecessor of a new one."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    instance_number: int
    output_id: int | None = None

    def as_reference(self) -> Dataset:
        """The attributes a Predecessor Documents Sequence item is made of."""
        ds = Dataset()
        ds.SOPClassUID = self.sop_class_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.StudyInstanceUID = self.study_instance_uid
        return ds


# ---- per-frame and per-image results -------------------------------------------------------------


@dataclass(frozen=True)
class BoxPrediction:
    """The model's output for one crop box of one frame, on the box's own grid."""

    box: CropBox
    mask: np.ndarray  # (y1 - y0, x1 - x0) bool
    probabilities: dict[str, float] = field(hash=False)
    predicted_class: str
    in_scope: bool = True  # False: the model's in-distribution check refused this crop


@dataclass(frozen=True)
class FrameResult:
    """Every crop box of one frame of one image, predicted."""

    image_index: int  # into the images being analysed
    frame_number: int  # 1-based DICOM frame number
    pixels: np.ndarray  # (H, W) float32 0..1, the decoded frame (a view into its batch)
    boxes: tuple[BoxPrediction, ...]

    def full_mask(self) -> np.ndarray:
        """(H, W) bool: the boxes' masks pasted into the frame grid."""
        pieces = [((b.box.y0, b.box.y1, b.box.x0, b.box.x1), b.mask) for b in self.boxes]
        return paste_masks(self.pixels.shape, pieces)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ImageFailure:
    """An image whose frames could not all be decoded: nothing of it is kept."""

    image_index: int
    error: DicomIOError


@dataclass(frozen=True)
class BestLesion:
    """The largest lesion seen in one crop box of one image, and where."""

    frame_number: int
    box: CropBox
    mask: np.ndarray  # the box's crop-sized mask (a copy)
    image: np.ndarray  # the box's pixels of that frame (a copy): what descriptors read

    @property
    def area_px(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass(frozen=True)
class FrameRow:
    """One dashboard row: a crop box of one of the first frames of an image."""

    image: int  # 1-based, within the images this job analysed
    series_uid_hash: str
    sop_instance_uid: str
    frame: int
    predicted_class: str
    probabilities: dict[str, float] = field(hash=False)
    lesion_area_px: int
    lesion_area_mm2: float | None
    long_axis_mm: float | None
    short_axis_mm: float | None
    mask_png: str
    cam_png: str | None
    descriptors: dict[str, Any] | None = None  # BI-RADS words and sizes (None: no lesion)

    def as_json(self) -> dict[str, Any]:
        """The row as Job.results stores it (service/web/schemas.ImageResultPublic)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ImageResult:
    """One analysed image: its lesion frames (bit-packed), findings and deciding frame."""

    source: SourceImage
    info: ImageInfo
    lesion_frames: Mapping[int, np.ndarray] = field(hash=False)  # number -> packbits
    findings: tuple[LesionFinding, ...]
    best_lesions: tuple[BestLesion, ...]
    probabilities: dict[str, float] = field(hash=False)  # its most suspicious frame's
    rows: tuple[FrameRow, ...]
    # Every analysed frame's probabilities (its most suspicious box), for the workspace.
    frame_scores: Mapping[int, list[float]] = field(default_factory=dict, hash=False)

    def unpacked_masks(self) -> tuple[np.ndarray, tuple[int, ...]]:
        """(N, H, W) bool masks of the frames with a lesion and their frame numbers."""
        rows, columns = self.info.shape
        numbers = tuple(sorted(self.lesion_frames))
        masks = np.zeros((len(numbers), rows, columns), dtype=bool)
        for k, number in enumerate(numbers):
            bits = np.unpackbits(self.lesion_frames[number], count=rows * columns)
            masks[k] = bits.reshape(rows, columns).astype(bool)
        return masks, numbers

    def summary(self) -> dict[str, Any]:
        """What a later job of the study needs of this image (JSON): see :class:`PriorImage`."""
        return {
            "probabilities": dict(self.probabilities),
            "frames": self.info.number_of_frames,
            "findings": [finding_to_json(f) for f in self.findings],
            # frame number -> [normal, benign, malignant]: the class of every frame of a clip
            "frame_scores": {str(n): v for n, v in sorted(self.frame_scores.items())},
        }


# ---- outputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenOutput:
    kind: str  # "seg" | "sr"
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    path: Path
    predecessor: PriorReport | None = None  # an SR: the report it replaces


@dataclass(frozen=True)
class AnalysedRecord:
    """An image analysed by this job: recorded so later jobs of the study reuse it."""

    sop_instance_uid: str
    series_instance_uid: str
    seg_sop_instance_uid: str | None
    summary: dict[str, Any] = field(hash=False)


@dataclass
class StudyResult:
    outputs: list[WrittenOutput]
    predicted_class: str | None  # None: every image outside the model's scope
    probabilities: dict[str, float] | None
    image_count: int
    stage_seconds: dict[str, float]
    results: list[dict[str, Any]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    analysed: list[AnalysedRecord] = field(default_factory=list)
    reused: int = 0  # images analysed by an earlier job of the study, not analysed again


class _Timer:
    """Seconds per stage, accumulated."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - since
        return now

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}


#: The stage timer under a public name, for callers that run the stages themselves
#: (service/trial.py: one uploaded image, no job).
StageTimer = _Timer


def algorithm_info(model: ModelLike) -> AlgorithmInfo:
    """The model identity carried by SEG and SR; an unfinished model says so in its version.

    AlgorithmVersion is an LO (64 characters): the full status goes to the job and dashboard,
    the DICOM objects carry the short "not validated" marker. Only status "final" (a model that
    met its validation targets, see inference/MODEL_CARD.md) goes without it.
    """
    suffix = "" if model.status == "final" else " (not validated)"
    return AlgorithmInfo(name=ALGORITHM_NAME, version=model.version[: 64 - len(suffix)] + suffix)


# ---- the chain ---------------------------------------------------------------------------------


def process_study(
    sources: Sequence[SourceImage],
    model: ModelLike,
    out_dir: Path,
    *,
    explain: bool = True,
    on_progress: Callable[[], None] | None = None,
    frame_batch: int = FRAME_BATCH,
    preview_frames: int = PREVIEW_FRAMES,
    prior: Mapping[str, PriorImage] | None = None,
    predecessor: PriorReport | None = None,
) -> StudyResult:
    """Analyse the study's new images; write their SEG(s) and the study's SR in `out_dir`.

    Parameters
    ----------
    sources: Sequence[SourceImage]
        Every processable instance of the study, in report order.
    prior: Mapping[str, PriorImage], optional
        By SOP Instance UID: images this model version analysed in an earlier job. They are
        reported in the SR, not analysed again.
    predecessor: PriorReport, optional
        The study's latest SR by this model version: the new SR names it.
    explain: bool
        Offer Grad-CAM previews on the dashboard (rendered on demand).

    Frames are decoded `frame_batch` at a time and dropped once predicted: memory does not
    grow with the length of a clip (beyond 1 bit per pixel of lesion frames). Files are
    named `<SOPInstanceUID>.dcm`.
    """
    prior = prior or {}
    timer = _Timer()
    skipped: list[dict[str, str]] = []
    new = [s for s in sources if s.sop_instance_uid not in prior]
    infos = inspect(new, skipped, timer)
    images = analyse(infos, model, timer, frame_batch=frame_batch, on_progress=on_progress)
    results = collect(images, infos, skipped, timer, preview_frames, explain)
    refused = {k["uid_hash"] for k in skipped if k.get("code") == "outside_scope"}
    outside = [s for s in new if uid_hash(s.sop_instance_uid) in refused]
    if not results and not outside and (new or not prior):
        raise JobError(
            "no_processable_images",
            "no image of the study could be decoded"
            + (f" ({skipped[0]['reason']})" if skipped else ""),
        )
    analysed = {r.source.sop_instance_uid for r in results}
    reported = [s for s in sources if s.sop_instance_uid in prior or s.sop_instance_uid in analysed]
    prior_images = [prior[s.sop_instance_uid] for s in reported if s.sop_instance_uid in prior]
    classification = classify(results, prior_images)
    cautions = study_cautions(results, prior_images, len(outside))
    datasets, seg_of = [], {}
    if results or (outside and not reported):
        tick = time.perf_counter()
        datasets, seg_of = build(results, reported or outside, prior, predecessor,
                                 classification, model, cautions)
        timer.add("build", tick)
    outputs = write(datasets, out_dir, predecessor, timer)
    rows = [row.as_json() for r in results for row in r.rows]
    return StudyResult(
        outputs=outputs,
        predicted_class=classification.predicted_class,
        probabilities=classification.probabilities,
        image_count=sum(r.info.number_of_frames for r in results),
        stage_seconds=timer.rounded(),
        results=rows,
        skipped=skipped,
        analysed=[
            AnalysedRecord(
                r.source.sop_instance_uid,
                r.source.series_instance_uid,
                seg_of.get(r.source.sop_instance_uid),
                r.summary(),
            )
            for r in results
        ],
        reused=len(sources) - len(new),
    )


def inspect(
    sources: Sequence[SourceImage], skipped: list[dict[str, str]], timer: _Timer
) -> list[tuple[SourceImage, ImageInfo]]:
    """Stage 1: read each source's header (size, frames, regions); unreadable ones are skipped."""
    tick = time.perf_counter()
    infos = []
    for source in sources:
        try:
            infos.append((source, read_info(source.path)))
        except DicomIOError as exc:
            _skip(skipped, source, exc)
    timer.add("decode", tick)
    return infos


def analyse(
    infos: Sequence[tuple[SourceImage, ImageInfo]],
    model: ModelLike,
    timer: _Timer,
    *,
    frame_batch: int = FRAME_BATCH,
    on_progress: Callable[[], None] | None = None,
) -> Iterator[FrameResult | ImageFailure]:
    """Stage 2: decode every frame, crop it (one policy), predict in batches across images.

    Crops of consecutive frames and images are gathered until :data:`PREDICT_BATCH` and sent
    to the model together: a study of single-frame images runs at the model's batch speed,
    not at batch 1. A frame's result comes out once all its boxes are predicted.
    """
    pending: list[tuple[int, int, np.ndarray, tuple[CropBox, ...]]] = []
    crops: list[np.ndarray] = []

    def flush() -> Iterator[FrameResult]:
        if not pending:
            return
        tick = time.perf_counter()
        predictions: list[Any] = []
        for start in range(0, len(crops), PREDICT_BATCH):
            predictions.extend(model.predict(crops[start : start + PREDICT_BATCH]))
            if on_progress:
                on_progress()
        timer.add("inference", tick)
        it = iter(predictions)
        for image_index, number, pixels, boxes in pending:
            yield FrameResult(
                image_index,
                number,
                pixels,
                tuple(
                    BoxPrediction(box, p.mask, dict(p.probabilities), p.predicted_class,
                                  bool(getattr(p, "in_scope", True)))
                    for box, p in zip(boxes, (next(it) for _ in boxes), strict=True)
                ),
            )
        pending.clear()
        crops.clear()

    boxes_of = [analysis_boxes(info.regions, info.shape) for _, info in infos]
    decoded = _DecodedAhead(infos, frame_batch)
    try:
        while True:
            tick = time.perf_counter()  # "decode": the time the model waited for pixels
            item = decoded.next()
            timer.add("decode", tick)
            if item is None:
                break
            image_index, batch = item
            if isinstance(batch, DicomIOError):
                # A clip that breaks half-way: its frames already predicted are dropped.
                yield from flush()
                yield ImageFailure(image_index, batch)
                continue
            numbers, pixels = batch
            boxes = boxes_of[image_index]
            for k, number in enumerate(numbers):
                pending.append((image_index, number, pixels[k], boxes))
                crops.extend(pixels[k][box.slices] for box in boxes)
                if len(crops) >= PREDICT_BATCH:
                    yield from flush()
        yield from flush()
    finally:
        decoded.close()


class _DecodedAhead:
    """Every image's frame batches (:func:`iter_frames`), decoded in a background thread up
    to :data:`DECODE_AHEAD_FRAMES` ahead of the model, so decoding overlaps inference.

    :meth:`next` gives ``(image_index, (frame numbers, pixels))``, or ``(image_index,
    DicomIOError)`` once for an image that fails (its later frames are not read), or None at
    the end; an unexpected error of the decoder is raised there. :meth:`close` stops the
    thread (an abandoned job) and waits for it.
    """

    _END = object()

    def __init__(self, infos: Sequence[tuple[SourceImage, ImageInfo]], frame_batch: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._ahead = 0  # frames decoded, not yet taken
        self._room = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(infos, frame_batch), name="decode", daemon=True
        )
        self._thread.start()

    def _slot(self) -> bool:
        """Wait until fewer than DECODE_AHEAD_FRAMES wait for the model (False: stopped)."""
        with self._room:
            while not self._stop.is_set():
                if self._ahead < DECODE_AHEAD_FRAMES:
                    return True
                self._room.wait(0.1)
        return False

    def _taken(self, frames: int) -> None:
        with self._room:
            self._ahead -= frames
            self._room.notify()

    def _put(self, item: Any) -> bool:
        self._queue.put(item)
        return not self._stop.is_set()

    def _run(self, infos: Sequence[tuple[SourceImage, ImageInfo]], frame_batch: int) -> None:
        try:
            for image_index, (source, _) in enumerate(infos):
                frames = iter_frames(source.path, batch=frame_batch)
                while True:
                    if not self._slot():
                        return
                    try:
                        batch = next(frames, None)
                    except DicomIOError as exc:
                        if not self._put((image_index, exc)):
                            return
                        break
                    if batch is None:
                        break
                    with self._room:
                        self._ahead += len(batch[0])
                    if not self._put((image_index, batch)):
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(exc)
        self._put(self._END)

    def next(self) -> tuple[int, Any] | None:
        item = self._queue.get()
        if item is self._END:
            return None
        if isinstance(item, BaseException):
            raise item
        _, batch = item
        if not isinstance(batch, DicomIOError):
            self._taken(len(batch[0]))
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class _Collector:
    """What is kept of one image while its frames stream past (collect's working state)."""

    source: SourceImage
    info: ImageInfo
    lesion_frames: dict[int, np.ndarray] = field(default_factory=dict)
    best: dict[int, BestLesion] = field(default_factory=dict)  # box index -> largest lesion
    deciding: dict[str, float] | None = None
    rows: list[FrameRow] = field(default_factory=list)
    row_boxes: list[int] = field(default_factory=list)  # each row's box index
    outside_scope: int = 0  # crops the in-distribution check refused
    frame_scores: dict[int, list[float]] = field(default_factory=dict)  # per frame, see summary
    frames_seen: int = 0
    # Descriptors of the best lesions, started once the image's last frame is in (box -> job).
    described: dict[int, Future[LesionDescriptors | None]] | None = None


def collect(
    frames: Iterator[FrameResult | ImageFailure],
    infos: Sequence[tuple[SourceImage, ImageInfo]],
    skipped: list[dict[str, str]],
    timer: _Timer,
    preview_frames: int = PREVIEW_FRAMES,
    explain: bool = True,
) -> list[ImageResult]:
    """Stage 3: per image, keep the lesion frames (bit-packed), the largest lesion of each crop
    box, the most suspicious frame and the dashboard rows of the first frames.

    An image's BI-RADS descriptors are computed in a background thread as soon as its last
    frame is in, so they overlap the inference of the images after it (numpy and scipy next
    to torch's own threads) instead of adding to it at the end.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="describe") as describer:
        return _collect(frames, infos, skipped, timer, preview_frames, explain, describer)


def _collect(
    frames: Iterator[FrameResult | ImageFailure],
    infos: Sequence[tuple[SourceImage, ImageInfo]],
    skipped: list[dict[str, str]],
    timer: _Timer,
    preview_frames: int,
    explain: bool,
    describer: ThreadPoolExecutor,
) -> list[ImageResult]:
    states = [_Collector(source, info) for source, info in infos]
    failed: set[int] = set()
    for item in frames:
        tick = time.perf_counter()  # the generator's own time is counted by its stages
        if isinstance(item, ImageFailure):
            failed.add(item.image_index)
            _skip(skipped, states[item.image_index].source, item.error)
            continue
        state = states[item.image_index]
        full = item.full_mask()
        if full.any():
            state.lesion_frames[item.frame_number] = np.packbits(full, axis=None)
        for index, pred in enumerate(item.boxes):
            if not pred.in_scope:  # no class, no lesion, no row: said once for the image
                state.outside_scope += 1
                continue
            # The image's most suspicious frame so far, by the study rule (associative).
            previous = [] if state.deciding is None else [state.deciding]
            state.deciding = study_class([*previous, pred.probabilities]).probabilities
            scores = [round(float(pred.probabilities.get(name, 0.0)), 4) for name in CLASSES]
            kept = state.frame_scores.get(item.frame_number)
            if kept is None or scores[-1] > kept[-1]:  # a frame's most suspicious box
                state.frame_scores[item.frame_number] = scores
            area = int(np.count_nonzero(pred.mask))
            current = state.best.get(index)
            if area and (current is None or area > current.area_px):
                state.best[index] = BestLesion(
                    item.frame_number,
                    pred.box,
                    np.array(pred.mask, dtype=bool),
                    np.array(item.pixels[pred.box.slices], dtype=np.float32),
                )
            if item.frame_number <= preview_frames:
                # A single frame's rows are described below, once, with its findings.
                multi = state.info.number_of_frames > 1
                state.rows.append(_row(state, item, pred, explain, describe=multi))
                state.row_boxes.append(index)
        state.frames_seen += 1
        if state.frames_seen == state.info.number_of_frames:  # its best lesions are final
            state.described = {
                k: describer.submit(describe_in_box, lesion.image, lesion.mask, lesion.box)
                for k, lesion in state.best.items()
            }
        timer.add("collect", tick)
    tick = time.perf_counter()
    results = []
    for index, state in enumerate(states):
        if index not in failed and state.deciding is None and state.outside_scope:
            skipped.append({"uid_hash": uid_hash(state.source.sop_instance_uid),
                            "reason": OUTSIDE_SCOPE_REASON, "code": "outside_scope"})
            log.warning("image %s not analysed: outside_scope",
                        uid_hash(state.source.sop_instance_uid))
        if index in failed or state.deciding is None:
            continue
        best = sorted(state.best.items())
        # BI-RADS descriptors: once per largest lesion of a box (the SR's findings); a
        # single-frame image's rows show the same lesion, so they reuse them.
        started = state.described or {}
        described = {
            k: started[k].result() if k in started
            else describe_in_box(lesion.image, lesion.mask, lesion.box)
            for k, lesion in best
        }
        rows = state.rows
        if state.info.number_of_frames == 1:
            rows = [
                replace(row, descriptors=_descriptors_dict(described.get(k)))
                for row, k in zip(state.rows, state.row_boxes, strict=True)
            ]
        results.append(
            ImageResult(
                source=state.source,
                info=state.info,
                lesion_frames=state.lesion_frames,
                findings=tuple(_finding(state.info, lesion, described[k]) for k, lesion in best),
                best_lesions=tuple(lesion for _, lesion in best),
                probabilities=state.deciding,
                rows=tuple(_renumber(rows, len(results) + 1)),
                frame_scores=state.frame_scores,
            )
        )
    timer.add("describe", tick)
    return results


def classify(results: Sequence[ImageResult], prior: Sequence[PriorImage]) -> StudyClassification:
    """Stage 4: the study's class by :func:`inference.study.study_class` over every image,
    made to agree with the masks (:func:`inference.study.agree_with_masks`); no image at all
    (every one outside the model's scope): no class."""
    frames = [p.probabilities for p in prior] + [r.probabilities for r in results]
    if not frames:
        return StudyClassification(predicted_class=None, probabilities=None)
    call = study_class(frames)
    lesions = any(p.findings for p in prior) or any(r.findings for r in results)
    return StudyClassification(
        predicted_class=agree_with_masks(call, lesions), probabilities=call.probabilities
    )


def study_cautions(results: Sequence[ImageResult], prior: Sequence[PriorImage],
                   outside: int) -> list[str]:
    """Plain sentences the SR must carry about this result (beside the device caution)."""
    frames = [p.probabilities for p in prior] + [r.probabilities for r in results]
    if not frames:
        return [OUTSIDE_SCOPE_CAUTION]
    notes = []
    lesions = any(p.findings for p in prior) or any(r.findings for r in results)
    if (note := disagreement_caution(study_class(frames), lesions)) is not None:
        notes.append(note)
    if outside:
        notes.append(f"{outside} image(s) of this study were outside the model's scope (unlike "
                     "the breast ultrasound it was trained on) and were not analysed.")
    return notes


def build(
    results: Sequence[ImageResult],
    reported: Sequence[SourceImage],
    prior: Mapping[str, PriorImage],
    predecessor: PriorReport | None,
    classification: StudyClassification,
    model: ModelLike,
    cautions: Sequence[str] = (),
) -> tuple[list[Dataset], dict[str, str]]:
    """Stage 5: SEG(s) of the images analysed now (:func:`dicom_io.seg.build_segs`) and the SR
    of every image of the study; returns the datasets and, per source SOP Instance UID, the
    SEG that holds its lesion frames."""
    algorithm = algorithm_info(model)
    # Headers only: build_seg and build_sr never need the source pixels.
    headers = {s.sop_instance_uid: read_header(s.path) for s in reported}
    items = []
    for result in results:
        if result.lesion_frames:
            masks, numbers = result.unpacked_masks()
            items.append(SourceMasks(headers[result.source.sop_instance_uid], masks, numbers))
    segs = build_segs(items, algorithm, SEG_SERIES_NUMBER)
    del items
    seg_of = {uid: str(seg.SOPInstanceUID) for seg in segs for uid in _referenced_sources(seg)}
    # The SEGs of earlier jobs, for the SR's references to their frames (headers only).
    earlier_segs = {
        str(p.seg_path): dcmread(p.seg_path, stop_before_pixels=True)
        for s in reported
        if (p := prior.get(s.sop_instance_uid)) is not None and p.seg_path is not None
    }
    by_uid = {r.source.sop_instance_uid: r.findings for r in results}
    findings = [
        f
        for s in reported
        for f in (
            prior[s.sop_instance_uid].findings
            if s.sop_instance_uid in prior
            else by_uid.get(s.sop_instance_uid, ())  # outside the model's scope: none
        )
    ]
    study_uid = str(headers[reported[0].sop_instance_uid].StudyInstanceUID)
    sr = build_sr(
        [headers[s.sop_instance_uid] for s in reported],
        [*earlier_segs.values(), *segs],
        classification,
        findings,
        algorithm,
        SR_SERIES_NUMBER,
        uid_source=content_key(study_uid, [s.sop_instance_uid for s in reported]),
        predecessors=[predecessor.as_reference()] if predecessor else [],
        instance_number=predecessor.instance_number + 1 if predecessor else 1,
        # A scanner the model was not validated on (model.json validated_devices), a class
        # that had to follow the masks, images outside the model's scope: said in the SR.
        caution=" ".join(
            c for c in (device_caution(
                headers.values(), (getattr(model, "meta", None) or {}).get("validated_devices")
            ), *cautions) if c
        ) or None,
    )
    return [*segs, sr], seg_of


def write(
    datasets: Sequence[Dataset], out_dir: Path, predecessor: PriorReport | None, timer: _Timer
) -> list[WrittenOutput]:
    """Stage 6: each object durably in `<out_dir>/<SOPInstanceUID>.dcm`, before its outbox row.

    A file already there (an earlier attempt of this job, maybe already sent) is kept as it
    is: a UID never names two different objects, even if a re-run's bytes differed.
    """
    tick = time.perf_counter()
    outputs = []
    for ds in datasets:
        kind = "sr" if str(ds.Modality) == "SR" else "seg"
        path = out_dir / f"{checked_uid(str(ds.SOPInstanceUID))}.dcm"
        if not path.exists():
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            write_atomic(path, buf.getvalue())
        outputs.append(
            WrittenOutput(
                kind,
                str(ds.SOPInstanceUID),
                str(ds.SeriesInstanceUID),
                str(ds.SOPClassUID),
                path,
                predecessor if kind == "sr" else None,
            )
        )
    timer.add("store", tick)
    return outputs


# ---- helpers -----------------------------------------------------------------------------------


def _skip(skipped: list[dict[str, str]], source: SourceImage, exc: DicomIOError) -> None:
    code = getattr(exc, "code", "undecodable")
    skipped.append({"uid_hash": uid_hash(source.sop_instance_uid), "reason": f"{code}: {exc}"})
    log.warning("image %s not processed: %s", uid_hash(source.sop_instance_uid), code)


def box_measurements(
    mask: np.ndarray, box: CropBox
) -> tuple[float | None, float | None, float | None]:
    """(area mm², long axis mm, short axis mm); all None without a calibrated box or lesion.

    Measured with the box's own region calibration: each pane of a dual view has its own.
    """
    spacing = box.mm_per_pixel
    if spacing is None or not mask.any():
        return None, None, None
    return mask_measurements(mask, spacing[1], spacing[0])


def _finding(info: ImageInfo, best: BestLesion, found: LesionDescriptors | None) -> LesionFinding:
    """The SR finding of one crop box's largest lesion (one per pane of a dual view), with
    its descriptors `found` (:func:`describe_in_box`)."""
    area_mm2, long_mm, short_mm = box_measurements(best.mask, best.box)
    return LesionFinding(
        source_sop_instance_uid=info.sop_instance_uid,
        frame_number=best.frame_number if info.number_of_frames > 1 else None,
        area_mm2=area_mm2,
        long_axis_mm=long_mm,
        short_axis_mm=short_mm,
        area_px=best.area_px,
        description=as_description(found),
    )


def describe_in_box(image: np.ndarray, mask: np.ndarray, box: CropBox) -> LesionDescriptors | None:
    """BI-RADS descriptors of a box's lesion, with the box's calibration; None: no lesion."""
    spacing = box.mm_per_pixel  # (y, x) mm, or None without a calibrated region
    dy, dx = spacing if spacing is not None else (None, None)
    try:
        found = describe_lesion(image, mask, dx, dy)
    except ValueError as exc:  # not describable: the SR and dashboard go without
        log.warning("lesion not described: %s", exc)
        return None
    return None if found.message else found


def _descriptors_dict(found: LesionDescriptors | None) -> dict[str, Any] | None:
    """The dashboard row's descriptors (None: no lesion, or not describable)."""
    return None if found is None else found.as_dict()


def as_description(found: LesionDescriptors | None) -> LesionDescription | None:
    """:func:`describe_in_box`'s result as the SR's LesionDescription."""
    if found is None:
        return None
    return LesionDescription(
        shape=found.shape,
        orientation=found.orientation,
        margin=found.margin,
        margin_detail=found.margin_detail,
        echo_pattern=found.echo_pattern,
        posterior=found.posterior,
        depth_mm=found.depth_mm,
    )


def _row(
    state: _Collector, item: FrameResult, pred: BoxPrediction, explain: bool, describe: bool
) -> FrameRow:
    area_mm2, long_mm, short_mm = box_measurements(pred.mask, pred.box)
    return FrameRow(
        image=0,  # numbered once the image is known to be kept
        series_uid_hash=uid_hash(state.source.series_instance_uid),
        sop_instance_uid=state.source.sop_instance_uid,
        frame=item.frame_number,
        predicted_class=pred.predicted_class,
        probabilities={k: round(float(v), 4) for k, v in pred.probabilities.items()},
        lesion_area_px=int(np.count_nonzero(pred.mask)),
        lesion_area_mm2=None if area_mm2 is None else round(area_mm2, 1),
        long_axis_mm=None if long_mm is None else round(long_mm, 1),
        short_axis_mm=None if short_mm is None else round(short_mm, 1),
        mask_png="",
        cam_png=None if not explain else "",
        descriptors=_row_descriptors(item, pred) if describe else None,
    )


def _row_descriptors(item: FrameResult, pred: BoxPrediction) -> dict[str, Any] | None:
    """The dashboard's descriptors of one box of one frame (None: no lesion)."""
    b = pred.box
    found = describe_in_box(item.pixels[b.y0 : b.y1, b.x0 : b.x1], pred.mask, b)
    return None if found is None else found.as_dict()


def _renumber(rows: Sequence[FrameRow], image: int) -> Iterator[FrameRow]:
    """Rows with their 1-based image number and preview names (`<image-1>_<frame>_*.png`)."""
    for row in rows:
        name = f"{image - 1:03d}_{row.frame:04d}"
        yield replace(
            row,
            image=image,
            mask_png=f"{name}_mask.png",
            cam_png=None if row.cam_png is None else f"{name}_cam.png",
        )


def _referenced_sources(seg: Dataset) -> set[str]:
    """Source SOP Instance UIDs a SEG derives frames from."""
    found = set()
    for item in seg.PerFrameFunctionalGroupsSequence:
        for derivation in item.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                found.add(str(source.ReferencedSOPInstanceUID))
    return found


def finding_to_json(finding: LesionFinding) -> dict[str, Any]:
    """A finding as JSON (every field; a nested dataclass such as a description as a dict)."""
    out: dict[str, Any] = {}
    for f in fields(finding):
        value = getattr(finding, f.name)
        if hasattr(value, "__dataclass_fields__"):
            value = {g.name: _jsonable(getattr(value, g.name)) for g in fields(value)}
        out[f.name] = _jsonable(value)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def finding_from_json(data: Mapping[str, Any]) -> LesionFinding:
    """The finding :func:`finding_to_json` wrote (fields this version does not know ignored)."""
    known = {f.name: f for f in fields(LesionFinding)}
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name not in known:
            continue
        if isinstance(value, dict):
            value = _nested_from_json(name, value)
        values[name] = value
    return LesionFinding(**values)


def _nested_from_json(name: str, value: dict[str, Any]) -> Any:
    # A nested dataclass field of LesionFinding (e.g. a BI-RADS description): its class is
    # the one dicom_io.sr defines for it.
    import dicom_io.sr as sr_module

    for candidate in vars(sr_module).values():
        if isinstance(candidate, type) and hasattr(candidate, "__dataclass_fields__"):
            names = {f.name for f in fields(candidate)}
            if set(value) <= names and candidate is not LesionFinding and value:
                return candidate(
                    **{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
                )
    raise ValueError(f"cannot restore the finding's {name!r}")


def prior_from_summary(summary: Mapping[str, Any], seg_path: Path | None) -> PriorImage:
    """The :class:`PriorImage` of an image recorded by an earlier job (``ImageResult.summary``)."""
    return PriorImage(
        probabilities={k: float(v) for k, v in summary["probabilities"].items()},
        findings=tuple(finding_from_json(f) for f in summary.get("findings", [])),
        seg_path=seg_path,
    )
