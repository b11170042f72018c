"""The vendor protocol: every figure per source, the unseen vendor, the lesion gate, calibration.

A hospital's scanner is one the model never saw, so a pooled validation figure hides what
matters. :func:`collect` runs a bundled model once over each source folder, on the side of the
split it did not train on: the validation side for a folder named in the model's training
configuration, **every image** of a folder it never trained on (leave-one-vendor-out: a model
trained without ``uclm/`` is measured on all of UCLM). Per image it keeps the class
probabilities, the Dice of the mask before the "normal ⇒ no lesion" gate, and whether that mask
is empty, so the gate's operating point and the temperature can be chosen afterwards without
running the network again.

``python -m inference.protocol --weights W --datasets ../shared/datasets [--json]`` prints the
per-source table (BUSI, BUS-BRA Logiq 5 and Logiq 7, UCLM, BrEaST) with 95 % intervals that
resample patients / duplicate groups, at the gate chosen by :func:`choose_gate`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from inference.calibration import fit_temperature, softmax
from inference.data import (
    CLASSES,
    Sample,
    discover,
    read_grayscale,
    read_mask,
    split_samples,
    split_seed_of,
)
from inference.metrics import _auc_benign_malignant, dice_iou, expected_calibration_error

if TYPE_CHECKING:
    from inference.model import Model

SOURCE_FOLDERS: tuple[str, ...] = ("busi", "busbra", "uclm", "breast")

#: The gate rule: the largest share of validation lesion images the gate may turn into
#: "no lesion". A missed malignant lesion is the worst error this product can make, so this bound
#: comes first and the normals cleaned are what is left to gain.
MAX_MISSED_BY_GATE = 0.03


@dataclass(frozen=True)
class ImageRecord:
    """What one image gave, before the normal gate."""

    source: str  # row name: busi, busbra Logiq 5, busbra Logiq 7, uclm, breast
    group: str
    label: int
    log_probs: tuple[float, float, float]  # log of the calibrated probabilities
    temperature: float  # the model's, to recover logits (log p * T, up to a constant)
    dice: float  # of the ungated mask; 1.0 for an empty truth and an empty mask
    has_lesion: bool
    mask_nonempty: bool
    side: str  # "val" (held out of a source trained on) or "all" (a source never trained on)


def row_name(sample: Sample) -> str:
    """BUS-BRA is two scanners (GE Logiq 5 and Logiq 7): each gets its own row."""
    if sample.source == "busbra":
        return "busbra Logiq 5" if "Logiq 5" in sample.scanner else "busbra Logiq 7"
    return sample.source


def held_out_samples(folder: Path, train_config: dict) -> tuple[list[Sample], str]:
    """The images of ``folder`` the model did not train on, and which side they are."""
    samples = discover(folder)
    trained = {Path(d).resolve().name for d in train_config.get("data_dirs", [])}
    if folder.resolve().name not in trained:
        return samples, "all"
    _, val = split_samples(samples, train_config.get("val_fraction", 0.2),
                           split_seed_of(train_config))
    return val, "val"


def collect(model: Model, folders: Sequence[Path], batch_size: int = 8,
            split_config: dict | None = None) -> list[ImageRecord]:
    """Run ``model`` (its gate switched off) over the held-out images of each folder.

    ``split_config``: take the held-out sides from another model's training configuration
    (to compare two models on the same images); default the model's own."""
    pp = {**model.meta.get("postprocess", {}), "empty_if_normal": False, "normal_gate": None}
    ungated = dataclasses.replace(model, meta={**model.meta, "postprocess": pp})
    train_config = split_config or model.meta.get("train_config", {})
    records: list[ImageRecord] = []
    for folder in folders:
        samples, side = held_out_samples(folder, train_config)
        bar = tqdm(total=len(samples), desc=folder.name, file=sys.stderr, mininterval=10)
        for start in range(0, len(samples), batch_size):
            chunk = samples[start: start + batch_size]
            images = [read_grayscale(s.image) for s in chunk]
            for s, img, pred in zip(chunk, images, ungated.predict(images), strict=True):
                truth = read_mask(s.mask, img.shape)
                p = np.clip([pred.probabilities[c] for c in CLASSES], 1e-12, 1.0)
                records.append(ImageRecord(
                    source=row_name(s), group=s.group, label=s.label,
                    log_probs=tuple(float(v) for v in np.log(p)),  # type: ignore[arg-type]
                    temperature=float(model.temperature),
                    dice=dice_iou(truth, pred.mask)[0], has_lesion=bool(truth.any()),
                    mask_nonempty=bool(pred.mask.any()), side=side))
            bar.update(len(chunk))
        bar.close()
    return records


