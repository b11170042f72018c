"""Try the model without a PACS: one uploaded PNG, JPEG or DICOM file, analysed in process.

No job, no outbox, no SEG or SR: nothing is sent anywhere. A DICOM file goes through the
pipeline's own stages (:func:`service.pipeline.inspect`, :func:`~service.pipeline.analyse`,
:func:`~service.pipeline.collect`, :func:`~service.pipeline.classify`) after the same header
checks as a file from the PACS (deflate guard, breast-only routing); a PNG or JPEG has no
header, so it is analysed as one frame with no ultrasound region: no calibration, sizes in
pixels only. Every frame of a cine clip is analysed and kept (the job keeps the first few).

What is kept, under ``<data_dir>/trials/<trial id>/`` (owner-only): ``trial.json`` (the
result), the DICOM file or the picture's grayscale frame as PNG (its own metadata, EXIF
included, is dropped), and frame and Grad-CAM PNGs made when the viewer asks for them. A trial
expires :data:`TRIAL_TTL` after its upload; :func:`sweep` removes expired ones and runs on
every access. Trial ids are ``secrets.token_urlsafe`` (192 bits): the id is the capability,
checked together with the role of whoever uploaded it.
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.dataset import Dataset

from dicom_io.errors import DicomIOError
from dicom_io.measure import mask_measurements
from dicom_io.polygons import mask_to_polygons
from dicom_io.read import iter_frames, read_header, read_info, skip_reason
from dicom_io.regions import analysis_boxes, common_pixel_spacing
from dicom_io.routing import RoutingRules, device_caution
from dicom_io.types import ImageInfo
from service.pipeline import (
    OUTSIDE_SCOPE_REASON,
    BoxPrediction,
    FrameResult,
    ImageResult,
    ModelLike,
    SourceImage,
    StageTimer,
    analyse,
    classify,
    collect,
    inspect,
    study_cautions,
)
from service.previews import cam_overlay
from storage.files import DataDir, make_private_dirs, write_atomic

log = logging.getLogger(__name__)

TRIALS_DIRNAME = "trials"
#: How long an uploaded trial and its images are kept.
TRIAL_TTL = timedelta(hours=24)
#: Largest PNG/JPEG accepted, in pixels (decoded as float32 for the model: 4 bytes a pixel).
MAX_PICTURE_PIXELS = 40_000_000
TRIAL_FILE = "trial.json"
SOURCE_DICOM = "source.dcm"
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{32}$")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"

#: What a PNG or JPEG lacks, shown with its result.
NO_CALIBRATION = (
    "Picture without a DICOM header: no ultrasound region calibration, so sizes are in "
    "pixels only, and the scanner cannot be checked against the devices the model was "
    "validated on"
)
CLASS_RULE = (
    "The class is that of the most suspicious frame: of every analysed frame (and each pane "
    "of a dual view), the one with the highest probability of malignancy decides. One "
    "suspicious frame is enough, as a radiologist reports the worst finding; averaging would "
    "let the normal frames of a cine clip hide the lesion."
)

#: One trial analysed at a time per process: a cine clip holds its frames' results in memory.
_ANALYSE_LOCK = threading.Lock()
_RENDER_LOCK = threading.Lock()
#: Readers sweep expired trials at most this often (uploads always sweep first).
SWEEP_EVERY_SECONDS = 60.0
_SWEEP_LOCK = threading.Lock()
_LAST_SWEEP: dict[str, float] = {}


class TrialError(Exception):
    """An upload that cannot be tried, with the HTTP status and a message for the user."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialFrame:
    """The model's result for one frame (every crop box of it together)."""

    frame: int  # 1-based
    predicted_class: str | None  # None: the frame failed the in-distribution check
    probabilities: dict[str, float] | None
    long_axis_mm: float | None
    short_axis_mm: float | None
    descriptors: dict[str, Any] | None
    lesions: list[list[list[float]]]  # AI outlines, pixel-centre [[x, y], ...]


