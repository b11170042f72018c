"""The radiologist workspace of one job: every image and frame, the AI outlines, the study rule.

Built from the database (the job's result rows, its SEG outputs, the other jobs of the study)
and the stored files (the source instance's header and frames, the SEG's bits). Two things
are made on demand and cached under `outputs/<job>/preview/` like the dashboard previews:
each frame at full resolution (`frame_png`) and each frame's Grad-CAM (`cam_png`).

Why per-frame outlines come from the SEG: the pipeline analyses every frame of a cine clip
but keeps result rows (class, probabilities, sizes) only for the first frames of an image
(service.pipeline.PREVIEW_FRAMES); the lesion of any frame is in the AI SEG it sent.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_io.polygons import mask_to_polygons
from dicom_io.read import iter_frames, read_header, read_info
from dicom_io.regions import analysis_boxes, common_pixel_spacing
from dicom_io.seg import seg_frames_by_source
from dicom_io.types import ImageInfo
from inference.study import CLASSES
from service.previews import render_preview, save_png
from service.web.auth import Principal
from service.web.caution import job_caution
from service.web.preview_source import _model as locked_model
from service.web.review_schemas import review_public
from service.web.workspace_schemas import (
    FrameResultPublic,
    RelatedJobPublic,
    StudyInfoPublic,
    WorkspaceImagePublic,
    WorkspacePublic,
)
from storage.files import PRIVATE_FILE_MODE, DataDir, make_private_dirs
from storage.models import AnalysedImage, Instance, Job, JobState, Output, Review, Role
from storage.reviews import latest_for_job

log = logging.getLogger(__name__)

#: One frame decode at a time per process: a scrub through a clip must not start N decodes.
_FRAME_LOCK = threading.Lock()
#: One Grad-CAM at a time (a model run), apart from decodes so a scrub does not wait on it.
_CAM_LOCK = threading.Lock()
#: Largest side a full-resolution frame PNG may have (a US frame is at most ~1200 px).
FULL_MAX_SIDE = 1 << 14


@dataclass(frozen=True)
class JobImage:
    """One source image of a job: its 1-based number, UID and file on disk (None: gone)."""

    index: int
    sop_instance_uid: str
    path: Path | None


# ---- time --------------------------------------------------------------------------------------


def format_local(value: datetime | None, zone: ZoneInfo) -> str | None:
    """'2026-11-23 20:15:02 CET' in the site's zone; None when unset."""
    if value is None:
        return None
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


# ---- the job's images --------------------------------------------------------------------------


def _rows(job: Job) -> list[dict[str, Any]]:
    return [r for r in (job.results or []) if isinstance(r, dict) and r.get("sop_instance_uid")]


def job_images(session: Session, job: Job) -> list[JobImage]:
    """The images this job analysed, in the order of its result rows (image 1, 2, ...)."""
    order: dict[str, int] = {}
    for row in _rows(job):
        uid = str(row["sop_instance_uid"])
        if uid not in order:
            order[uid] = int(row.get("image") or len(order) + 1)
    images = []
    for uid, index in sorted(order.items(), key=lambda item: item[1]):
        path = session.scalar(
            select(Instance.path).where(
                Instance.study_id == job.study_id,
                Instance.sop_instance_uid == uid,
                Instance.conflict_of_id.is_(None),
            )
        )
        found = Path(path) if path and Path(path).is_file() else None
        images.append(JobImage(index, uid, found))
    return images


def find_image(session: Session, job: Job, sop_instance_uid: str) -> JobImage | None:
    """The job's image with that UID and its file, or None (not this job's, or not on disk)."""
    for image in job_images(session, job):
        if image.sop_instance_uid == sop_instance_uid and image.path is not None:
            return image
    return None


# ---- the AI SEG --------------------------------------------------------------------------------


