"""Bundle trained networks as the weights the service loads, and take them apart again.

Kept apart from :mod:`inference.model`, which only loads and runs a bundle: the service never
imports this module, and this module needs nothing from :mod:`inference.train`.

``python -m inference.export export CKPT [CKPT ...] --status ...``: fit the temperature on the
run's validation split and bundle (several checkpoints make an ensemble).
``python -m inference.export member WEIGHTS --member N --out CKPT``: one bundled network back
out as a training checkpoint.
``python -m inference.export training-images [--weights-dir DIR]``: (re)write a bundle's
``training_images.txt`` from the training configuration in its ``model.json``.

A bundle is ``model.pt`` (state_dict), ``model.json`` (metadata) and ``training_images.txt``:
the first 16 hex digits of the sha256 of every training image file's bytes, sorted, one per
line, so that ``wecare evaluate`` can say when a folder holds images the model was trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

from inference.data import Sample, discover, split_key, split_samples, split_seed_of
from inference.model import (
    CLASSES,
    DEFAULT_POSTPROCESS,
    WEIGHTS_DIR,
    file_sha256,
    predict_arrays,
)
from inference.networks import build_network

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINING_IMAGES = "training_images.txt"
HASH_DIGITS = 16
#: model.json keys an export keeps from the bundle it replaces (unless ``extra`` sets them):
#: written by hand after checking, not derivable from the checkpoints.
KEPT_META: tuple[str, ...] = ("validated_devices",)


def image_hash(path: str | Path) -> str:
    """First :data:`HASH_DIGITS` hex digits of the sha256 of a file's bytes.

    Exact bytes: a re-encoded or resized copy of a training image does not match.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:HASH_DIGITS]


def read_training_hashes(path: Path) -> frozenset[str] | None:
    """The hashes a bundle's ``training_images.txt`` lists; None when the file is absent."""
    if not path.is_file():
        return None
    lines = (line.strip() for line in path.read_text().splitlines())
    return frozenset(line for line in lines if line and not line.startswith("#"))


def _data_dir(d: str | Path) -> Path:
    """A config's dataset folder: as written (relative to where training ran, normally the
    repository root), else relative to the repository root."""
    p = Path(d)
    if not p.is_absolute() and not p.is_dir() and (REPO_ROOT / p).is_dir():
        p = REPO_ROOT / p
    if not p.is_dir():
        raise FileNotFoundError(f"dataset folder {d} of the training configuration is missing: "
                                "the training images cannot be listed")
    return p


def training_samples(config: dict) -> list[Sample]:
    """The images a run trained on, rebuilt from its saved config as :func:`inference.train.
    train` chose them: the training side of the group-disjoint split, cut to ``train_limit``."""
    samples = [s for d in config["data_dirs"] for s in discover(_data_dir(d))]
    train, _ = split_samples(samples, config.get("val_fraction", 0.2), split_seed_of(config))
    limit = config.get("train_limit")
    return train[:limit] if limit is not None else train


def training_image_hashes(configs: Iterable[dict]) -> list[str]:
    """Sorted distinct :func:`image_hash` of every training image of the runs ``configs``."""
    return sorted({image_hash(s.image) for cfg in configs for s in training_samples(cfg)})


def bundle_configs(meta: dict) -> list[dict]:
    """The training configuration of each network of a bundle's ``model.json``."""
    if int(meta.get("members", 1)) > 1:
        return [m["train_config"] for m in meta["member_checkpoints"]]
    return [meta["train_config"]]


def write_training_images(weights_dir: Path = WEIGHTS_DIR,
                          configs: Sequence[dict] | None = None) -> Path:
    """Write ``training_images.txt`` of a bundle; ``configs`` default: from its model.json.

    Call again after the datasets or the bundle change; the result depends only on the
    image files' bytes, so it is reproducible.
    """
    weights_dir = Path(weights_dir)
    if configs is None:
        configs = bundle_configs(json.loads((weights_dir / "model.json").read_text()))
    hashes = training_image_hashes(configs)
    out = weights_dir / TRAINING_IMAGES
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(f"{h}\n" for h in hashes))
    os.replace(tmp, out)
    return out


def unlisted_sources(meta: dict) -> list[str]:
    """Training sources (dataset folder names) that no ``validated_devices`` entry names: the
    device list then needs their scanners added by hand."""
    def norm(name: str) -> str:
        return re.sub(r"[^a-z0-9]", "", name.lower())

    listed = {norm(str(d.get("source", ""))) for d in meta.get("validated_devices", [])}
    used = {norm(Path(d).name) for cfg in bundle_configs(meta) for d in cfg["data_dirs"]}
    return sorted(used - listed)


