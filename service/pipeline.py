"""One study through the models: read → crop → predict → SEG per series + one SR → outbox.

Each step raises; `service/worker.py` owns the single try per job that records the outcome.
Output UIDs are deterministic (source UID + model version + kind), so a re-run after a crash
re-creates the same objects and a re-send overwrites rather than duplicates.
"""

from __future__ import annotations

import io
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.errors import DicomIOError
from dicom_io.measure import mask_measurements
from dicom_io.read import FRAME_BATCH, iter_frames, read_header, read_info
from dicom_io.seg import AlgorithmInfo, SegmentationInputError, build_seg
from dicom_io.sr import LesionFinding, StudyClassification, build_sr
from dicom_io.types import Frames, ImageInfo, UltrasoundRegion
from service.errors import JobError
from service.logs import uid_hash
from service.previews import cam_overlay, mask_overlay, save_png
from storage.files import checked_uid, write_atomic

log = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 990
SR_SERIES_NUMBER = 991
PREDICT_BATCH = 8
PREVIEW_FRAMES = 4  # previews (PNG) and dashboard rows for the first frames of an image
ALGORITHM_NAME = "WeCare breast lesion AI"


class PredictionLike(Protocol):
    mask: np.ndarray
    probabilities: dict[str, float]
    predicted_class: str
    cam: np.ndarray | None


class ModelLike(Protocol):
    version: str
    status: str

    def predict(self, images: Sequence[np.ndarray], with_cam: bool = False) -> list[Any]: ...


@dataclass(frozen=True)
class SourceImage:
    """One processable instance of the study, as the job sees it."""

    sop_instance_uid: str
    series_instance_uid: str
    path: Path


@dataclass(frozen=True)
class _Tile:
    """One model input: a region of one frame of one instance."""

    source_index: int
    frame_index: int  # index into the decoded batch
    frame_number: int  # 1-based DICOM frame number
    box: tuple[int, int, int, int]  # y0, y1, x0, x1
    region: UltrasoundRegion | None


@dataclass(frozen=True)
class WrittenOutput:
    kind: str  # "seg" | "sr"
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    path: Path


@dataclass
class StudyResult:
    outputs: list[WrittenOutput]
    predicted_class: str
    probabilities: dict[str, float]
    image_count: int
    stage_seconds: dict[str, float]
    results: list[dict[str, Any]]
    skipped: list[dict[str, str]] = field(default_factory=list)


def algorithm_info(model: ModelLike) -> AlgorithmInfo:
    """The model identity carried by SEG and SR; an unfinished model says so in its version.

    AlgorithmVersion is an LO (64 characters): the full status goes to the job and dashboard,
    the DICOM objects carry the short "not validated" marker. Only status "final" (a model that
    met its validation targets, see inference/MODEL_CARD.md) goes without it.
    """
    suffix = "" if model.status == "final" else " (not validated)"
    return AlgorithmInfo(name=ALGORITHM_NAME, version=model.version[: 64 - len(suffix)] + suffix)


def tissue_boxes(
    frames: Frames | ImageInfo,
) -> list[tuple[tuple[int, int, int, int], UltrasoundRegion | None]]:
    """Crop boxes (y0, y1, x0, x1): each 2D tissue region, or the whole frame when none."""
    height, width = frames.shape
    boxes: list[tuple[tuple[int, int, int, int], UltrasoundRegion | None]] = []
    for region in frames.regions:
        if region.spatial_format != 1:
            continue
        y0, y1 = max(0, region.y0), min(height, region.y1)
        x0, x1 = max(0, region.x0), min(width, region.x1)
        if y1 - y0 >= 16 and x1 - x0 >= 16:
            boxes.append(((y0, y1, x0, x1), region))
    return boxes or [((0, height, 0, width), None)]


@dataclass
class _Best:
    """The largest lesion seen so far in one tissue region of one source instance."""

    area: int
    tile: _Tile
    mask: np.ndarray  # the tile's crop-sized mask (a copy)