class SegIndex:
    """Where each (source UID, source frame) lives in the job's SEGs, read once per request.

    dicom_io.seg.seg_frame_for_source walks every SEG frame per question; a 300-frame clip
    with a lesion in every frame would then cost 300 x 300 look-ups.
    """

    def __init__(self, segs: Sequence[Dataset]) -> None:
        self.segs = list(segs)
        self.where: dict[tuple[str, int], tuple[int, int]] = {}  # -> (seg index, seg frame)
        for k, seg in enumerate(self.segs):
            for key, frame in seg_frames_by_source(seg).items():
                self.where.setdefault(key, (k, frame))

    @property
    def key(self) -> str:
        """Which SEGs these are (their SOP Instance UIDs): what a cache of outlines is for."""
        return " ".join(sorted(str(seg.SOPInstanceUID) for seg in self.segs))

    def frames_of(self, sop_instance_uid: str) -> list[int]:
        """1-based source frames of that image with an AI lesion, in order."""
        return sorted(n for uid, n in self.where if uid == sop_instance_uid)

    def mask(self, sop_instance_uid: str, frame: int) -> np.ndarray | None:
        """(Rows, Columns) bool lesion mask of that source frame, or None (no lesion)."""
        found = self.where.get((sop_instance_uid, frame))
        if found is None:
            return None
        seg = self.segs[found[0]]
        rows, columns = int(seg.Rows), int(seg.Columns)
        size = rows * columns
        start_bit = (found[1] - 1) * size
        data = np.frombuffer(seg.PixelData, dtype=np.uint8)
        first, last = start_bit // 8, (start_bit + size + 7) // 8
        bits = np.unpackbits(data[first:last], bitorder="little")
        offset = start_bit - first * 8
        return bits[offset : offset + size].reshape(rows, columns).astype(bool)


class OutlineCache:
    """The AI outlines of a job's lesion frames as polygons, kept in
    `outputs/<job>/preview/outlines.json` for the SEGs they came from: tracing one 800 x 600
    mask takes ~8 ms, so a 300-frame clip would cost seconds on every page load."""

    def __init__(self, data_dir: DataDir | None, job_id: int, segs: SegIndex) -> None:
        self.segs = segs
        self.path = None if data_dir is None else _cache_dir(data_dir, job_id) / "outlines.json"
        self.outlines: dict[str, list[list[list[float]]]] = {}
        self.changed = False
        if self.path is not None and self.path.is_file():
            try:
                stored = json.loads(self.path.read_text())
                if stored.get("segs") == segs.key and isinstance(stored.get("outlines"), dict):
                    self.outlines = stored["outlines"]
            except (OSError, ValueError, AttributeError):
                self.outlines = {}  # a broken cache is made again

    def get(self, sop_instance_uid: str, frame: int) -> list[list[list[float]]]:
        name = f"{sop_instance_uid}/{frame}"
        if name not in self.outlines:
            mask = self.segs.mask(sop_instance_uid, frame)
            found = [] if mask is None else [p.to_json() for p in mask_to_polygons(mask)]
            self.outlines[name] = found
            self.changed = True
        return self.outlines[name]

    def save(self) -> None:
        """Write the cache when something was traced (atomic, owner-only, not fsynced)."""
        if self.path is None or not self.changed:
            return
        text = json.dumps({"segs": self.segs.key, "outlines": self.outlines})
        make_private_dirs(self.path.parent)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, self.path)
        except OSError as exc:  # the page is answered anyway; the next load traces again
            tmp.unlink(missing_ok=True)
            log.warning("outline cache not written (%s)", type(exc).__name__)


def job_segs(session: Session, job_id: int) -> SegIndex:
    """The job's AI SEG outputs (not the radiologists' corrections), indexed."""
    corrected = set(
        session.scalars(select(Review.seg_output_id).where(Review.job_id == job_id)).all()
    )
    segs = []
    for output in session.scalars(
        select(Output).where(Output.job_id == job_id, Output.kind == "seg").order_by(Output.id)
    ):
        if output.id in corrected:
            continue
        path = Path(output.path)
        if not path.is_file():
            continue
        try:
            seg = dcmread(path)
        except Exception as exc:  # noqa: BLE001 - the viewer shows the image without outlines
            log.warning("job %d: SEG not readable (%s)", job_id, type(exc).__name__)
            continue
        # A radiologist's corrected SEG (issue 29) is MANUAL or SEMIAUTOMATIC: not the AI's.
        types = {
            str(item.get("SegmentAlgorithmType", "")) for item in seg.get("SegmentSequence", [])
        }
        if types and types <= {"MANUAL", "SEMIAUTOMATIC"}:
            continue
        segs.append(seg)
    return SegIndex(segs)