def logits_of(records: Sequence[ImageRecord]) -> np.ndarray:
    """The network's logits up to a per-image constant (softmax is unchanged by it)."""
    return np.array([np.array(r.log_probs) * r.temperature for r in records])


def _point(labels: np.ndarray, probs: np.ndarray, dice: np.ndarray, has_lesion: np.ndarray,
           nonempty: np.ndarray) -> dict[str, float]:
    normal = labels == 0
    nan = float("nan")
    return {
        "dice_mean": float(dice[has_lesion].mean()) if has_lesion.any() else nan,
        "lesion_missed_rate": float((~nonempty[has_lesion]).mean()) if has_lesion.any() else nan,
        "normal_false_positive_rate": float(nonempty[normal].mean()) if normal.any() else nan,
        "accuracy": float((probs.argmax(1) == labels).mean()) if len(labels) else nan,
        "auc_benign_malignant": _auc_benign_malignant(labels, probs),
        "ece": expected_calibration_error(probs, labels) if len(labels) else nan,
    }


def source_metrics(records: Sequence[ImageRecord], gate: float | None, temperature: float | None,
                   bootstrap: int = 1000, seed: int = 0) -> dict:
    """Figures of one source at a gate (``p(normal) >= gate`` empties the mask; None: the
    argmax rule) and a temperature (None: the model's own), with group-bootstrap 95 % CIs."""
    labels = np.array([r.label for r in records], dtype=np.int64)
    logits = logits_of(records)
    probs = softmax(logits, temperature) if temperature else np.exp(
        [r.log_probs for r in records])
    probs = probs / probs.sum(1, keepdims=True)
    gated = (probs[:, 0] >= gate) if gate is not None else probs.argmax(1) == 0
    has_lesion = np.array([r.has_lesion for r in records])
    nonempty = np.array([r.mask_nonempty for r in records]) & ~gated
    dice = np.where(gated & has_lesion, 0.0, [r.dice for r in records])
    dice = np.where(~has_lesion, np.nan, dice)
    out: dict = {"n_images": len(records), "n_lesion_images": int(has_lesion.sum()),
                 "n_normal_images": int((labels == 0).sum()),
                 **_point(labels, probs, dice, has_lesion, nonempty)}
    if bootstrap:
        groups = np.array([r.group for r in records])
        names = np.unique(groups)
        members = {g: np.flatnonzero(groups == g) for g in names}
        rng = np.random.default_rng(seed)
        draws: dict[str, list[float]] = {k: [] for k in out if k.endswith(("mean", "rate", "acy",
                                                                            "malignant", "ece"))}
        for _ in range(bootstrap):
            idx = np.concatenate([members[g] for g in rng.choice(names, len(names))])
            point = _point(labels[idx], probs[idx], dice[idx], has_lesion[idx], nonempty[idx])
            for k in draws:
                if not math.isnan(point[k]):
                    draws[k].append(point[k])
        out["ci95"] = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
                       for k, v in draws.items() if len(v) >= bootstrap // 2}
    return out


def choose_gate(records: Sequence[ImageRecord], max_missed: float = MAX_MISSED_BY_GATE,
                temperature: float | None = None) -> float:
    """The gate on ``p(normal)``: the lowest threshold at which the gate itself empties at most
    ``max_missed`` of the validation lesion images whose ungated mask was non-empty, pooled
    over sources, and (rule part two) of each source's own lesion images with 20 or more of
    them. Lower thresholds clean more normal images, so the lowest that keeps the bound is the
    one that gives away nothing more than the bound allows."""
    val = [r for r in records if r.side == "val"]
    logits = logits_of(val)
    probs = softmax(logits, temperature) if temperature else np.exp([r.log_probs for r in val])
    p_normal = probs[:, 0] / probs.sum(1)
    found = np.array([r.has_lesion and r.mask_nonempty for r in val])
    sources = np.array([r.source for r in val])
    candidates = np.unique(np.concatenate([[1.0], np.round(p_normal, 4)]))
    for t in np.sort(candidates):
        t = float(t)
        ok = (p_normal[found] >= t).mean() <= max_missed if found.any() else True
        for name in np.unique(sources):
            sel = found & (sources == name)
            if sel.sum() >= 20 and (p_normal[sel] >= t).mean() > max_missed:
                ok = False
        if ok:
            return max(t, 0.5)  # never below one half: "normal" must at least be the bet
    return 1.0