@dataclass(frozen=True)
class TrialImage:
    """The one image of a trial, as the viewer needs it."""

    rows: int
    columns: int
    frames: int
    sop_instance_uid: str | None  # None for a picture
    pixel_spacing_mm: list[float] | None  # [row, col]; None without calibration
    lesion_frames: list[int]
    results: list[TrialFrame]


@dataclass(frozen=True)
class TrialStudy:
    """Header facts of an uploaded DICOM file (all None for a picture)."""

    patient_id: str | None = None
    study_date: str | None = None  # YYYY-MM-DD
    body_part: str | None = None
    manufacturer: str | None = None
    model_name: str | None = None
    laterality: str | None = None
    study_instance_uid: str | None = None


@dataclass(frozen=True)
class Trial:
    """One trial upload and its result.

    ``analysed`` is False for a DICOM file the routing rules leave alone (not breast, ...):
    ``not_analysed_reason`` says why, and nothing is kept on disk.
    """

    trial_id: str | None
    kind: str  # "png" | "jpeg" | "dicom"
    created: datetime
    owner: str
    owner_role: str
    analysed: bool
    not_analysed_reason: str | None = None
    predicted_class: str | None = None
    probabilities: dict[str, float] | None = None
    caution: str | None = None
    model_version: str | None = None
    model_status: str | None = None
    study: TrialStudy = field(default_factory=TrialStudy)
    image: TrialImage | None = None

    @property
    def expires(self) -> datetime:
        return self.created + TRIAL_TTL

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["created"] = self.created.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trial:
        image = data.get("image")
        return cls(
            **{
                **data,
                "created": datetime.fromisoformat(data["created"]),
                "study": TrialStudy(**data.get("study") or {}),
                "image": None
                if image is None
                else TrialImage(
                    **{**image, "results": [TrialFrame(**r) for r in image["results"]]}
                ),
            }
        )


# ---- storage -----------------------------------------------------------------------------------


def trials_root(data_dir: DataDir) -> Path:
    return data_dir.root / TRIALS_DIRNAME


def valid_trial_id(trial_id: str) -> bool:
    """True for an id :func:`new_trial_id` could have made (safe as a path component)."""
    return bool(_ID_RE.fullmatch(trial_id))


def new_trial_id() -> str:
    """32 URL-safe characters, 192 random bits: not guessable, not enumerable."""
    return secrets.token_urlsafe(24)


def _created(directory: Path) -> datetime:
    """When a trial was made: its record, or the folder's time for one half written."""
    try:
        return datetime.fromisoformat(json.loads((directory / TRIAL_FILE).read_text())["created"])
    except (OSError, ValueError, KeyError, TypeError):
        return datetime.fromtimestamp(directory.stat().st_mtime, UTC)


def sweep(data_dir: DataDir, now: datetime | None = None) -> int:
    """Remove trials older than :data:`TRIAL_TTL`; returns how many were removed."""
    root = trials_root(data_dir)
    if not root.is_dir():
        return 0
    now = now or datetime.now(UTC)
    removed = 0
    for directory in root.iterdir():
        if not directory.is_dir():
            continue
        try:
            if now - _created(directory) < TRIAL_TTL:
                continue
            shutil.rmtree(directory)
            removed += 1
        except OSError as exc:  # removed by a concurrent sweep, or not ours to remove
            log.warning("trial not removed: %s", type(exc).__name__)
    return removed


def sweep_now_and_then(data_dir: DataDir, now: datetime | None = None) -> None:
    """:func:`sweep`, at most every :data:`SWEEP_EVERY_SECONDS` per data directory (every
    frame a viewer scrubs to is a request; each sweep reads every trial's record)."""
    key = str(trials_root(data_dir))
    tick = time.monotonic()
    with _SWEEP_LOCK:
        last = _LAST_SWEEP.get(key)
        if now is None and last is not None and tick - last < SWEEP_EVERY_SECONDS:
            return
        _LAST_SWEEP[key] = tick
    sweep(data_dir, now)


