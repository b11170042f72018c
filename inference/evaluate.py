"""Evaluate a model on a BUSI- or BUS-BRA-layout folder, at each image's full resolution.

``python -m inference.evaluate DATA_DIR [--json] [--weights P] [--split val]`` (``wecare
evaluate`` is the same parser); with ``--json`` the last line of stdout is one JSON object.
Progress goes to stderr, and so does a warning when the folder holds images the model was
trained on (their sha256 prefixes are in the bundle's ``training_images.txt``): figures on
those images are not evidence of how the model does on new ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from inference.data import (
    Sample,
    detect_layout,
    discover,
    read_grayscale,
    read_mask,
    split_samples,
    split_seed_of,
)
from inference.metrics import CLASSES, compute_metrics

if TYPE_CHECKING:
    from inference.model import Model

SPLITS: tuple[str, ...] = ("all", "train", "val")


def evaluate(
    data_dir: Path, model: Model, bootstrap: int = 1000, seed: int = 0, split: str = "all",
    batch_size: int = 8, postprocess: dict | None = None, progress: bool | None = None,
) -> dict:
    """Run ``model`` on every image of ``data_dir`` (or one side of the training split).

    Parameters
    ----------
    data_dir : Path
        A BUSI layout (``manifest.csv``) or BUS-BRA layout (``bus_data.csv``, ``Images/``,
        ``Masks/``); detected automatically.
    model : Model
        Anything with ``predict(images) -> list[Prediction]`` (and optionally ``version``,
        ``status`` and ``meta``).
    bootstrap : int
        Resamples for the 95 % intervals (resampling duplicate groups / patients, not images).
    split : str
        ``"all"``; or ``"val"``/``"train"``: the side of the group-disjoint split the model was
        trained with (seed and fraction from the model's metadata).
    postprocess : dict, optional
        Overrides of the model's mask post-processing settings (``threshold``,
        ``min_area_fraction``, ``keep_largest``, ``fill_holes``, ``empty_if_normal``), to
        measure what each step does.
    progress : bool, optional
        A progress bar on stderr; default: where stderr is a terminal.

    Returns
    -------
    dict
        :func:`inference.metrics.compute_metrics` output plus ``layout``, ``split``,
        ``model_version``, ``model_status``, ``accuracy_note``, ``by_scanner`` (the headline
        figures per scanner model where the folder names two or more, else ``{}``), and
        ``seen_in_training`` / ``seen_in_training_share``: how many (what share) of the
        images here are byte-identical to training images of the model (None: the bundle
        records no training images, see :func:`seen_in_training`).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if postprocess:
        meta = {**model.meta, "postprocess": {**model.meta.get("postprocess", {}), **postprocess}}
        model = dataclasses.replace(model, meta=meta)
    data_dir = Path(data_dir)
    layout = detect_layout(data_dir)
    samples = discover(data_dir)
    if split != "all":
        cfg = getattr(model, "meta", {}).get("train_config", {})
        train_s, val_s = split_samples(samples, cfg.get("val_fraction", 0.2), split_seed_of(cfg))
        samples = val_s if split == "val" else train_s
    seen = seen_in_training(samples, getattr(model, "weights_path", None))
    labels, probs, truths, preds = [], [], [], []
    bar = tqdm(total=len(samples), desc="evaluate", unit="img", file=sys.stderr,
               disable=None if progress is None else not progress)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images = [read_grayscale(s.image) for s in chunk]
        for s, img, p in zip(chunk, images, model.predict(images), strict=True):
            labels.append(s.label)
            probs.append([p.probabilities[c] for c in CLASSES])
            truths.append(read_mask(s.mask, img.shape))
            preds.append(p.mask)
        bar.update(len(chunk))
    bar.close()
    metrics = compute_metrics(labels, np.asarray(probs).reshape(-1, len(CLASSES)), truths, preds,
                              bootstrap=bootstrap, seed=seed, groups=[s.group for s in samples])
    metrics["by_scanner"] = _by_scanner(samples, labels, probs, truths, preds, bootstrap, seed)
    has_normals = metrics["n_normal_images"] > 0
    metrics.update({
        "data_dir": str(data_dir),
        "layout": layout,
        "split": split,
        "model_version": getattr(model, "version", None),
        "model_status": getattr(model, "status", None),
        "model_precision": getattr(model, "precision", None),
        "model_network": getattr(model, "compile_state", None),
        "postprocess": getattr(model, "postprocess", None),
        "seen_in_training": seen,
        "seen_in_training_share": (seen / len(samples) if seen is not None and samples
                                   else None),
        "accuracy_note": (
            "3-class accuracy over all images" if has_normals else
            "no normal images here: accuracy is 3-class argmax over benign/malignant images "
            "(a 'normal' prediction counts as wrong); see accuracy_benign_malignant"
        ),
    })
    return metrics


