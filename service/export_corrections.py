"""`wecare export-corrections OUT`: the radiologists' reviews as a BUSI-layout training set.

For every reviewed frame, the newest review wins (a frame corrected twice is exported once, as
last corrected). Each becomes ``OUT/<label>/<name>.png`` (the frame as decoded, 8-bit grey)
and ``OUT/<label>/<name>_mask.png`` (0/255: the corrected SEG's mask of that frame; empty for
a rejection or a frame outlined as lesion-free), listed in ``OUT/manifest.csv`` with columns
``image, mask, label, group, source, scanner`` — what :func:`inference.data.discover` reads,
so ``wecare train --data-dir OUT`` takes it.

No patient data leaves: names are a hash of the image UID and frame, `group` (images of one
patient stay on one side of a split) is an integer from a keyed hash of the Patient ID whose
key is made for this export and never written, so a group cannot be traced back by hashing
candidate IDs; `scanner` is the manufacturer and model name.

Label: the radiologist's class when the review gave one; "normal" for a rejection or a frame
with no lesion; otherwise the AI's class of the job. A frame with a lesion whose class would
be "normal" (the AI said normal, the radiologist drew a lesion without a class) is not
exported: it is counted and named in the summary.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_io.errors import DicomIOError
from dicom_io.read import iter_frames, read_header
from dicom_io.seg import seg_frame_mask
from service.logs import uid_hash
from storage.files import write_atomic
from storage.models import Instance, Job, Output, Review
from storage.reviews import iter_all_reviews, latest_by_frame

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("image", "mask", "label", "group", "source", "scanner")
SOURCE = "corrections"


@dataclass(frozen=True)
class ExportedFrame:
    """One manifest row."""

    image: str
    mask: str
    label: str
    group: int
    source: str
    scanner: str


@dataclass
class ExportSummary:
    """What an export wrote and left out (reasons carry no patient data)."""

    out_dir: Path
    written: list[ExportedFrame] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Frames per label."""
        out: dict[str, int] = {}
        for row in self.written:
            out[row.label] = out.get(row.label, 0) + 1
        return out


@dataclass(frozen=True)
class _Item:
    """A reviewed frame to export: which image, frame and review."""

    sop_instance_uid: str
    frame: int
    review: Review


def export_corrections(
    session: Session,
    out_dir: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    key: bytes | None = None,
) -> ExportSummary:
    """Write the newest review of every reviewed frame into `out_dir` (see the module doc).

    `progress(done, total)` is called after each frame. `key` (tests) fixes the group key;
    by default a random one is made for this export.
    """
    key = key or secrets.token_bytes(32)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    latest = latest_by_frame(list(iter_all_reviews(session)))
    items = [_Item(uid, frame, review) for (uid, frame), review in sorted(latest.items())]
    summary = ExportSummary(out_dir)
    by_image: dict[str, list[_Item]] = {}
    for item in items:
        by_image.setdefault(item.sop_instance_uid, []).append(item)
    done = 0
    for uid, frames in by_image.items():
        for row in _export_image(session, uid, frames, out_dir, key, summary):
            summary.written.append(row)
        done += len(frames)
        if progress is not None:
            progress(done, len(items))
    _write_manifest(out_dir, summary.written)
    return summary


def _export_image(
    session: Session,
    uid: str,
    items: list[_Item],
    out_dir: Path,
    key: bytes,
    summary: ExportSummary,
) -> Iterable[ExportedFrame]:
    """The reviewed frames of one image: decoded once, written one by one."""
    path = session.scalar(
        select(Instance.path).where(
            Instance.sop_instance_uid == uid, Instance.conflict_of_id.is_(None)
        )
    )
    if not path or not Path(path).is_file():
        summary.skipped.append(f"image {uid_hash(uid)}: source file not found")
        return []
    try:
        header = read_header(path)
    except DicomIOError as exc:
        summary.skipped.append(f"image {uid_hash(uid)}: {exc.code}")
        return []
    multi = int(header.get("NumberOfFrames", 1) or 1) > 1
    group = _group(header, key)
    scanner = " ".join(
        str(header.get(k, "") or "").strip() for k in ("Manufacturer", "ManufacturerModelName")
    ).strip()
    wanted = {item.frame: item for item in items}
    rows: list[ExportedFrame] = []
    segs: dict[int, object] = {}
    for numbers, pixels in iter_frames(path):
        for k, number in enumerate(numbers):
            item = wanted.get(int(number))
            if item is None:
                continue
            mask = _mask_of(session, item, multi, pixels.shape[1:], segs)
            label = _label(session, item.review, bool(mask.any()))
            name = _name(uid, item.frame)
            if label is None:
                summary.skipped.append(
                    f"image {uid_hash(uid)} frame {item.frame}: a lesion without a class "
                    "(review it again with a class)"
                )
                continue
            image_rel, mask_rel = f"{label}/{name}.png", f"{label}/{name}_mask.png"
            _write_png(out_dir / image_rel, np.round(pixels[k] * 255.0).astype(np.uint8))
            _write_png(out_dir / mask_rel, mask.astype(np.uint8) * 255)
            rows.append(ExportedFrame(image_rel, mask_rel, label, group, SOURCE, scanner))
    return rows


def _mask_of(
    session: Session,
    item: _Item,
    multi: bool,
    shape: tuple[int, ...],
    cache: dict[int, object],
) -> np.ndarray:
    """The corrected SEG's mask of the frame; empty without a SEG or a SEG frame."""
    review = item.review
    empty = np.zeros(shape, dtype=bool)
    if review.seg_output_id is None:
        return empty
    seg = cache.get(review.seg_output_id)
    if seg is None:
        output = session.get(Output, review.seg_output_id)
        if output is None or not Path(output.path).is_file():
            return empty
        seg = dcmread(output.path)
        cache[review.seg_output_id] = seg
    mask = seg_frame_mask(seg, item.sop_instance_uid, item.frame if multi else None)  # type: ignore[arg-type]
    return empty if mask is None else mask


def _label(session: Session, review: Review, has_lesion: bool) -> str | None:
    """See the module doc; None: a lesion whose class would be "normal"."""
    if review.action == "reject" or not has_lesion:
        return "normal"
    if review.label:
        return review.label
    job = session.get(Job, review.job_id)
    label = (job.predicted_class if job else None) or "normal"
    return None if label == "normal" else label


def _group(header: object, key: bytes) -> int:
    """An integer per patient from a keyed hash of Patient ID (per study without one)."""
    patient = str(getattr(header, "PatientID", "") or "").strip()
    basis = f"patient:{patient}" if patient else f"study:{getattr(header, 'StudyInstanceUID', '')}"
    return int(hmac.new(key, basis.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:8], 16)


def _name(uid: str, frame: int) -> str:
    """File stem: a hash of the image UID (no UID in file names) and the frame number."""
    return f"wc_{hashlib.sha256(uid.encode()).hexdigest()[:16]}_f{frame:04d}"


def _write_png(path: Path, pixels: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())


def _write_manifest(out_dir: Path, rows: list[ExportedFrame]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for row in rows:
        writer.writerow([row.image, row.mask, row.label, row.group, row.source, row.scanner])
    write_atomic(out_dir / "manifest.csv", buf.getvalue().encode("utf-8"))