def load_trial(data_dir: DataDir, trial_id: str, now: datetime | None = None) -> Trial | None:
    """The stored trial `trial_id`, or None (bad id, never made, or expired and now removed).

    Expired trials are swept on access; the one asked for is checked itself, so it is never
    served past :data:`TRIAL_TTL`, whenever the last sweep ran."""
    sweep_now_and_then(data_dir, now)
    if not valid_trial_id(trial_id):
        return None
    directory = trials_root(data_dir) / trial_id
    try:
        trial = Trial.from_json(json.loads((directory / TRIAL_FILE).read_text()))
    except FileNotFoundError:
        return None
    if (now or datetime.now(UTC)) >= trial.expires:
        shutil.rmtree(directory, ignore_errors=True)
        return None
    return trial


def trial_dir(data_dir: DataDir, trial_id: str) -> Path:
    if not valid_trial_id(trial_id):
        raise ValueError("not a trial id")
    return trials_root(data_dir) / trial_id


# ---- upload ------------------------------------------------------------------------------------


def sniff(data: bytes) -> str | None:
    """Kind by the file's own signature (not its name): png, jpeg, dicom; None otherwise."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def create_trial(
    data_dir: DataDir,
    data: bytes,
    model: ModelLike,
    *,
    owner: str,
    owner_role: str,
    rules: RoutingRules,
    max_inflated_bytes: int,
    now: datetime | None = None,
) -> Trial:
    """Analyse one uploaded file and keep its result for :data:`TRIAL_TTL`.

    Raises
    ------
    TrialError
        415 neither PNG, JPEG nor DICOM; 422 a file of that kind that cannot be decoded or
        analysed; 413 a picture over :data:`MAX_PICTURE_PIXELS` or a deflated DICOM data set
        inflating beyond `max_inflated_bytes`.
    """
    now = now or datetime.now(UTC)
    sweep(data_dir, now)
    kind = sniff(data)
    if kind is None:
        raise TrialError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "not a PNG, JPEG or DICOM file: send a PNG or JPEG picture, or a DICOM Part 10 "
            "file (with its 'DICM' preamble)",
        )
    data_dir.ensure_free_space(len(data))
    trial_id = new_trial_id()
    directory = trial_dir(data_dir, trial_id)
    make_private_dirs(directory)
    base = Trial(trial_id, kind, now, owner, owner_role, analysed=True)
    try:
        with _ANALYSE_LOCK:
            if kind == "dicom":
                trial = _dicom_trial(base, directory, data, model, rules, max_inflated_bytes)
            else:
                trial = _picture_trial(base, directory, data, model)
        if not trial.analysed:
            shutil.rmtree(directory, ignore_errors=True)  # nothing to show: nothing kept
            return Trial(**{**asdict_shallow(trial), "trial_id": None})
        write_atomic(directory / TRIAL_FILE, json.dumps(trial.to_json()).encode())
        return trial
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def asdict_shallow(trial: Trial) -> dict[str, Any]:
    """The trial's fields, nested dataclasses kept as they are (for a modified copy)."""
    return {name: getattr(trial, name) for name in trial.__dataclass_fields__}