def seen_in_training(samples: Sequence[Sample], weights_path: Path | None) -> int | None:
    """How many of ``samples`` are byte-identical to an image the model at ``weights_path``
    was trained on (``training_images.txt`` beside it); None when the bundle has no such list.
    """
    if weights_path is None:
        return None
    from inference.export import TRAINING_IMAGES, image_hash, read_training_hashes

    hashes = read_training_hashes(Path(weights_path).with_name(TRAINING_IMAGES))
    if hashes is None:
        return None
    return sum(1 for s in samples if image_hash(s.image) in hashes)


def training_warning(metrics: dict) -> str:
    """What to tell the user about training images among the evaluated ones; "" when none."""
    seen, n = metrics.get("seen_in_training"), metrics.get("n_images", 0)
    if seen is None:
        return ("note: this model's bundle records no training images (training_images.txt): "
                "cannot tell whether these images were used to train it")
    if seen:
        return (f"WARNING: {seen} of {n} images here were used to train this model: figures on "
                "them are not evidence")
    return ""


SCANNER_KEYS: tuple[str, ...] = (
    "n_images", "n_lesion_images", "n_normal_images", "dice_mean", "iou_mean", "accuracy",
    "accuracy_benign_malignant", "auc_benign_malignant", "normal_false_positive_rate",
    "lesion_missed_rate", "ece", "ci95",
)


def _by_scanner(
    samples: Sequence[Sample], labels: list[int], probs: list[list[float]],
    truths: list[np.ndarray], preds: list[np.ndarray], bootstrap: int, seed: int,
) -> dict[str, dict]:
    """The headline metrics (:data:`SCANNER_KEYS`) per scanner model, when the samples name
    two or more; ``{}`` otherwise (one scanner: the pooled figures already are its figures)."""
    found = sorted({s.scanner for s in samples if s.scanner})
    if len(found) < 2:
        return {}
    out = {}
    for name in found:
        idx = [i for i, s in enumerate(samples) if s.scanner == name]
        m = compute_metrics([labels[i] for i in idx],
                            np.asarray([probs[i] for i in idx]).reshape(-1, len(CLASSES)),
                            [truths[i] for i in idx], [preds[i] for i in idx],
                            bootstrap=bootstrap, seed=seed, groups=[samples[i].group for i in idx])
        out[name] = {k: m[k] for k in SCANNER_KEYS if k in m}
    return out