@dataclass
class _SourceState:
    """What is kept of one source while its frames stream past: only lesion frames."""

    info: ImageInfo
    lesion_frames: dict[int, np.ndarray] = field(default_factory=dict)  # number -> packbits
    best: dict[int, _Best] = field(default_factory=dict)  # region box index -> largest lesion

    def unpacked_masks(self) -> tuple[np.ndarray, tuple[int, ...]]:
        """(N, H, W) bool masks of the frames with a lesion and their frame numbers."""
        rows, columns = self.info.shape
        numbers = tuple(sorted(self.lesion_frames))
        masks = np.zeros((len(numbers), rows, columns), dtype=bool)
        for k, number in enumerate(numbers):
            bits = np.unpackbits(self.lesion_frames[number], count=rows * columns)
            masks[k] = bits.reshape(rows, columns).astype(bool)
        return masks, numbers


def process_study(
    sources: Sequence[SourceImage],
    model: ModelLike,
    out_dir: Path,
    *,
    explain: bool = True,
    on_progress: Callable[[], None] | None = None,
    frame_batch: int = FRAME_BATCH,
    preview_frames: int = PREVIEW_FRAMES,
) -> StudyResult:
    """Run the models on every frame of every source; write SEG(s), SR and previews in `out_dir`.

    Frames are decoded `frame_batch` at a time (`dicom_io.read.iter_frames`) and dropped
    once predicted: what stays per source is the bit-packed mask of each frame that has a
    lesion, the largest lesion of each tissue region, and previews of the first
    `preview_frames` frames. Memory therefore does not grow with the length of a clip
    (beyond 1 bit per pixel of lesion frames, and the SEG highdicom builds from them).

    Files are named `<SOPInstanceUID>.dcm` (deterministic UIDs, so a re-run overwrites) and
    `preview/<image>_<frame>_{mask,cam}.png`.
    """
    timings: dict[str, float] = defaultdict(float)
    tick = time.perf_counter()
    states: list[_SourceState] = []
    kept: list[SourceImage] = []
    skipped: list[dict[str, str]] = []

    def skip(source: SourceImage, exc: DicomIOError) -> None:
        code = getattr(exc, "code", "undecodable")
        skipped.append({"uid_hash": uid_hash(source.sop_instance_uid), "reason": f"{code}: {exc}"})
        log.warning("image %s not processed: %s", uid_hash(source.sop_instance_uid), code)

    for source in sources:
        try:
            states.append(_SourceState(read_info(source.path)))
            kept.append(source)
        except DicomIOError as exc:
            skip(source, exc)
    timings["decode"] += time.perf_counter() - tick

    best_class: tuple[float, str, dict[str, float]] | None = None
    results: list[dict[str, Any]] = []
    preview_dir = out_dir / "preview"
    failed: set[int] = set()
    for index, state in enumerate(states):
        boxes = tissue_boxes(state.info)
        frames = iter_frames(kept[index].path, batch=frame_batch)
        while True:
            tick = time.perf_counter()
            try:
                batch = next(frames, None)
            except DicomIOError as exc:
                # A clip that breaks half-way: keep nothing of it (no partial SEG).
                skip(kept[index], exc)
                failed.add(index)
                break
            finally:
                timings["decode"] += time.perf_counter() - tick
            if batch is None:
                break
            frame_numbers, pixels = batch
            tiles = [
                _Tile(index, f_index, f_number, box, region)
                for f_index, f_number in enumerate(frame_numbers)
                for box, region in boxes
            ]
            tick = time.perf_counter()
            predictions: list[Any] = []
            for start in range(0, len(tiles), PREDICT_BATCH):
                chunk = tiles[start : start + PREDICT_BATCH]
                crops = [
                    pixels[t.frame_index, t.box[0] : t.box[1], t.box[2] : t.box[3]] for t in chunk
                ]
                predictions.extend(model.predict(crops, with_cam=explain))
                if on_progress:
                    on_progress()
            timings["inference"] += time.perf_counter() - tick

            tick = time.perf_counter()
            for pred in predictions:
                p_malignant = float(pred.probabilities.get("malignant", 0.0))
                if best_class is None or p_malignant > best_class[0]:
                    best_class = (p_malignant, pred.predicted_class, dict(pred.probabilities))
            full = np.zeros((len(frame_numbers), *state.info.shape), dtype=bool)
            cams: dict[int, np.ndarray] = {}
            for tile, pred in zip(tiles, predictions, strict=True):
                y0, y1, x0, x1 = tile.box
                full[tile.frame_index, y0:y1, x0:x1] |= pred.mask
                area = int(np.count_nonzero(pred.mask))
                key = boxes.index((tile.box, tile.region))
                current = state.best.get(key)
                if area and (current is None or area > current.area):
                    state.best[key] = _Best(area, tile, np.array(pred.mask, dtype=bool))
                if pred.cam is not None and tile.frame_number <= preview_frames:
                    cam = cams.setdefault(
                        tile.frame_index, np.zeros(state.info.shape, dtype=np.float32)
                    )
                    cam[y0:y1, x0:x1] = np.maximum(cam[y0:y1, x0:x1], pred.cam)
            for f_index, f_number in enumerate(frame_numbers):
                if full[f_index].any():
                    state.lesion_frames[f_number] = np.packbits(full[f_index], axis=None)
            results.extend(
                _preview_rows(
                    tiles, predictions, pixels, full, cams, kept[index], preview_dir, preview_frames
                )
            )
            timings["store"] += time.perf_counter() - tick
            del pixels, full, cams, predictions, tiles, batch

    good = [i for i in range(len(states)) if i not in failed]
    if not good or best_class is None:
        raise JobError(
            "no_processable_images",
            "no image of the study could be decoded"
            + (f" ({skipped[0]['reason']})" if skipped else ""),
        )
    states = [states[i] for i in good]
    kept = [kept[i] for i in good]
    results = [r for r in results if r["image"] - 1 in good]
    classification = StudyClassification(predicted_class=best_class[1], probabilities=best_class[2])

    tick = time.perf_counter()
    algorithm = algorithm_info(model)
    # Headers only: build_seg and build_sr never need the source pixels.
    datasets = [read_header(s.path) for s in kept]  # deflate-bounded, elements parsed
    by_series: dict[str, list[int]] = defaultdict(list)
    for index, source in enumerate(kept):
        by_series[source.series_instance_uid].append(index)

    outputs: list[WrittenOutput] = []
    seg_datasets: list[Dataset] = []
    for indices in by_series.values():
        with_lesion = [i for i in indices if states[i].lesion_frames]
        if not with_lesion:
            continue  # no SEG for a series without a lesion: the SR says "no lesion found"
        unpacked = [states[i].unpacked_masks() for i in with_lesion]
        try:
            seg_datasets.append(
                build_seg(
                    [datasets[i] for i in with_lesion],
                    [masks for masks, _ in unpacked],
                    [numbers for _, numbers in unpacked],
                    algorithm,
                    SEG_SERIES_NUMBER,
                )
            )
        except SegmentationInputError:
            # One SEG cannot hold this series (several cine loops, mixed sizes): one per image.
            for i, (masks, numbers) in zip(with_lesion, unpacked, strict=True):
                seg_datasets.append(
                    build_seg(
                        [datasets[i]],
                        [masks],
                        [numbers],
                        algorithm,
                        SEG_SERIES_NUMBER,
                        uid_source=kept[i].sop_instance_uid,
                    )
                )
        del unpacked

    findings = _findings(states)
    sr = build_sr(datasets, seg_datasets, classification, findings, algorithm, SR_SERIES_NUMBER)
    timings["build"] += time.perf_counter() - tick

    tick = time.perf_counter()
    for kind, ds in [("seg", s) for s in seg_datasets] + [("sr", sr)]:
        path = out_dir / f"{checked_uid(str(ds.SOPInstanceUID))}.dcm"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        write_atomic(path, buf.getvalue())
        outputs.append(
            WrittenOutput(
                kind, str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPClassUID), path
            )
        )
    timings["store"] += time.perf_counter() - tick
    return StudyResult(
        outputs=outputs,
        predicted_class=classification.predicted_class,
        probabilities=classification.probabilities,
        image_count=sum(s.info.number_of_frames for s in states),
        stage_seconds={k: round(v, 3) for k, v in timings.items()},
        results=results,
        skipped=skipped,
    )