def _decode_picture(data: bytes) -> np.ndarray:
    """(H, W) float32 0..1 luminance of a PNG or JPEG, EXIF orientation applied."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PICTURE_PIXELS:
                raise TrialError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"picture of {img.width} x {img.height} pixels: at most "
                    f"{MAX_PICTURE_PIXELS // 1_000_000} million pixels",
                )
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I"):  # 16-bit (or 32-bit) grayscale
                array = np.asarray(img, dtype=np.float32)
                top = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
                gray = np.clip(array / top, 0.0, 1.0)
            else:
                if img.mode in ("RGBA", "LA", "PA", "P"):
                    img = img.convert("RGBA")  # transparent areas on black, as on a screen
                    black = Image.new("RGBA", img.size, (0, 0, 0, 255))
                    img = Image.alpha_composite(black, img)
                gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except TrialError:
        raise
    except Image.DecompressionBombError:
        raise TrialError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"picture too large: at most {MAX_PICTURE_PIXELS // 1_000_000} million pixels",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise TrialError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            f"the picture could not be decoded ({type(exc).__name__}): a damaged or "
            "truncated file?",
        ) from None
    if gray.ndim != 2 or min(gray.shape) < 16:
        raise TrialError(
            HTTPStatus.UNPROCESSABLE_ENTITY, "the picture is too small (under 16 pixels a side)"
        )
    return np.ascontiguousarray(gray, dtype=np.float32)


def _picture_trial(base: Trial, directory: Path, data: bytes, model: ModelLike) -> Trial:
    """A PNG or JPEG: one frame, the whole picture as the one crop box (no regions)."""
    gray = _decode_picture(data)
    _save_gray(directory / _frame_name(1), gray)
    rows, columns = gray.shape
    uid = f"2.25.{uuid.uuid4().int}"  # placeholders: the stages want UIDs; never shown
    info = ImageInfo(uid, uid, uid, uid, rows, columns, 1, (), None)
    source = SourceImage(uid, uid, directory / _frame_name(1))

    def frames() -> Iterator[FrameResult]:
        boxes = analysis_boxes(info.regions, info.shape)
        predictions = model.predict([gray[box.slices] for box in boxes])
        yield FrameResult(
            0,
            1,
            gray,
            tuple(
                BoxPrediction(
                    box,
                    p.mask,
                    dict(p.probabilities),
                    p.predicted_class,
                    bool(getattr(p, "in_scope", True)),  # as pipeline.analyse
                )
                for box, p in zip(boxes, predictions, strict=True)
            ),
        )

    skipped: list[dict[str, str]] = []
    results = collect(
        frames(), [(source, info)], skipped, StageTimer(), preview_frames=1, explain=False
    )
    if not results:  # the one frame outside the model's scope (pipeline.collect drops it)
        return _not_analysed(base, skipped)
    return _finish(base, results, model, TrialStudy(), NO_CALIBRATION, None)


def _dicom_trial(
    base: Trial,
    directory: Path,
    data: bytes,
    model: ModelLike,
    rules: RoutingRules,
    max_inflated_bytes: int,
) -> Trial:
    """A DICOM file: the job's header checks and stages, every frame kept."""
    path = directory / SOURCE_DICOM
    write_atomic(path, data)
    try:
        header = read_header(path, max_inflated_bytes)  # a deflate bomb refused here
    except DicomIOError as exc:
        code = getattr(exc, "code", "unreadable")
        if code == "too_large":
            raise TrialError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc)) from None
        raise TrialError(
            HTTPStatus.UNPROCESSABLE_ENTITY, f"not a readable DICOM file ({code}): {exc}"
        ) from None
    study = _study(header)
    reason = skip_reason(header, rules)
    if reason is not None:
        return Trial(
            **{**asdict_shallow(base), "analysed": False, "not_analysed_reason": reason},
        )
    skipped: list[dict[str, str]] = []
    timer = StageTimer()
    try:
        sop = str(header.SOPInstanceUID)
        source = SourceImage(sop, str(header.SeriesInstanceUID), path)
    except AttributeError:
        raise TrialError(HTTPStatus.UNPROCESSABLE_ENTITY, "the file has no SOP UIDs") from None
    infos = inspect([source], skipped, timer)
    if not infos:
        raise TrialError(HTTPStatus.UNPROCESSABLE_ENTITY, f"not analysed: {skipped[0]['reason']}")
    frames = infos[0][1].number_of_frames
    results = collect(
        analyse(infos, model, timer), infos, skipped, timer, preview_frames=frames, explain=False
    )
    if any(k.get("code") == "outside_scope" for k in skipped):
        return _not_analysed(base, skipped)
    if not results:
        why = skipped[0]["reason"] if skipped else "no frame could be decoded"
        raise TrialError(HTTPStatus.UNPROCESSABLE_ENTITY, f"not analysed: {why}")
    validated = (getattr(model, "meta", None) or {}).get("validated_devices")
    return _finish(base, results, model, study, device_caution([header], validated), sop)