# ---- building the workspace --------------------------------------------------------------------


def _malignant(probabilities: Mapping[str, float] | None) -> float:
    return float((probabilities or {}).get("malignant", 0.0))


def _frame_rows(rows: Iterable[dict[str, Any]], uid: str) -> dict[int, dict[str, Any]]:
    """Per frame of one image, its most suspicious crop box's row (the study rule per frame)."""
    best: dict[int, dict[str, Any]] = {}
    for row in rows:
        if str(row.get("sop_instance_uid")) != uid or not row.get("frame"):
            continue
        frame = int(row["frame"])
        current = best.get(frame)
        if current is None or _malignant(row.get("probabilities")) > _malignant(
            current.get("probabilities")
        ):
            best[frame] = row
    return best


def _spacing(info: ImageInfo) -> list[float] | None:
    spacing = common_pixel_spacing(analysis_boxes(info.regions, info.shape))
    return None if spacing is None else [round(spacing[0], 6), round(spacing[1], 6)]


def _text(ds: Dataset | None, keyword: str) -> str | None:
    if ds is None:
        return None
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _study_date(ds: Dataset | None) -> str | None:
    raw = _text(ds, "StudyDate")
    if raw and len(raw) == 8 and raw.isdigit():
        return f"{raw[:4]}-{raw[4:6]}-{raw[6:]}"
    return raw


def _laterality(headers: Sequence[Dataset]) -> str | None:
    found = {
        value
        for ds in headers
        for value in (_text(ds, "ImageLaterality"), _text(ds, "Laterality"))
        if value
    }
    if not found:
        return None
    return found.pop() if len(found) == 1 else "B"


def study_info(job: Job, headers: Sequence[Dataset]) -> StudyInfoPublic:
    first = headers[0] if headers else None
    return StudyInfoPublic(
        patient_id=_text(first, "PatientID"),
        study_date=_study_date(first),
        body_part=_text(first, "BodyPartExamined"),
        manufacturer=_text(first, "Manufacturer"),
        model_name=_text(first, "ManufacturerModelName"),
        laterality=_laterality(headers),
        study_instance_uid=job.study.study_instance_uid,
    )


def frame_scores(session: Session, job_id: int) -> dict[str, list[list[float]]]:
    """Per image UID, every frame's [normal, benign, malignant] as the job recorded them
    (service.pipeline.ImageResult.summary 'frame_scores'); images without them are left out."""
    found: dict[str, list[list[float]]] = {}
    for uid, summary in session.execute(
        select(AnalysedImage.sop_instance_uid, AnalysedImage.summary).where(
            AnalysedImage.job_id == job_id
        )
    ):
        scores = (summary or {}).get("frame_scores") if isinstance(summary, dict) else None
        frames = int((summary or {}).get("frames") or 0)
        if not scores or frames < 1:
            continue
        try:
            by_frame = {int(k): [float(x) for x in v] for k, v in scores.items()}
        except (TypeError, ValueError, AttributeError):
            continue
        if len(by_frame) != frames or any(len(v) != len(CLASSES) for v in by_frame.values()):
            continue  # a frame that failed to decode: no per-frame list rather than a gap
        found[uid] = [by_frame[n] for n in range(1, frames + 1)]
    return found


def _as_probabilities(scores: Sequence[float]) -> dict[str, float]:
    return {name: float(value) for name, value in zip(CLASSES, scores, strict=True)}


def _argmax(probabilities: Mapping[str, float]) -> str:
    return max(CLASSES, key=lambda name: float(probabilities.get(name, 0.0)))


