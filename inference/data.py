"""Dataset discovery for the BUSI and BUS-BRA layouts, the leak-free split, and the array cache.

BUS-UCLM (``uclm/``, Siemens) and BrEaST (``breast/``, Poland) come in the BUSI layout; a
sample's ``source`` is its folder's name for those, so every figure can be given per source and
a vendor can be held out.

Both public datasets hold near-duplicate images (BUSI) or two images per patient (BUS-BRA), so
the train/validation split is made over *groups* (BUSI ``group`` column, BUS-BRA patient
``Case``), never over images.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from inference.transforms import resize_image, resize_mask

CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")

#: Sources known by folder name. A BUSI-layout folder with another name (e.g. a
#: ``wecare export-corrections`` folder) counts as ``busi`` unless its manifest has a
#: ``source`` column.
SOURCES: tuple[str, ...] = ("busi", "busbra", "uclm", "breast", "corrections")

#: Scanner of a source whose manifest does not name one per image.
SOURCE_SCANNER: dict[str, str] = {"uclm": "Siemens ACUSON S2000"}


@dataclass(frozen=True)
class Sample:
    """One image of a dataset with its mask, label and leakage group.

    Parameters
    ----------
    image : str
        Absolute path of the 8-bit grayscale image.
    mask : str
        Absolute path of the 0/255 lesion mask (empty for normal images).
    label : int
        Index into ``CLASSES``.
    source : str
        One of :data:`SOURCES`: the dataset the sample came from.
    group : str
        Images with the same group must land on the same side of a split.
    scanner : str
        Scanner model where the dataset names it (BUS-BRA ``Device``, or a ``scanner`` column
        in a BUSI-layout manifest), else ``""``: evaluation reports each scanner on its own,
        since a model can be good on one probe and weak on another.
    """

    image: str
    mask: str
    label: int
    source: str
    group: str
    scanner: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.label < len(CLASSES):
            raise ValueError(f"label must be in 0..{len(CLASSES) - 1}, got {self.label}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")


def detect_layout(data_dir: Path) -> str:
    """Return ``"busi"`` or ``"busbra"`` for a dataset folder, so callers need no flag.

    Raises
    ------
    ValueError
        When the folder matches neither layout.
    """
    data_dir = Path(data_dir)
    if (data_dir / "manifest.csv").is_file():
        return "busi"
    if (data_dir / "bus_data.csv").is_file() and (data_dir / "Images").is_dir():
        return "busbra"
    raise ValueError(
        f"data_dir {data_dir} is neither a BUSI layout (manifest.csv) "
        "nor a BUS-BRA layout (bus_data.csv + Images/)"
    )


def discover(data_dir: Path) -> list[Sample]:
    """List every image of a BUSI or BUS-BRA folder with its mask, label and group.

    BUSI: ``manifest.csv`` columns ``image, mask, label, group``. BUS-BRA: ``bus_data.csv``
    columns ``ID, Case, Pathology``; images ``Images/<ID>.png``, masks ``Masks/mask_<id>.png``.
    """
    data_dir = Path(data_dir).resolve()
    layout = detect_layout(data_dir)
    samples: list[Sample] = []
    if layout == "busi":
        folder_source = data_dir.name.lower() if data_dir.name.lower() in SOURCES else "busi"
        with open(data_dir / "manifest.csv", newline="") as f:
            for row in csv.DictReader(f):
                source = (row.get("source") or "").strip().lower() or folder_source
                samples.append(
                    Sample(
                        image=str(data_dir / row["image"]),
                        mask=str(data_dir / row["mask"]),
                        label=CLASSES.index(row["label"].strip().lower()),
                        source=source,
                        group=f"{source}:{row['group']}",
                        scanner=((row.get("scanner") or "").strip()
                                 or SOURCE_SCANNER.get(source, "")),
                    )
                )
    else:
        with open(data_dir / "bus_data.csv", newline="") as f:
            for row in csv.DictReader(f):
                image_id = row["ID"].strip()
                suffix = image_id.removeprefix("bus_")
                samples.append(
                    Sample(
                        image=str(data_dir / "Images" / f"{image_id}.png"),
                        mask=str(data_dir / "Masks" / f"mask_{suffix}.png"),
                        label=CLASSES.index(row["Pathology"].strip().lower()),
                        source="busbra",
                        group=f"busbra:{int(row['Case'])}",
                        scanner=(row.get("Device") or "").strip(),
                    )
                )
    return samples


def split_samples(
    samples: Sequence[Sample], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Split into (train, validation) by group, stratified by source and majority label.

    Deterministic for a given ``seed`` and set of samples (order does not matter): groups are
    sorted, then shuffled with a seeded generator inside each (source, label) stratum, and the
    first ``round(val_fraction * n_groups)`` groups of each stratum go to validation.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    by_group: dict[str, list[Sample]] = {}
    for s in samples:
        by_group.setdefault(s.group, []).append(s)
    strata: dict[tuple[str, int], list[str]] = {}
    for group, members in by_group.items():
        labels = [m.label for m in members]
        majority = max(set(labels), key=lambda lab: (labels.count(lab), lab))
        strata.setdefault((members[0].source, majority), []).append(group)
    val_groups: set[str] = set()
    for key in sorted(strata):
        groups = sorted(strata[key])
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        order = rng.permutation(len(groups))
        n_val = int(round(val_fraction * len(groups)))
        val_groups.update(groups[i] for i in order[:n_val])
    ordered = sorted(samples, key=lambda s: s.image)
    train = [s for s in ordered if s.group not in val_groups]
    val = [s for s in ordered if s.group in val_groups]
    return train, val


def save_split(path: Path, train: Sequence[Sample], val: Sequence[Sample]) -> None:
    """Write the split as JSON so a run's validation images can be audited later."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"train": [asdict(s) for s in train], "val": [asdict(s) for s in val]}
    path.write_text(json.dumps(payload, indent=1))