def _fmt(v: object) -> str:
    """Three decimals, or n/a for missing / NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def render_table(metrics: dict) -> str:
    """Plain-text summary of :func:`evaluate` output for humans (point value and 95 % CI)."""
    ci = metrics.get("ci95", {})
    lines = [
        f"data: {metrics.get('data_dir', '?')} ({metrics.get('layout', '?')}, "
        f"split {metrics.get('split', 'all')}), {metrics['n_images']} images, "
        f"{metrics['n_lesion_images']} with lesion, {metrics['n_normal_images']} normal",
        f"model: {metrics.get('model_version')} [{metrics.get('model_status')}]",
    ]
    if "seen_in_training" in metrics and training_warning(metrics):
        lines.append(training_warning(metrics))
    lines.append(f"{'metric':<28}{'value':>8}   95% CI")
    for key in ("dice_mean", "iou_mean", "accuracy", "accuracy_benign_malignant",
                "auc_benign_malignant", "normal_false_positive_rate", "lesion_missed_rate", "ece"):
        lo_hi = ci.get(key)
        interval = f"[{_fmt(lo_hi[0])}, {_fmt(lo_hi[1])}]" if lo_hi else ""
        lines.append(f"{key:<28}{_fmt(metrics.get(key)):>8}   {interval}")
    if "accuracy_note" in metrics:
        lines.append(f"note: {metrics['accuracy_note']}")
    lines.append(f"{'class':<12}{'precision':>10}{'recall':>8}{'f1':>8}{'n':>6}")
    for name, pc in metrics["per_class"].items():
        lines.append(f"{name:<12}{_fmt(pc['precision']):>10}{_fmt(pc['recall']):>8}"
                     f"{_fmt(pc['f1']):>8}{pc['support']:>6}")
    for name, sm in metrics.get("by_scanner", {}).items():
        dice_ci = sm.get("ci95", {}).get("dice_mean")
        interval = f" [{_fmt(dice_ci[0])}, {_fmt(dice_ci[1])}]" if dice_ci else ""
        lines.append(f"scanner {name}: {sm['n_images']} images, dice_mean "
                     f"{_fmt(sm.get('dice_mean'))}{interval}, auc_benign_malignant "
                     f"{_fmt(sm.get('auc_benign_malignant'))}, "
                     f"accuracy {_fmt(sm.get('accuracy'))}, "
                     f"lesion_missed_rate {_fmt(sm.get('lesion_missed_rate'))}, "
                     f"normal_false_positive_rate {_fmt(sm.get('normal_false_positive_rate'))}")
    header = " ".join(c[0].upper() for c in CLASSES)
    lines.append(f"confusion (rows true, cols predicted): {header}")
    for name, row in zip(CLASSES, metrics["confusion_matrix"], strict=True):
        lines.append(f"  {name:<10}" + " ".join(f"{v:>5}" for v in row))
    return "\n".join(lines)


def _json_safe(obj: object) -> object:
    """Replace NaN with None so the output is strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """An argparse type accepting one of ``choices``, saying "must be one of" otherwise."""
    def check(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}")
        return value

    return check


def _choices(choices: Sequence[str]) -> str:
    """``{a,b,c}``: the metavar argparse shows for ``choices=``."""
    return "{" + ",".join(choices) + "}"


def build_parser(prog: str = "python -m inference.evaluate") -> argparse.ArgumentParser:
    """The one definition of the evaluate options (``wecare evaluate`` forwards to it)."""
    from inference.compiled import COMPILE_MODES
    from inference.model import PRECISIONS

    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", type=Path, help="folder laid out like BUSI or BUS-BRA")
    p.add_argument("--weights", type=Path, default=None, help="model.pt (default: bundled)")
    p.add_argument("--json", action="store_true", help="last stdout line is one JSON object")
    p.add_argument("--split", type=_one_of(SPLITS), default="all", metavar=_choices(SPLITS),
                   help="all images, or one side (train/val) of the model's own split")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    devices = ("auto", "cpu", "cuda")
    p.add_argument("--device", type=_one_of(devices), default="auto", metavar=_choices(devices),
                   help="auto: CUDA where torch sees a GPU")
    p.add_argument("--precision", type=_one_of(PRECISIONS), default="auto",
                   metavar=_choices(PRECISIONS),
                   help="auto: bfloat16 on CPUs with native bfloat16, else float32")
    p.add_argument("--compile", type=_one_of(COMPILE_MODES), default="off",
                   metavar=_choices(COMPILE_MODES),
                   help="torch.compile the network, as the service does (costs a warm-up)")
    p.add_argument("--postprocess", type=json.loads, default=None,
                   help='JSON overrides, e.g. \'{"empty_if_normal": false}\'')
    p.add_argument("--no-progress", action="store_false", dest="progress", default=None,
                   help="no progress bar on stderr (default: shown where stderr is a terminal)")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m inference.evaluate") -> int:
    """Command-line entry point: the table (or JSON) on stdout; progress and warnings on stderr."""
    p = build_parser(prog)
    args = p.parse_args(argv)
    if not args.data_dir.is_dir():
        p.error(f"data_dir {args.data_dir} is not a folder")
    import torch

    from inference.model import Model

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    model = Model.load(args.weights, device=args.device, precision=args.precision,
                       compile=args.compile)
    model.warm_up()
    metrics = evaluate(args.data_dir, model, args.bootstrap, args.seed, args.split,
                       postprocess=args.postprocess, progress=args.progress)
    warning = training_warning(metrics)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(_json_safe(metrics)))
    else:
        print(render_table(metrics))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
