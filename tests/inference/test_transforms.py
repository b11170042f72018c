"""Training augmentation: the elastic warp moves image, mask and teacher map together."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Rand2DElasticd

from inference.train import TrainConfig
from inference.transforms import train_augmentation


def _disk(size: int = 64, radius: int = 14) -> torch.Tensor:
    yy, xx = np.mgrid[:size, :size]
    disk = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2
    return torch.from_numpy(disk.astype(np.float32))[None]


def _elastic(aug: object) -> Rand2DElasticd:
    found = [t for t in aug.transforms if isinstance(t, Rand2DElasticd)]  # type: ignore[attr-defined]
    assert len(found) == 1
    return found[0]


def test_elastic_prob_zero_keeps_the_earlier_augmentation() -> None:
    aug = train_augmentation(64)
    assert not any(isinstance(t, Rand2DElasticd) for t in aug.transforms)


def test_elastic_warp_moves_image_mask_and_teacher_together() -> None:
    warp = _elastic(train_augmentation(64, ("teacher",), elastic_prob=1.0))
    warp.set_random_state(seed=3)
    disk = _disk()
    changed = 0
    for _ in range(8):
        d = warp({"image": disk.clone(), "mask": disk.clone(), "teacher": disk.clone()})
        image, mask, teacher = (torch.as_tensor(d[k])[0] for k in ("image", "mask", "teacher"))
        assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}  # nearest: still a binary mask
        moved = image > 0.5
        assert (moved == (mask > 0.5)).float().mean() > 0.99  # the mask follows the image
        assert (moved == (teacher > 0.5)).float().mean() > 0.99
        assert 0.8 < mask.sum() / disk.sum() < 1.2  # a small warp, not a new lesion
        changed += int((moved != (disk[0] > 0.5)).any())
    assert changed >= 6  # it does warp


def test_elastic_prob_is_validated(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="elastic_prob"):
        train_augmentation(64, elastic_prob=1.5)
    with pytest.raises(ValueError, match="elastic_prob"):
        TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path, elastic_prob=-0.1)  # type: ignore[list-item]
    assert TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path).elastic_prob == 0.3  # type: ignore[list-item]