def _not_analysed(base: Trial, skipped: Sequence[dict[str, str]]) -> Trial:
    """Every frame outside the model's scope: no class, no outline, the reason said."""
    reasons = [k["reason"] for k in skipped if k.get("code") == "outside_scope"]
    reason = reasons[0] if reasons else OUTSIDE_SCOPE_REASON
    return Trial(**{**asdict_shallow(base), "analysed": False, "not_analysed_reason": reason})


def _finish(
    base: Trial,
    results: Sequence[ImageResult],
    model: ModelLike,
    study: TrialStudy,
    caution: str | None,
    sop_instance_uid: str | None,
) -> Trial:
    """The trial with its image's per-frame results and the study class, by the job's rule
    (:func:`service.pipeline.classify`: the class follows the masks) with its cautions.

    Frames the model's in-distribution check turned down have no row (pipeline.collect):
    they are listed with no class and no outline, and said in the caution."""
    (result,) = results
    info = result.info
    boxes = analysis_boxes(info.regions, info.shape)
    call = classify(results, [])
    analysed = {row.frame for row in result.rows}
    outside = [n for n in range(1, info.number_of_frames + 1) if n not in analysed]
    notes = [caution] if caution else []
    notes += [note.rstrip(".") for note in study_cautions(results, [], 0)]
    if outside:
        notes.append(
            f"{len(outside)} of {info.number_of_frames} frames are unlike the images the model "
            "was trained on: they are not classified"
        )
    spacing = common_pixel_spacing(boxes)
    image = TrialImage(
        rows=info.rows,
        columns=info.columns,
        frames=info.number_of_frames,
        sop_instance_uid=sop_instance_uid,
        pixel_spacing_mm=None if spacing is None else [float(spacing[0]), float(spacing[1])],
        lesion_frames=sorted(result.lesion_frames),
        results=list(_frames(result)),
    )
    return Trial(
        **{
            **asdict_shallow(base),
            "predicted_class": call.predicted_class,
            "probabilities": {k: round(float(v), 4) for k, v in (call.probabilities or {}).items()}
            or None,
            "caution": ". ".join(notes) or None,
            "model_version": str(getattr(model, "version", "")) or None,
            "model_status": str(getattr(model, "status", "")) or None,
            "study": study,
            "image": image,
        }
    )


def _frames(result: ImageResult) -> Iterator[TrialFrame]:
    """One :class:`TrialFrame` per frame: its boxes' rows merged, its mask as polygons; a
    frame without a row (outside the model's scope) with neither class nor outline."""
    by_frame: dict[int, list[Any]] = {}
    for row in result.rows:
        by_frame.setdefault(row.frame, []).append(row)
    rows, columns = result.info.shape
    for number in range(1, result.info.number_of_frames + 1):
        if number not in by_frame:  # outside the model's scope
            yield TrialFrame(number, None, None, None, None, None, [])
            continue
        frame_rows = by_frame[number]
        # The frame's most suspicious box decides (the study rule, first on ties), with the
        # model's own class for it (which follows that box's mask).
        deciding = max(frame_rows, key=lambda r: float(r.probabilities.get("malignant", 0.0)))
        largest = max(frame_rows, key=lambda r: r.lesion_area_px)
        lesions: list[list[list[float]]] = []
        descriptors = dict(largest.descriptors) if largest.descriptors else None
        packed = result.lesion_frames.get(number)
        if packed is not None:
            mask = np.unpackbits(packed, count=rows * columns).reshape(rows, columns) > 0
            lesions = [p.to_json() for p in mask_to_polygons(mask)]
            if largest.long_axis_mm is None and largest.lesion_area_px:
                # No calibration: the sizes in pixels, said so by the key names.
                area, long_px, short_px = mask_measurements(mask, 1.0, 1.0)
                descriptors = {
                    **(descriptors or {}),
                    "long_axis_px": round(long_px, 1),
                    "short_axis_px": round(short_px, 1),
                    "area_px": int(area),
                }
        yield TrialFrame(
            frame=number,
            predicted_class=deciding.predicted_class,
            probabilities={k: round(float(v), 4) for k, v in deciding.probabilities.items()},
            long_axis_mm=largest.long_axis_mm,
            short_axis_mm=largest.short_axis_mm,
            descriptors=descriptors,
            lesions=lesions,
        )