def load_members(checkpoints: Sequence[Path]) -> tuple[list[dict], dict]:
    """Load training checkpoints meant to be bundled together; returns (checkpoints, state).

    One checkpoint gives its own state_dict; several give an :class:`EnsembleNets` state_dict
    (``members.<i>.``), after checking that they share architecture, image size and validation
    split (otherwise the fitted temperature and the card's figures would not be held out).
    """
    if not checkpoints:
        raise ValueError("no checkpoint given")
    cks = [torch.load(p, map_location="cpu", weights_only=False) for p in checkpoints]
    first = cks[0]
    for p, ck in zip(checkpoints[1:], cks[1:], strict=True):
        for key in ("arch", "image_size"):
            if ck[key] != first[key]:
                raise ValueError(f"{p}: {key} {ck[key]!r} differs from {first[key]!r}")
        if split_key(ck["config"]) != split_key(first["config"]):
            raise ValueError(f"{p}: trained on another validation split than {checkpoints[0]}")
    if len(cks) == 1:
        return cks, dict(first["model"])
    return cks, {f"members.{i}.{k}": v for i, ck in enumerate(cks) for k, v in ck["model"].items()}


def member_checkpoint(weights: Path, member: int = 1) -> dict:
    """One network of bundled weights, as a training checkpoint (``model``, ``arch``,
    ``image_size``, ``config``, ...).

    The bundle keeps each member's training configuration in ``model.json``, so a member can
    seed a longer run (``train --init-weights``) or be bundled again beside a new network
    (``export``) without the run folder it came from. ``member`` counts from 1.
    """
    path = Path(weights)
    if path.is_dir():
        path = path / "model.pt"
    meta_path = path.with_name("model.json")
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"weights {path} or its model.json is missing")
    meta = json.loads(meta_path.read_text())
    n = int(meta.get("members", 1))
    if not 1 <= member <= n:
        raise ValueError(f"{path}: member must be in 1..{n}, got {member}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if n == 1:
        info = {"train_config": meta["train_config"], "epoch": meta["epoch"],
                "saved_at": meta["trained_at"],
                "validation_during_training": meta.get("validation_during_training", {}),
                "averaged_epochs": meta.get("averaged_epochs")}
    else:
        info = meta["member_checkpoints"][member - 1]
        prefix = f"members.{member - 1}."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    ck = {"model": state, "arch": meta["arch"], "image_size": int(meta["image_size"]),
          "classes": list(meta["classes"]), "epoch": int(info["epoch"]),
          "metrics": info.get("validation_during_training") or {}, "score": None,
          "config": info["train_config"], "saved_at": info["saved_at"],
          "source_weights": f"{meta['name']} {file_sha256(path)[:8]} member {member}"}
    if info.get("averaged_epochs") is not None:
        ck["averaged_epochs"] = info["averaged_epochs"]
    return ck


def export_checkpoint(
    checkpoint: Path | Sequence[Path], weights_dir: Path, status: str, temperature: float,
    extra: dict | None = None, half: bool = True, name: str | None = None,
    training_images: bool = True,
) -> Path:
    """Write training checkpoint(s) as bundled weights: ``model.pt`` (state_dict), ``model.json``
    and ``training_images.txt``.

    Several checkpoints are bundled as one ensemble (``members`` in ``model.json``). ``half``
    stores float16 (half the size; measured harmless, see docs/experiments). The keys of
    :data:`KEPT_META` (``validated_devices``) of a ``model.json`` already in ``weights_dir`` are
    kept unless ``extra`` sets them: the SR's device caution reads them. ``training_images``
    False (checkpoints whose dataset folders are gone) writes no list and removes a stale one,
    so the bundle never names another model's training images.
    """
    paths = [Path(checkpoint)] if isinstance(checkpoint, str | Path) else list(checkpoint)
    cks, model_state = load_members(paths)
    ck = cks[0]
    configs = [c["config"] for c in cks]
    # before any file is written: a missing dataset folder must not leave half a bundle
    hashes = training_image_hashes(configs) if training_images else None
    weights_dir.mkdir(parents=True, exist_ok=True)
    old_meta_path = weights_dir / "model.json"
    old_meta = json.loads(old_meta_path.read_text()) if old_meta_path.is_file() else {}
    kept = {k: old_meta[k] for k in KEPT_META if k in old_meta}
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model_state.items()}
    pt = weights_dir / "model.pt"
    tmp = pt.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, pt)
    n = len(cks)
    if name is None:  # the name the SEG and SR carry says what kind of model made them
        name = f"wecare-{ck['arch']}" if n == 1 else f"wecare-{ck['arch']}-x{n}"
        if n == 1 and ck["config"].get("teacher"):
            name += "-distilled"
    meta = {
        "name": name,
        "arch": ck["arch"],
        "members": n,
        "image_size": int(ck["image_size"]),
        "classes": list(CLASSES),
        "temperature": float(temperature),
        "status": status,
        **kept,
        "trained_at": max(c["saved_at"] for c in cks),
        "epoch": max(int(c["epoch"]) for c in cks),
        "exported_at": datetime.now(UTC).isoformat(),
        "dtype": "float16" if half else "float32",
        "postprocess": dict(DEFAULT_POSTPROCESS),
        "train_config": ck["config"],
        "sha256": file_sha256(pt),
        **(extra or {}),
    }
    if n == 1:
        meta["validation_during_training"] = ck["metrics"]
        if "averaged_epochs" in ck:
            meta["averaged_epochs"] = ck["averaged_epochs"]
        if ck.get("init_source"):
            meta["init_source"] = ck["init_source"]
    else:
        meta["member_checkpoints"] = [
            {"source": str(p), "seed": c["config"].get("seed"), "epoch": int(c["epoch"]),
             "averaged_epochs": c.get("averaged_epochs"), "saved_at": c["saved_at"],
             "train_config": c["config"], "validation_during_training": c["metrics"],
             # where a run began from trained weights: their version, not just a path that
             # may since hold other weights
             **({"init_source": c["init_source"]} if c.get("init_source") else {})}
            for p, c in zip(paths, cks, strict=True)
        ]
    (weights_dir / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
    listing = weights_dir / TRAINING_IMAGES
    if hashes is None:
        listing.unlink(missing_ok=True)
    else:
        tmp_list = listing.with_suffix(".tmp")
        tmp_list.write_text("".join(f"{h}\n" for h in hashes))
        os.replace(tmp_list, listing)
    return pt


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m inference.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="bundle checkpoint(s) with a temperature fitted on "
                       "validation; several checkpoints make an ensemble")
    e.add_argument("checkpoints", type=Path, nargs="+")
    e.add_argument("--status", required=True)
    e.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    e.add_argument("--fp32", action="store_true")
    e.add_argument("--num-threads", type=int, default=2)
    m = sub.add_parser("member", help="write one network of bundled weights as a training "
                       "checkpoint (to export it again beside another)")
    m.add_argument("weights", type=Path)
    m.add_argument("--member", type=int, default=1, help="which member, counting from 1")
    m.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("training-images", help=f"(re)write a bundle's {TRAINING_IMAGES} from "
                       "the training configuration in its model.json")
    t.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (see the module docstring)."""
    args = _parser().parse_args(argv)
    if args.cmd == "member":
        ck = member_checkpoint(args.weights, args.member)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ck, args.out)
        print(json.dumps({"checkpoint": str(args.out), "source": ck["source_weights"],
                          "arch": ck["arch"], "epoch": ck["epoch"]}))
        return 0
    if args.cmd == "training-images":
        out = write_training_images(args.weights_dir)
        n = len(read_training_hashes(out) or ())
        print(json.dumps({"training_images": str(out), "n_images": n}))
        return 0
    from inference.calibration import calibration_report
    from inference.data import run_split_arrays

    torch.set_num_threads(args.num_threads)
    cks, state = load_members(args.checkpoints)
    _, arrays = run_split_arrays(cks[0]["config"], int(cks[0]["image_size"]))
    net = build_network(cks[0]["arch"], members=len(cks))
    net.load_state_dict(state)
    flip = bool(DEFAULT_POSTPROCESS["flip_tta"])
    _, logits = predict_arrays(net, arrays["images"], flip_tta=flip)
    report = calibration_report(logits, arrays["labels"])
    pt = export_checkpoint(args.checkpoints, args.weights_dir, args.status, report["temperature"],
                           extra={"calibration": report}, half=not args.fp32)
    meta = json.loads(pt.with_name("model.json").read_text())
    missing = unlisted_sources(meta)
    if missing:
        print(f"WARNING: validated_devices in {pt.with_name('model.json')} names no scanner "
              f"of the training source(s) {', '.join(missing)}: add them by hand",
              file=sys.stderr)
    print(json.dumps({"weights": str(pt), **report}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