def _measure(mask: np.ndarray, tile: _Tile) -> tuple[float | None, float | None, float | None]:
    """(area mm², long axis mm, short axis mm); all None without a calibrated region or lesion.

    `mask` is the tile's crop of the region, measured with that region's own Physical
    Delta X/Y (absolute values): each pane of a dual view has its own calibration.
    """
    region = tile.region
    if region is None or not region.mm_per_pixel_x or not region.mm_per_pixel_y or not mask.any():
        return None, None, None
    return mask_measurements(mask, region.mm_per_pixel_x, region.mm_per_pixel_y)


def _findings(states: Sequence[_SourceState]) -> list[LesionFinding]:
    """One finding per tissue region with a lesion: its frame with the largest lesion.

    A dual-view image (two B-mode panes) gives one finding per pane, each measured with
    its own pane's calibration.
    """
    findings = []
    for state in states:
        for _, best in sorted(state.best.items()):
            area_mm2, long_mm, short_mm = _measure(best.mask, best.tile)
            findings.append(
                LesionFinding(
                    source_sop_instance_uid=state.info.sop_instance_uid,
                    frame_number=(
                        best.tile.frame_number if state.info.number_of_frames > 1 else None
                    ),
                    area_mm2=area_mm2,
                    long_axis_mm=long_mm,
                    short_axis_mm=short_mm,
                    area_px=best.area,
                )
            )
    return findings


