"""Weight averaging of a run's last epochs: the mean of the weights, BN statistics recomputed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inference.average import average_checkpoints
from inference.networks import build_network


def _checkpoint(path: Path, seed: int, epoch: int, arch: str = "cascade") -> dict:
    torch.manual_seed(seed)
    net = build_network(arch)
    ck = {"model": net.state_dict(), "arch": arch, "image_size": 32,
          "classes": ["normal", "benign", "malignant"], "epoch": epoch, "metrics": {},
          "config": {"seed": 0}, "saved_at": "2026-12-01T00:00:00+00:00"}
    torch.save(ck, path)
    return ck


def test_average_is_the_mean_of_the_weights(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "a.pt", 0, 3)
    b = _checkpoint(tmp_path / "b.pt", 1, 4)
    out = average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "swa.pt")
    assert out["averaged_epochs"] == [3, 4] and out["epoch"] == 4
    saved = torch.load(tmp_path / "swa.pt", map_location="cpu", weights_only=False)
    name = "segmenter.model.0.conv.unit0.conv.weight"
    assert torch.allclose(saved["model"][name], (a["model"][name] + b["model"][name]) / 2)
    net = build_network("cascade")
    net.load_state_dict(saved["model"])  # loads as a plain network: export takes it as it is
    assert saved["init_source"] is None  # a run from random weights


def test_average_keeps_the_weights_a_run_began_from(tmp_path: Path) -> None:
    for name, seed in (("a.pt", 0), ("b.pt", 1)):
        ck = _checkpoint(tmp_path / name, seed, seed)
        torch.save({**ck, "init_source": "wecare-cascade-x2 f0f584ab member 2"}, tmp_path / name)
    out = average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "swa.pt")
    assert out["init_source"] == "wecare-cascade-x2 f0f584ab member 2"


def test_average_recomputes_batch_norm_statistics(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "a.pt", 0, 0, arch="multitask")
    images = np.random.default_rng(0).integers(0, 255, (8, 32, 32), dtype=np.uint8)
    out = average_checkpoints([tmp_path / "a.pt"], tmp_path / "swa.pt", bn_images=images)
    assert out["bn_recomputed"] is True
    means = [v for k, v in out["model"].items() if k.endswith("running_mean")]
    assert means and any(float(m.abs().sum()) > 0 for m in means)  # fresh nets start at 0


def test_average_refuses_mixed_architectures(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "a.pt", 0, 0, arch="cascade")
    _checkpoint(tmp_path / "b.pt", 0, 1, arch="multitask")
    with pytest.raises(ValueError, match="arch"):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "swa.pt")
