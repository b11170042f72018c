"""Image-level lesion-presence loss: a missed lesion or a marked normal costs; off by default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from inference.train import PRESENCE_TOP_FRACTION, TrainConfig, lesion_presence_loss, main, train

S = 64


def _masks() -> torch.Tensor:
    """Two images: one with a small (5x5) lesion, one normal."""
    m = torch.zeros(2, 1, S, S)
    m[0, 0, 30:35, 30:35] = 1.0
    return m


def test_presence_loss_punishes_a_missed_lesion_and_a_marked_normal() -> None:
    masks = _masks()
    right = torch.full((2, 1, S, S), -6.0)
    right[0, 0, 30:35, 30:35] = 6.0  # lesion marked, normal clean
    missed = torch.full((2, 1, S, S), -6.0)  # lesion not marked anywhere
    marked_normal = right.clone()
    marked_normal[1, 0, 5:10, 5:10] = 6.0  # a false lesion on the normal image
    l_right = lesion_presence_loss(right, masks).item()
    assert l_right < 0.01
    assert lesion_presence_loss(missed, masks).item() > 2.5  # ~ (6 + log 2) / 2
    assert lesion_presence_loss(marked_normal, masks).item() > 2.5


def test_presence_loss_gradient_reaches_only_the_top_pixels() -> None:
    masks = _masks()
    logits = torch.linspace(-8.0, -2.0, S * S).reshape(1, 1, S, S).repeat(2, 1, 1, 1)
    logits.requires_grad_(True)
    lesion_presence_loss(logits, masks).backward()
    g = logits.grad.flatten(1)
    k = round(PRESENCE_TOP_FRACTION * S * S)
    assert int((g[0] != 0).sum()) == k and int((g[1] != 0).sum()) == k
    assert (g[0][g[0] != 0] < 0).all()  # lesion image: raise its strongest pixels
    assert (g[1][g[1] != 0] > 0).all()  # normal image: lower them


def test_detect_weight_is_validated_and_off_by_default(tmp_path: Path) -> None:
    assert TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path).detect_weight == 0.0
    with pytest.raises(ValueError, match="detect_weight"):
        TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path, detect_weight=-0.1)


def test_train_with_presence_loss_logs_it(busi_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    train(TrainConfig(data_dirs=[busi_dir], out_dir=out, epochs=1, image_size=32,
                      batch_size=4, lr=1e-3, num_threads=1, val_fraction=0.25,
                      arch="cascade", detect_weight=0.5))
    record = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    assert record["loss_detect"] is not None and record["loss_detect"] > 0
    ck = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert ck["config"]["detect_weight"] == 0.5
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--detect-weight" in capsys.readouterr().out
