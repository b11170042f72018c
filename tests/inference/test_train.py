"""The training loop on a generated BUSI-layout folder: one tiny epoch, checkpoints, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from inference.train import TrainConfig, build_seg_loss, main, train


def _config(busi_dir: Path, out: Path, **kw: object) -> TrainConfig:
    base = dict(data_dirs=[busi_dir], out_dir=out, epochs=1, image_size=32, batch_size=4,
                lr=1e-3, num_threads=1, val_fraction=0.25)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_train_one_tiny_epoch_writes_checkpoints(busi_dir: Path, tmp_path: Path) -> None:
    best = train(_config(busi_dir, tmp_path / "run"))
    assert best == tmp_path / "run" / "best.pt" and best.is_file()
    ck = torch.load(best, map_location="cpu", weights_only=False)
    assert ck["epoch"] == 0 and ck["arch"] == "multitask" and ck["image_size"] == 32
    assert "busi" in ck["metrics"]
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").open()]
    assert [h["epoch"] for h in history] == [0]
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    train_groups = {s["group"] for s in split["train"]}
    assert train_groups and not train_groups & {s["group"] for s in split["val"]}


def test_train_resume_continues_from_last_epoch(busi_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_config(busi_dir, out, arch="separate", seg_loss="tversky"))
    train(_config(busi_dir, out, arch="separate", seg_loss="tversky", epochs=2, resume=True))
    epochs = [json.loads(line)["epoch"] for line in (out / "history.jsonl").open()]
    assert epochs == [0, 1]
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1 and last["step"] > 0


@pytest.mark.parametrize("name", ["dice", "dicebce", "focal", "tversky"])
def test_build_seg_loss_empty_target_has_gradient(name: str) -> None:
    logits = torch.zeros(2, 1, 8, 8, requires_grad=True)
    loss = build_seg_loss(name)(logits, torch.zeros(2, 1, 8, 8))
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_train_config_rejects_unknown_loss(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seg_loss"):
        TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path, seg_loss="l2")


def test_main_help_lists_cli_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for opt in ("--data-dir", "--out", "--epochs", "--max-minutes", "--image-size",
                "--batch-size", "--lr", "--seg-loss", "--arch", "--seed", "--resume",
                "--num-threads"):
        assert opt in text