def _preview_rows(
    tiles: Sequence[_Tile],
    predictions: Sequence[Any],
    pixels: np.ndarray,
    masks: np.ndarray,
    cams: dict[int, np.ndarray],
    source: SourceImage,
    preview_dir: Path,
    max_frames: int,
) -> list[dict[str, Any]]:
    """Per-frame rows for the dashboard, with overlay PNGs of the first frames of an image."""
    rows: list[dict[str, Any]] = []
    for tile, pred in zip(tiles, predictions, strict=True):
        if tile.frame_number > max_frames:
            continue
        name = f"{tile.source_index:03d}_{tile.frame_number:04d}"
        image = pixels[tile.frame_index]
        mask_png, cam_png = f"{name}_mask.png", None
        save_png(preview_dir / mask_png, mask_overlay(image, masks[tile.frame_index]))
        if tile.frame_index in cams:
            cam_png = f"{name}_cam.png"
            save_png(preview_dir / cam_png, cam_overlay(image, cams[tile.frame_index]))
        area_mm2, long_mm, short_mm = _measure(pred.mask, tile)
        rows.append(
            {
                "image": tile.source_index + 1,
                "series_uid_hash": uid_hash(source.series_instance_uid),
                "sop_instance_uid": source.sop_instance_uid,
                "frame": tile.frame_number,
                "predicted_class": pred.predicted_class,
                "probabilities": {k: round(float(v), 4) for k, v in pred.probabilities.items()},
                "lesion_area_px": int(pred.mask.sum()),
                "lesion_area_mm2": None if area_mm2 is None else round(area_mm2, 1),
                "long_axis_mm": None if long_mm is None else round(long_mm, 1),
                "short_axis_mm": None if short_mm is None else round(short_mm, 1),
                "mask_png": mask_png,
                "cam_png": cam_png,
            }
        )
    return rows
