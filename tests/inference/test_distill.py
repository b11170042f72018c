"""Distillation from a bundled teacher: targets, their cache, the split check, the augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.distill import distill_class_loss, distill_seg_loss, teacher_targets
from inference.export import export_checkpoint
from inference.train import TrainConfig, _augment_batch, main, train
from inference.transforms import train_augmentation


def _teacher(busi_dir: Path, tmp_path: Path, **kw: object) -> tuple[Path, TrainConfig]:
    cfg = TrainConfig(data_dirs=[busi_dir], out_dir=tmp_path / "teacher_run", epochs=1,
                      image_size=32, batch_size=4, num_threads=1, val_fraction=0.25,
                      arch="cascade", **kw)  # type: ignore[arg-type]
    best = train(cfg)
    pt = export_checkpoint(best, tmp_path / "teacher", "test teacher", temperature=1.0)
    return pt, cfg


def test_student_trains_on_teacher_targets(busi_dir: Path, tmp_path: Path) -> None:
    pt, _ = _teacher(busi_dir, tmp_path, split_seed=0)
    student = TrainConfig(data_dirs=[busi_dir], out_dir=tmp_path / "student", epochs=1,
                          image_size=32, batch_size=4, num_threads=1, val_fraction=0.25,
                          arch="cascade", seed=5, split_seed=0, teacher=pt, distill_weight=0.7)
    best = train(student)
    ck = torch.load(best, map_location="cpu", weights_only=False)
    assert ck["config"]["teacher"] == str(pt) and ck["config"]["distill_weight"] == 0.7
    exported = export_checkpoint(best, tmp_path / "student_w", "test student", temperature=1.0)
    meta = json.loads(exported.with_suffix(".json").read_text())
    assert meta["name"] == "wecare-cascade-distilled" and meta["train_config"]["teacher"] == str(pt)
    cached = list((tmp_path / "cache").glob("teacher_*.npz"))
    assert len(cached) == 1
    with np.load(cached[0]) as z:
        n = z["prob"].shape[0]
        assert z["prob"].shape == (n, 32, 32) and z["prob"].dtype == np.uint8
        assert z["logits"].shape == (n, 3) and np.isfinite(z["logits"]).all()
    # a resumed / repeated run reads the cache instead of recomputing
    mtime = cached[0].stat().st_mtime_ns
    train(TrainConfig(**{**vars(student), "epochs": 2, "resume": True}))
    assert cached[0].stat().st_mtime_ns == mtime


def test_teacher_from_another_split_is_refused(busi_dir: Path, tmp_path: Path) -> None:
    pt, _ = _teacher(busi_dir, tmp_path, split_seed=0)
    other = TrainConfig(data_dirs=[busi_dir], out_dir=tmp_path / "s", epochs=1, image_size=32,
                        num_threads=1, val_fraction=0.25, seed=1, teacher=pt)  # split seed 1
    with pytest.raises(ValueError, match="another validation split"):
        train(other)
    images = np.zeros((2, 48, 48), dtype=np.uint8)
    with pytest.raises(ValueError, match="--image-size 32"):
        teacher_targets(pt, {**other.to_json(), "split_seed": 0}, images, 48, tmp_path)


def test_train_config_checks_distillation_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distill_weight"):
        TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path, distill_weight=1.5)
    with pytest.raises(ValueError, match="distill_temperature"):
        TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path, distill_temperature=0.0)


def test_teacher_map_moves_with_the_mask() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (16, 32, 32), dtype=np.uint8)
    masks = np.zeros((16, 32, 32), dtype=np.uint8)
    masks[:, 8:20, 4:16] = 1  # off-centre, so a flip or shift shows
    aug = train_augmentation(32, ("teacher",))
    aug.set_random_state(seed=3)
    _, _, none = _augment_batch(train_augmentation(32), images, masks)
    _, y, soft = _augment_batch(aug, images, masks, masks * 255)
    assert none is None and soft is not None and soft.shape == y.shape
    moved = 0
    for s, m in zip(soft > 0.5, y > 0.5, strict=True):  # the teacher map (here the mask
        inter, union = (s & m).sum().item(), (s | m).sum().item()  # itself) lands on the mask
        assert inter / union > 0.85
        moved += not torch.equal(m[0], torch.from_numpy(masks[0] > 0))
    assert moved >= 4  # the augmentation did move most masks


def test_distillation_losses_vanish_when_student_matches_teacher() -> None:
    logits = torch.randn(4, 3)
    assert distill_class_loss(logits, logits, 2.0).abs().item() < 1e-6
    assert distill_class_loss(logits, -logits, 2.0).item() > 0.01
    seg = torch.randn(2, 1, 8, 8)
    at_target = distill_seg_loss(seg, torch.sigmoid(seg))
    off_target = distill_seg_loss(seg, 1 - torch.sigmoid(seg))
    assert off_target.item() > at_target.item()


def test_main_help_lists_distillation_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(o in text for o in ("--teacher", "--distill-weight", "--distill-temperature"))