def class_rule(
    job: Job,
    images: Sequence[WorkspaceImagePublic],
) -> str:
    """The study rule (inference.study.study_class) in words, with the frame that decided."""
    rule = (
        "The study class is the class of its most suspicious frame: of every analysed frame "
        "of every image, the one with the highest probability of malignancy decides. One "
        "suspicious frame is enough, as a radiologist reports the worst finding; averaging "
        "would let the normal frames of a cine clip hide the lesion."
    )
    if job.state == JobState.DONE and job.predicted_class is None:
        return (
            "No class is given: no image of this study was within the model's scope (unlike "
            "the breast ultrasound it was trained on). Read the images without AI."
        )
    if job.predicted_class is None or not job.probabilities:
        return rule
    frames = sum(image.frames for image in images)
    p = _malignant(job.probabilities)
    where = ""
    deciding: tuple[float, int, int] | None = None  # study rule over every recorded frame
    for image in images:
        for number, scores in enumerate(image.frame_probabilities or [], start=1):
            if deciding is None or scores[-1] > deciding[0]:
                deciding = (scores[-1], image.index, number)
    if deciding is not None and abs(deciding[0] - p) < 5e-4:
        where = f" (image {deciding[1]}, frame {deciding[2]})"
    for image in images if not where else []:
        for result in image.results:
            if result.probabilities and all(
                abs(float(result.probabilities.get(c, -1.0)) - float(job.probabilities.get(c, 0)))
                < 5e-4
                for c in CLASSES
            ):
                where = f" (image {image.index}, frame {result.frame})"
                break
        if where:
            break
    counted = f"{frames} frame{'s' if frames != 1 else ''} in {len(images)} " + (
        "image" if len(images) == 1 else "images"
    )
    top = _argmax(job.probabilities)
    if top == job.predicted_class:
        called = f"is classed {job.predicted_class}."
    else:  # the class was made to agree with the outlines (inference.study)
        called = (
            f"was most probably {top} ({100 * float(job.probabilities[top]):.1f} %), but the "
            f"class given is {job.predicted_class}: the class follows the lesion outlines (a "
            "study with an outline is benign or malignant, one without is normal)."
        )
    return (
        f"{rule} Here {counted} were analysed; the deciding frame{where} has a "
        f"{100 * p:.1f} % probability of malignancy and {called}"
    )


def build_workspace(
    session: Session,
    job: Job,
    principal: Principal,
    zone: ZoneInfo,
    runtime: Any = None,
    data_dir: DataDir | None = None,
) -> WorkspacePublic:
    """The workspace JSON of `job` for `principal` (who decides `can_edit`); with `data_dir`
    the traced outlines are cached beside the job's previews."""
    rows = _rows(job)
    segs = job_segs(session, job.id)
    outline_cache = OutlineCache(data_dir, job.id, segs)
    reviews = latest_for_job(session, job.id)  # (uid, frame) -> newest review, any job
    scored = frame_scores(session, job.id)
    images: list[WorkspaceImagePublic] = []
    headers: list[Dataset] = []
    with_cam = getattr(runtime, "models", None) is not None
    for image in job_images(session, job):
        if image.path is None:
            continue
        try:
            info = read_info(image.path)
            headers.append(read_header(image.path))
        except Exception as exc:  # noqa: BLE001 - an unreadable source is left out, named
            log.warning(
                "job %d image %d not readable (%s)", job.id, image.index, type(exc).__name__
            )
            continue
        uid = image.sop_instance_uid
        by_frame = _frame_rows(rows, uid)
        image_scores = scored.get(uid)
        if image_scores is not None and len(image_scores) != info.number_of_frames:
            image_scores = None  # recorded for another version of the file: not shown
        lesion_frames = [f for f in segs.frames_of(uid) if f <= info.number_of_frames]
        results = []
        review_frames = {frame for (source, frame), _ in reviews.items() if source == uid}
        for frame in sorted(set(by_frame) | set(lesion_frames) | review_frames):
            if frame > info.number_of_frames:
                continue
            row = by_frame.get(frame, {})
            review = reviews.get((uid, frame))
            probabilities = row.get("probabilities")
            if probabilities is None and image_scores is not None:
                probabilities = _as_probabilities(image_scores[frame - 1])
            outlines = outline_cache.get(uid, frame) if frame in lesion_frames else []
            results.append(
                FrameResultPublic(
                    frame=frame,
                    predicted_class=row.get("predicted_class")
                    or (_argmax(probabilities) if probabilities else None),
                    probabilities=probabilities,
                    long_axis_mm=row.get("long_axis_mm"),
                    short_axis_mm=row.get("short_axis_mm"),
                    descriptors=row.get("descriptors"),
                    lesions=outlines,
                    review=None if review is None else review_public(review),
                )
            )
        explained = any(r.get("cam_png") for r in rows if str(r.get("sop_instance_uid")) == uid)
        base = f"/api/jobs/{job.id}/images/{uid}"
        images.append(
            WorkspaceImagePublic(
                index=image.index,
                sop_instance_uid=uid,
                rows=info.rows,
                columns=info.columns,
                frames=info.number_of_frames,
                pixel_spacing_mm=_spacing(info),
                lesion_frames=[r.frame for r in results if r.lesions],
                frame_url=f"{base}/frames/{{frame}}.png",
                cam_url=f"{base}/cam/{{frame}}.png" if with_cam and explained else None,
                results=results,
                frame_probabilities=image_scores,
            )
        )
    outline_cache.save()
    related = session.scalars(
        select(Job).where(Job.study_id == job.study_id, Job.id != job.id).order_by(Job.id)
    ).all()
    times = {
        name: text
        for name, value in (
            ("received", job.created_at),
            ("queued", job.queued_at),
            ("started", job.running_at),
            ("exporting", job.exporting_at),
            ("finished", job.finished_at),
        )
        if (text := format_local(value, zone)) is not None
    }
    can_edit = principal.can(Role.RADIOLOGIST) and job.state == JobState.DONE
    return WorkspacePublic(
        job_id=job.id,
        trial=False,
        study=study_info(job, headers),
        predicted_class=job.predicted_class,
        probabilities=job.probabilities,
        class_rule=class_rule(job, images),
        times=times,
        time_zone=zone.key,
        related_jobs=[
            RelatedJobPublic(
                id=other.id,
                state=other.state,
                created=format_local(other.created_at, zone) or "",
                url=f"/jobs/{other.id}",
            )
            for other in related
        ],
        caution=job_caution(session, job.id),
        can_edit=can_edit,
        csrf_token=principal.csrf_token if can_edit else None,
        review_url=f"/api/jobs/{job.id}/review",
        images=images,
    )


