"""Export apart from serving: the bundle keeps its device list and lists its training images."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inference.data import discover, split_samples
from inference.export import (
    TRAINING_IMAGES,
    bundle_configs,
    export_checkpoint,
    main,
    member_checkpoint,
    read_training_hashes,
    training_image_hashes,
    unlisted_sources,
)
from inference.model import WEIGHTS_DIR, Model
from inference.networks import build_network
from tests.requirements import SHARED_DIR, require_or_skip

from .conftest import REPO, datasets_dir

DEVICES = [{"manufacturer": "GE", "models": ["LOGIQ E9"], "source": "BUSI"}]


def _checkpoint(path: Path, data_dirs: list[Path], seed: int = 0, **config: object) -> Path:
    """A training checkpoint of an untrained 32 px cascade whose config names ``data_dirs``."""
    torch.manual_seed(seed)
    cfg = {"data_dirs": [str(d) for d in data_dirs], "val_fraction": 0.25, "seed": seed,
           "split_seed": 0, **config}
    torch.save({"model": build_network("cascade").state_dict(), "arch": "cascade",
                "image_size": 32, "classes": ["normal", "benign", "malignant"], "epoch": 3,
                "metrics": {}, "config": cfg, "saved_at": "2026-12-06T00:00:00+00:00"}, path)
    return path


def _sha16(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _listing(weights_dir: Path) -> list[str]:
    return (weights_dir / TRAINING_IMAGES).read_text().splitlines()


def test_serving_imports_neither_training_nor_export() -> None:
    code = ("import sys, inference.model; "
            "print(sorted(m for m in sys.modules if m in "
            "('inference.train', 'inference.export', 'inference.distill')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"
    code = "import sys, inference.export; print('inference.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == "False"


def test_export_keeps_validated_devices_and_lists_the_training_images(
    busi_dir: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "model.json").write_text(json.dumps({"name": "old", "validated_devices": DEVICES}))
    ck = _checkpoint(tmp_path / "a.pt", [busi_dir])
    pt = export_checkpoint(ck, weights, "test", temperature=1.0)
    meta = json.loads((weights / "model.json").read_text())
    assert meta["validated_devices"] == DEVICES and meta["sha256"] != ""
    train, val = split_samples(discover(busi_dir), 0.25, 0)
    assert train and val
    want = sorted({_sha16(s.image) for s in train})
    assert _listing(weights) == want
    assert not {_sha16(s.image) for s in val} & set(want)
    assert Model.load(pt, device="cpu", precision="float32").meta["validated_devices"] == DEVICES
    # a device list given by the caller wins over the old one
    other = [{"manufacturer": "Siemens", "models": ["ACUSON S2000"], "source": "UCLM"}]
    export_checkpoint(ck, weights, "test", 1.0, extra={"validated_devices": other})
    assert json.loads((weights / "model.json").read_text())["validated_devices"] == other


def test_export_train_limit_and_ensemble_union(busi_dir: Path, tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "a.pt", [busi_dir], train_limit=3)
    b = _checkpoint(tmp_path / "b.pt", [busi_dir], seed=1, train_limit=5)
    export_checkpoint([a, b], tmp_path / "w", "test", 1.0)
    train, _ = split_samples(discover(busi_dir), 0.25, 0)
    assert _listing(tmp_path / "w") == sorted({_sha16(s.image) for s in train[:5]})


def test_export_without_datasets_writes_nothing(busi_dir: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w"
    export_checkpoint(_checkpoint(tmp_path / "a.pt", [busi_dir]), weights, "first", 1.0)
    before = {p.name: p.read_bytes() for p in weights.iterdir()}
    gone = _checkpoint(tmp_path / "b.pt", [tmp_path / "nowhere"], seed=1)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        export_checkpoint(gone, weights, "second", 1.0)
    assert {p.name: p.read_bytes() for p in weights.iterdir()} == before
    # asked not to list them: the first model's list must not stay beside the new weights
    export_checkpoint(gone, weights, "second", 1.0, training_images=False)
    assert not (weights / TRAINING_IMAGES).exists()
    assert json.loads((weights / "model.json").read_text())["status"] == "second"


def test_training_images_command_rewrites_the_list(busi_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w"
    export_checkpoint(_checkpoint(tmp_path / "a.pt", [busi_dir]), weights, "s", 1.0)
    first = _listing(weights)
    (weights / TRAINING_IMAGES).write_text("0123456789abcdef\n")
    assert main(["training-images", "--weights-dir", str(weights)]) == 0
    assert _listing(weights) == first
    assert json.loads(capsys.readouterr().out)["n_images"] == len(first)


def test_member_command_through_the_old_module_name(busi_dir: Path, tmp_path: Path) -> None:
    """``python -m inference.model member`` (in the card's recipes) still works."""
    pt = export_checkpoint(_checkpoint(tmp_path / "a.pt", [busi_dir]), tmp_path / "w", "s", 1.0,
                           half=False)
    out = tmp_path / "m.pt"
    for module in ("inference.export", "inference.model"):
        subprocess.run([sys.executable, "-m", module, "member", str(pt), "--out", str(out)],
                       cwd=REPO, check=True, capture_output=True, timeout=300)
        got = torch.load(out, map_location="cpu", weights_only=False)
        want = member_checkpoint(pt)
        assert got["source_weights"] == want["source_weights"]
        assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
        out.unlink()


def test_unlisted_sources_names_training_folders_without_devices() -> None:
    meta = {"validated_devices": [{"source": "BUSI"}, {"source": "BUS-BRA"}],
            "train_config": {"data_dirs": ["x/busi", "x/busbra", "x/uclm"]}}
    assert unlisted_sources(meta) == ["uclm"]


@pytest.mark.dataset
def test_bundled_training_images_match_the_bundled_models_training_split() -> None:
    root = datasets_dir()
    require_or_skip(root is not None, "shared datasets not found (set WECARE_DATASETS)",
                    shared=SHARED_DIR / "datasets")
    assert root is not None
    meta = json.loads((WEIGHTS_DIR / "model.json").read_text())
    configs = [{**c, "data_dirs": [str(root / Path(d).name) for d in c["data_dirs"]]}
               for c in bundle_configs(meta)]
    listed = read_training_hashes(WEIGHTS_DIR / TRAINING_IMAGES)
    assert listed is not None and len(listed) > 0
    assert sorted(listed) == training_image_hashes(configs)