def read_grayscale(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W) float32 in 0..1 (RGB files are averaged to gray)."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            arr = np.asarray(im, dtype=np.float32)
            return arr / max(float(arr.max()), 1.0)
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def read_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a 0/255 mask as (H, W) bool; a missing file means an empty mask (normal image)."""
    if not Path(path).is_file():
        return np.zeros(shape, dtype=bool)
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L"))
    if arr.shape != shape:
        raise ValueError(f"mask {path} has shape {arr.shape}, image has {shape}")
    return arr > 127


def load_arrays(
    samples: Sequence[Sample], image_size: int, cache_dir: Path | None = None
) -> dict[str, np.ndarray]:
    """Load, resize and stack samples; cache the result as a compressed .npz.

    Returns
    -------
    dict
        ``images`` (N, S, S) uint8, ``masks`` (N, S, S) uint8 0/1, ``labels`` (N,) int64,
        ``is_busi`` (N,) bool. The cache key is a hash of the paths and the size, so a changed
        file list never reuses a stale cache.
    """
    key = hashlib.sha256(
        json.dumps([image_size, [(s.image, s.mask, s.label) for s in samples]]).encode()
    ).hexdigest()[:16]
    cache_file = Path(cache_dir) / f"arrays_{image_size}_{key}.npz" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file) as z:
            return {k: z[k] for k in z.files}
    n = len(samples)
    images = np.zeros((n, image_size, image_size), dtype=np.uint8)
    masks = np.zeros((n, image_size, image_size), dtype=np.uint8)
    for i, s in enumerate(samples):
        img = read_grayscale(s.image)
        msk = read_mask(s.mask, img.shape)
        images[i] = np.clip(np.rint(resize_image(img, image_size) * 255.0), 0, 255).astype(np.uint8)
        masks[i] = resize_mask(msk, image_size).astype(np.uint8)
    out = {
        "images": images,
        "masks": masks,
        "labels": np.array([s.label for s in samples], dtype=np.int64),
        "is_busi": np.array([s.source == "busi" for s in samples], dtype=bool),
    }
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")  # runs may share a cache
        np.savez_compressed(tmp, **out)
        os.replace(tmp, cache_file)
    return out


def split_seed_of(config: dict) -> int:
    """Seed of a run's validation split: ``split_seed`` when set, else the training ``seed``.

    Older runs have no ``split_seed``; their split followed ``seed``.
    """
    split_seed = config.get("split_seed")
    return int(config.get("seed", 0) if split_seed is None else split_seed)


def split_key(config: dict) -> tuple:
    """What defines a run's validation split (data folders, fraction, split seed): runs with
    equal keys hold out the same images, so they can be ensembled and evaluated together."""
    return (sorted(str(d) for d in config["data_dirs"]), config["val_fraction"],
            split_seed_of(config))


def run_split_arrays(config: dict, image_size: int) -> tuple[dict, dict]:
    """(train, validation) arrays of the split a training run used, from its saved config.

    Export (temperature fitting) and weight averaging must see exactly the run's own split and
    array cache, so both call this instead of rebuilding it.
    """
    samples = [s for d in config["data_dirs"] for s in discover(Path(d))]
    train, val = split_samples(samples, config["val_fraction"], split_seed_of(config))
    cache = (Path(config["cache_dir"]) if config.get("cache_dir")
             else Path(config["out_dir"]).parent / "cache")
    return load_arrays(train, image_size, cache), load_arrays(val, image_size, cache)