# ---- full-resolution frames and Grad-CAM -------------------------------------------------------


def _cache_dir(data_dir: DataDir, job_id: int) -> Path:
    return data_dir.outputs / str(int(job_id)) / "preview"


def _full_name(index: int, frame: int) -> str:
    return f"full_{index:03d}_{frame:05d}.png"


def frame_png(data_dir: DataDir, job_id: int, image: JobImage, frame: int) -> Path | None:
    """Frame `frame` of `image` as a full-resolution 8-bit grey PNG, cached; None: no such frame.

    Decoded with dicom_io's reader (the pipeline's own luminance). A clip decodes in batches,
    so every frame of the requested frame's batch is cached at once: scrubbing then reads
    files.
    """
    cache = _cache_dir(data_dir, job_id)
    path = cache / _full_name(image.index, frame)
    if path.is_file():
        return path
    if image.path is None or frame < 1:
        return None
    with _FRAME_LOCK:
        if path.is_file():  # another request made it while this one waited
            return path
        if frame > read_info(image.path).number_of_frames:
            return None
        for numbers, pixels in iter_frames(image.path):
            if frame not in numbers:
                continue
            for number, pixel in zip(numbers, pixels, strict=True):
                target = cache / _full_name(image.index, number)
                if not target.is_file():
                    gray = np.clip(np.asarray(pixel) * 255.0 + 0.5, 0, 255).astype(np.uint8)
                    save_png(target, gray, max_side=FULL_MAX_SIDE)
            break
    return path if path.is_file() else None


def cam_png(
    data_dir: DataDir, job_id: int, image: JobImage, frame: int, runtime: Any
) -> Path | None:
    """Frame `frame`'s Grad-CAM over the image (service.previews), cached; None without model."""
    if image.path is None or frame < 1:
        return None
    cache = _cache_dir(data_dir, job_id)
    name = f"ws_{image.index:03d}_{frame:05d}_cam.png"
    if (cache / name).is_file():
        return cache / name
    if frame > read_info(image.path).number_of_frames:
        return None
    model = locked_model(runtime)
    if model is None:
        return None
    with _CAM_LOCK:
        return render_preview(
            cache,
            name,
            source=image.path,
            sop_instance_uid=image.sop_instance_uid,
            frame_number=frame,
            seg_paths=[],
            model=model,
        )