def protocol_report(records: Sequence[ImageRecord], max_missed: float = MAX_MISSED_BY_GATE,
                    bootstrap: int = 1000) -> dict:
    """Per-source tables before (model as bundled) and after (pooled-validation temperature,
    chosen gate), the gate and temperature, and the rule that chose them."""
    val = [r for r in records if r.side == "val"]
    labels = np.array([r.label for r in val])
    temperature = fit_temperature(logits_of(val), labels) if val else None
    gate = choose_gate(records, max_missed, temperature)
    order = ("busi", "busbra Logiq 5", "busbra Logiq 7", "uclm", "breast")
    rows = sorted({r.source for r in records},
                  key=lambda s: (order.index(s) if s in order else len(order), s))
    table = {}
    for name in rows:
        sel = [r for r in records if r.source == name]
        table[name] = {
            "side": sel[0].side,
            "as_bundled": source_metrics(sel, None, None, bootstrap),
            "chosen": source_metrics(sel, gate, temperature, bootstrap),
            # calibration before any temperature (T = 1) against after (the pooled fit)
            "ece_uncalibrated": source_metrics(sel, gate, 1.0, 0)["ece"],
        }
    return {"gate": gate, "temperature": temperature, "max_missed_by_gate": max_missed,
            "rule": (f"lowest p(normal) threshold >= 0.5 at which the gate empties at most "
                     f"{max_missed:.0%} of validation lesion images found by the segmenter, "
                     "pooled and per source with 20 or more; temperature fitted on the pooled "
                     "validation images of the sources trained on"),
            "sources": table}


def render(report: dict) -> str:
    """Markdown table, one row per source and setting, with 95 % intervals."""
    def f(m: dict, key: str) -> str:
        v = m.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        ci = m.get("ci95", {}).get(key)
        return f"{v:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{v:.3f}"
    head = ("| source | side | setting | n (lesion/normal) | Dice | lesions called normal | "
            "normals given a lesion | accuracy | B-M AUC | ECE |")
    ece = ", ".join(f"{name} {row['ece_uncalibrated']:.3f} -> {row['chosen']['ece']:.3f}"
                    for name, row in report["sources"].items())
    lines = [f"gate p(normal) >= {report['gate']:.3f}, temperature {report['temperature']:.3f}",
             f"ECE at T = 1 -> at the fitted temperature: {ece}",
             f"rule: {report['rule']}", "", head, "|" + "---|" * 10]
    for name, row in report["sources"].items():
        for setting in ("as_bundled", "chosen"):
            m = row[setting]
            lines.append(
                f"| {name} | {row['side']} | {setting} | {m['n_images']} "
                f"({m['n_lesion_images']}/{m['n_normal_images']}) | {f(m, 'dice_mean')} | "
                f"{f(m, 'lesion_missed_rate')} | {f(m, 'normal_false_positive_rate')} | "
                f"{f(m, 'accuracy')} | {f(m, 'auc_benign_malignant')} | {f(m, 'ece')} |")
    return "\n".join(lines)


def _json_safe(obj: object) -> object:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m inference.protocol", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=None, help="model.pt (default: bundled)")
    p.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--sources", nargs="+", default=list(SOURCE_FOLDERS))
    p.add_argument("--max-missed", type=float, default=MAX_MISSED_BY_GATE)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.add_argument("--split-from", type=Path, default=None,
                   help="model.pt whose training split names the held-out images (compare "
                        "two models on the same images); default: the model's own")
    args = p.parse_args(argv)
    import torch

    from inference.model import Model

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    folders = [args.datasets / s for s in args.sources if (args.datasets / s).is_dir()]
    if not folders:
        p.error(f"no source folder of {args.sources} under {args.datasets}")
    # The network and gate alone: what the in-distribution check refuses is measured by
    # `python -m inference.scope check`.
    model = Model.load(args.weights, compile="off", scope_check=False)
    split_config = None
    if args.split_from is not None:
        split_config = json.loads(args.split_from.with_name("model.json").read_text())[
            "train_config"]
    records = collect(model, folders, split_config=split_config)
    report = protocol_report(records, args.max_missed, args.bootstrap)
    report["model_version"] = model.version
    if args.json:
        args.json.write_text(json.dumps(_json_safe(report), indent=1))
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