def _text(ds: Dataset, keyword: str) -> str | None:
    value = str(ds.get(keyword, "") or "").strip()
    return value or None


def _study(header: Dataset) -> TrialStudy:
    """The header facts the viewer shows; the uploader sees their own file's patient ID."""
    date = _text(header, "StudyDate")
    if date and len(date) == 8 and date.isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    laterality = None
    for keyword in ("ImageLaterality", "Laterality"):
        laterality = laterality or _text(header, keyword)
    return TrialStudy(
        patient_id=_text(header, "PatientID"),
        study_date=date,
        body_part=_text(header, "BodyPartExamined"),
        manufacturer=_text(header, "Manufacturer"),
        model_name=_text(header, "ManufacturerModelName"),
        laterality=laterality,
        study_instance_uid=_text(header, "StudyInstanceUID"),
    )


# ---- images for the viewer -----------------------------------------------------------------------


def _frame_name(number: int) -> str:
    return f"frame_{int(number):05d}.png"


def _cam_name(number: int) -> str:
    return f"cam_{int(number):05d}.png"


def _save_gray(path: Path, gray: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L").save(
        buf, format="PNG"
    )
    write_atomic(path, buf.getvalue())


def _save_rgb(path: Path, rgb: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def _check_frame(trial: Trial, number: int) -> None:
    if trial.image is None or not 1 <= number <= trial.image.frames:
        raise TrialError(HTTPStatus.NOT_FOUND, "no such frame")


def _frame_pixels(directory: Path, trial: Trial, number: int) -> np.ndarray:
    """(H, W) float32 0..1 of one frame; DICOM frames met on the way are cached as PNG."""
    cached = directory / _frame_name(number)
    if trial.kind != "dicom":
        with Image.open(cached) as img:
            return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    for numbers, pixels in iter_frames(directory / SOURCE_DICOM):
        for k, n in enumerate(numbers):
            if not (directory / _frame_name(n)).is_file():
                _save_gray(directory / _frame_name(n), pixels[k])
        if number in numbers:
            return np.array(pixels[numbers.index(number)])
    raise TrialError(HTTPStatus.NOT_FOUND, "no such frame")


def frame_png(data_dir: DataDir, trial: Trial, number: int) -> Path:
    """The full-resolution 8-bit grayscale PNG of frame `number` (1-based), made if missing."""
    _check_frame(trial, number)
    assert trial.trial_id is not None
    directory = trial_dir(data_dir, trial.trial_id)
    path = directory / _frame_name(number)
    if not path.is_file():
        with _RENDER_LOCK:
            if not path.is_file():
                _frame_pixels(directory, trial, number)
    return path


def cam_png(data_dir: DataDir, trial: Trial, number: int, model: ModelLike) -> Path:
    """Grad-CAM of frame `number` blended over the frame (as the job's previews), made on
    first request: one more model call with a backward pass, so not done for every frame."""
    _check_frame(trial, number)
    assert trial.trial_id is not None
    directory = trial_dir(data_dir, trial.trial_id)
    path = directory / _cam_name(number)
    if path.is_file():
        return path
    with _RENDER_LOCK:
        if path.is_file():
            return path
        image = _frame_pixels(directory, trial, number)
        regions = read_info(directory / SOURCE_DICOM).regions if trial.kind == "dicom" else ()
        boxes = analysis_boxes(regions, image.shape)  # type: ignore[arg-type]
        predictions = model.predict([image[box.slices] for box in boxes], with_cam=True)
        cam = np.zeros(image.shape, dtype=np.float32)
        for box, prediction in zip(boxes, predictions, strict=True):
            found = getattr(prediction, "cam", None)
            if found is not None:
                cam[box.slices] = np.maximum(cam[box.slices], found)
        _save_rgb(path, cam_overlay(image, cam))
    return path
