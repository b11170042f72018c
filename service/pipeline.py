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
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_io.errors import DicomIOError
from dicom_io.measure import mask_measurements
from dicom_io.read import read_frames
from dicom_io.seg import AlgorithmInfo, SegmentationInputError, build_seg
from dicom_io.sr import LesionFinding, StudyClassification, build_sr
from dicom_io.types import Frames, UltrasoundRegion
from service.errors import JobError
from service.logs import uid_hash
from service.previews import cam_overlay, mask_overlay, save_png
from storage.files import checked_uid, write_atomic

log = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 990
SR_SERIES_NUMBER = 991
PREDICT_BATCH = 8
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
    frame_index: int  # index into Frames.pixels
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
    the DICOM objects carry the short "unvalidated checkpoint" marker.
    """
    suffix = "" if model.status == "final" else " (unvalidated checkpoint)"
    return AlgorithmInfo(name=ALGORITHM_NAME, version=model.version[: 64 - len(suffix)] + suffix)


def tissue_boxes(frames: Frames) -> list[tuple[tuple[int, int, int, int], UltrasoundRegion | None]]:
    """Crop boxes (y0, y1, x0, x1): each 2D tissue region, or the whole frame when none."""
    _, height, width = frames.pixels.shape
    boxes: list[tuple[tuple[int, int, int, int], UltrasoundRegion | None]] = []
    for region in frames.regions:
        if region.spatial_format != 1:
            continue
        y0, y1 = max(0, region.y0), min(height, region.y1)
        x0, x1 = max(0, region.x0), min(width, region.x1)
        if y1 - y0 >= 16 and x1 - x0 >= 16:
            boxes.append(((y0, y1, x0, x1), region))
    return boxes or [((0, height, 0, width), None)]


def process_study(
    sources: Sequence[SourceImage],
    model: ModelLike,
    out_dir: Path,
    *,
    explain: bool = True,
    on_progress: Callable[[], None] | None = None,
) -> StudyResult:
    """Run the models on every frame of every source; write SEG(s), SR and previews in `out_dir`.

    Files are named `<SOPInstanceUID>.dcm` (deterministic UIDs, so a re-run overwrites) and
    `preview/<image>_<frame>_{mask,cam}.png`.
    """
    timings: dict[str, float] = defaultdict(float)
    tick = time.perf_counter()
    frames_list: list[Frames] = []
    kept: list[SourceImage] = []
    skipped: list[dict[str, str]] = []
    for source in sources:
        try:
            frames_list.append(read_frames(source.path))
            kept.append(source)
        except DicomIOError as exc:
            code = getattr(exc, "code", "undecodable")
            skipped.append(
                {"uid_hash": uid_hash(source.sop_instance_uid), "reason": f"{code}: {exc}"}
            )
            log.warning("image %s not processed: %s", uid_hash(source.sop_instance_uid), code)
    if not frames_list:
        raise JobError(
            "no_processable_images",
            "no image of the study could be decoded"
            + (f" ({skipped[0]['reason']})" if skipped else ""),
        )
    timings["decode"] += time.perf_counter() - tick

    tiles: list[_Tile] = []
    for index, frames in enumerate(frames_list):
        for f_index, f_number in enumerate(frames.frame_numbers):
            for box, region in tissue_boxes(frames):
                tiles.append(_Tile(index, f_index, f_number, box, region))

    tick = time.perf_counter()
    predictions: list[Any] = []
    for start in range(0, len(tiles), PREDICT_BATCH):
        batch = tiles[start : start + PREDICT_BATCH]
        crops = [
            frames_list[t.source_index].pixels[
                t.frame_index, t.box[0] : t.box[1], t.box[2] : t.box[3]
            ]
            for t in batch
        ]
        predictions.extend(model.predict(crops, with_cam=explain))
        if on_progress:
            on_progress()
    timings["inference"] += time.perf_counter() - tick

    # Paste each tile's mask back into its frame's full grid.
    masks = [np.zeros(f.pixels.shape, dtype=bool) for f in frames_list]
    cams: dict[tuple[int, int], np.ndarray] = {}
    for tile, pred in zip(tiles, predictions, strict=True):
        y0, y1, x0, x1 = tile.box
        masks[tile.source_index][tile.frame_index, y0:y1, x0:x1] |= pred.mask
        if pred.cam is not None:
            cam = cams.setdefault(
                (tile.source_index, tile.frame_index),
                np.zeros(frames_list[tile.source_index].pixels.shape[1:], dtype=np.float32),
            )
            cam[y0:y1, x0:x1] = np.maximum(cam[y0:y1, x0:x1], pred.cam)

    # Study classification: the most suspicious tile speaks for the study (max P(malignant)).
    best = max(range(len(tiles)), key=lambda i: predictions[i].probabilities.get("malignant", 0.0))
    classification = StudyClassification(
        predicted_class=predictions[best].predicted_class,
        probabilities=dict(predictions[best].probabilities),
    )

    tick = time.perf_counter()
    algorithm = algorithm_info(model)
    datasets = [dcmread(s.path) for s in kept]
    by_series: dict[str, list[int]] = defaultdict(list)
    for index, source in enumerate(kept):
        by_series[source.series_instance_uid].append(index)

    outputs: list[WrittenOutput] = []
    seg_datasets: list[Dataset] = []
    for indices in by_series.values():
        with_lesion = [i for i in indices if masks[i].any()]
        if not with_lesion:
            continue  # no SEG for a series without a lesion: the SR says "no lesion found"
        try:
            seg_datasets.append(
                build_seg(
                    [datasets[i] for i in with_lesion],
                    [masks[i] for i in with_lesion],
                    [frames_list[i].frame_numbers for i in with_lesion],
                    algorithm,
                    SEG_SERIES_NUMBER,
                )
            )
        except SegmentationInputError:
            # One SEG cannot hold this series (several cine loops, mixed sizes): one per image.
            for i in with_lesion:
                seg_datasets.append(
                    build_seg(
                        [datasets[i]],
                        [masks[i]],
                        [frames_list[i].frame_numbers],
                        algorithm,
                        SEG_SERIES_NUMBER,
                        uid_source=kept[i].sop_instance_uid,
                    )
                )

    findings = _findings(tiles, predictions, frames_list, masks)
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
    results = _previews_and_results(
        tiles, predictions, frames_list, masks, cams, kept, out_dir / "preview"
    )
    timings["store"] += time.perf_counter() - tick
    return StudyResult(
        outputs=outputs,
        predicted_class=classification.predicted_class,
        probabilities=classification.probabilities,
        image_count=sum(len(f.frame_numbers) for f in frames_list),
        stage_seconds={k: round(v, 3) for k, v in timings.items()},
        results=results,
        skipped=skipped,
    )


def _measure(mask: np.ndarray, tile: _Tile) -> tuple[float | None, float | None, float | None]:
    """(area mm², long axis mm, short axis mm); all None without a calibrated region or lesion."""
    region = tile.region
    if region is None or not region.mm_per_pixel_x or not region.mm_per_pixel_y or not mask.any():
        return None, None, None
    return mask_measurements(mask, region.mm_per_pixel_x, region.mm_per_pixel_y)


def _findings(
    tiles: Sequence[_Tile],
    predictions: Sequence[Any],
    frames_list: Sequence[Frames],
    masks: Sequence[np.ndarray],
) -> list[LesionFinding]:
    """One finding per source instance with a lesion: its frame with the largest lesion."""
    best_per_source: dict[int, tuple[int, _Tile, Any]] = {}
    for tile, pred in zip(tiles, predictions, strict=True):
        area = int(pred.mask.sum())
        if area == 0:
            continue
        current = best_per_source.get(tile.source_index)
        if current is None or area > current[0]:
            best_per_source[tile.source_index] = (area, tile, pred)
    findings = []
    for index, (area, tile, pred) in sorted(best_per_source.items()):
        area_mm2, long_mm, short_mm = _measure(pred.mask, tile)
        frames = frames_list[index]
        findings.append(
            LesionFinding(
                source_sop_instance_uid=frames.sop_instance_uid,
                frame_number=tile.frame_number if len(frames.frame_numbers) > 1 else None,
                area_mm2=area_mm2,
                long_axis_mm=long_mm,
                short_axis_mm=short_mm,
                area_px=area,
            )
        )
    return findings


def _previews_and_results(
    tiles: Sequence[_Tile],
    predictions: Sequence[Any],
    frames_list: Sequence[Frames],
    masks: Sequence[np.ndarray],
    cams: dict[tuple[int, int], np.ndarray],
    sources: Sequence[SourceImage],
    preview_dir: Path,
    max_frames: int = 4,
) -> list[dict[str, Any]]:
    """Per-frame rows for the dashboard, with overlay PNGs of the first frames of each image."""
    rows: list[dict[str, Any]] = []
    for tile, pred in zip(tiles, predictions, strict=True):
        frames = frames_list[tile.source_index]
        if tile.frame_index >= max_frames:
            continue
        key = (tile.source_index, tile.frame_index)
        name = f"{tile.source_index:03d}_{tile.frame_number:04d}"
        image = frames.pixels[tile.frame_index]
        mask_png, cam_png = f"{name}_mask.png", None
        save_png(
            preview_dir / mask_png, mask_overlay(image, masks[tile.source_index][tile.frame_index])
        )
        if key in cams:
            cam_png = f"{name}_cam.png"
            save_png(preview_dir / cam_png, cam_overlay(image, cams[key]))
        area_mm2, long_mm, short_mm = _measure(pred.mask, tile)
        rows.append(
            {
                "image": tile.source_index + 1,
                "series_uid_hash": uid_hash(sources[tile.source_index].series_instance_uid),
                "sop_instance_uid": sources[tile.source_index].sop_instance_uid,
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
