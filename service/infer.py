"""`wecare infer`: the service's models on files, without a PACS or a database."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dicom_io.errors import DicomIOError
from dicom_io.read import read_header, skip_reason
from dicom_io.routing import RoutingRules
from service.errors import JobError
from service.logs import uid_hash
from service.pipeline import OUTSIDE_SCOPE_REASON, SourceImage, process_study
from service.previews import cam_overlay, mask_overlay, save_png

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM" or path.suffix.lower() == ".dcm"


def run_infer(
    files: Sequence[Path],
    out: Path,
    *,
    weights: Path | None = None,
    device: str | None = None,
    precision: str = "auto",
    explain: bool = True,
    echo: Callable[[str], None] = print,
    routing: RoutingRules | None = None,
    scope_check: bool = True,
) -> int:
    """Process `files` into `out`; print one JSON line per image. Returns an exit code.

    DICOM files out of scope (`routing`, default breast only as the service; our own objects,
    non-ultrasound) get a `not_analysed` line with the reason, never a class."""
    rules = RoutingRules() if routing is None else routing
    from inference.model import Model

    out.mkdir(parents=True, exist_ok=True)
    model = Model.load(weights, device=device, precision=precision, scope_check=scope_check)
    failures = 0
    studies: dict[str, list[SourceImage]] = defaultdict(list)
    names: dict[str, str] = {}
    for path in files:
        if path.suffix.lower() in _IMAGE_SUFFIXES and not _is_dicom(path):
            failures += _infer_picture(path, out, model, explain, echo)
            continue
        try:
            ds = read_header(path)  # deflate bombs refused before inflating
            reason = skip_reason(ds, rules)
            if reason is not None:
                echo(json.dumps({"file": path.name, "not_analysed": reason}))
                continue
            source = SourceImage(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), path)
            studies[str(ds.StudyInstanceUID)].append(source)
            names[source.sop_instance_uid] = path.name
        except (DicomIOError, AttributeError) as exc:  # unreadable, no UIDs, a deflate bomb
            reason = str(exc) if isinstance(exc, DicomIOError) else type(exc).__name__
            echo(json.dumps({"file": path.name, "error": f"not a readable DICOM file: {reason}"}))
            failures += 1
    for sources in studies.values():
        try:
            result = process_study(sources, model, out, explain=explain)
        except JobError as exc:
            for s in sources:
                echo(json.dumps({"file": names[s.sop_instance_uid], "error": str(exc)}))
            failures += len(sources)
            continue
        for row in result.results:
            echo(
                json.dumps(
                    {
                        "file": names.get(row["sop_instance_uid"]),
                        "frame": row["frame"],
                        "predicted_class": row["predicted_class"],
                        "probabilities": row["probabilities"],
                        "lesion_area_px": row["lesion_area_px"],
                        "lesion_area_mm2": row["lesion_area_mm2"],
                        "long_axis_mm": row["long_axis_mm"],
                        "short_axis_mm": row["short_axis_mm"],
                        "model_version": model.version,
                        "model_status": model.status,
                    }
                )
            )
        by_hash = {uid_hash(uid): name for uid, name in names.items()}
        for skipped in result.skipped:
            if skipped.get("code") == "outside_scope":  # said, not guessed; not a failure
                echo(json.dumps({"file": by_hash.get(skipped["uid_hash"]),
                                 "not_analysed": skipped["reason"]}))
                continue
            echo(json.dumps({"error": skipped["reason"]}))
            failures += 1
        for output in result.outputs:
            echo(json.dumps({"output": output.kind, "path": str(output.path)}))
    return 1 if failures else 0


def _infer_picture(
    path: Path, out: Path, model: object, explain: bool, echo: Callable[[str], None]
) -> int:
    """PNG/JPEG: mask PNG (0/255), overlay PNG, Grad-CAM PNG. Returns 1 on failure."""
    try:
        with Image.open(path) as img:
            gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        echo(
            json.dumps({"file": path.name, "error": f"not a readable image: {type(exc).__name__}"})
        )
        return 1
    pred = model.predict([gray], with_cam=explain)[0]  # type: ignore[attr-defined]
    if not getattr(pred, "in_scope", True):
        echo(json.dumps({"file": path.name, "not_analysed": OUTSIDE_SCOPE_REASON}))
        return 0
    stem = path.stem
    Image.fromarray(pred.mask.astype(np.uint8) * 255).save(out / f"{stem}_mask.png")
    save_png(out / f"{stem}_overlay.png", mask_overlay(gray, pred.mask), max_side=4096)
    if pred.cam is not None:
        save_png(out / f"{stem}_cam.png", cam_overlay(gray, pred.cam), max_side=4096)
    echo(
        json.dumps(
            {
                "file": path.name,
                "predicted_class": pred.predicted_class,
                "probabilities": {k: round(float(v), 4) for k, v in pred.probabilities.items()},
                "lesion_area_px": int(pred.mask.sum()),
                "model_version": model.version,
                "model_status": model.status,  # type: ignore[attr-defined]
            }
        )
    )
    return 0
