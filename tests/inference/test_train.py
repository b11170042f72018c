"""The training loop on a generated BUSI-layout folder: one tiny epoch, checkpoints, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.data import discover
from inference.export import export_checkpoint, member_checkpoint
from inference.gradcam import grad_cam
from inference.model import forward_tta
from inference.networks import ARCHS, build_network
from inference.train import (
    TrainConfig,
    balanced_order,
    build_seg_loss,
    epoch_order,
    main,
    train,
    trained_on_validation,
)
from tests.inference.conftest import make_busi


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


def test_train_val_every_validates_every_nth_and_the_last_epoch(busi_dir: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "run"
    best = train(_config(busi_dir, out, epochs=3, val_every=2, keep_epochs=True))
    history = [json.loads(line) for line in (out / "history.jsonl").open()]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert [h["val"] != {} for h in history] == [False, True, True]  # 2nd, and the last
    assert history[0]["score"] is None and history[1]["score"] is not None
    assert torch.load(best, map_location="cpu", weights_only=False)["epoch"] in (1, 2)
    assert len(list((out / "epochs").glob("ep_*.pt"))) == 3  # every epoch still kept
    with pytest.raises(ValueError, match="val_every"):
        _config(busi_dir, out, val_every=0)


@pytest.mark.parametrize("name", ["dice", "dicebce", "focal", "tversky"])
def test_build_seg_loss_empty_target_has_gradient(name: str) -> None:
    logits = torch.zeros(2, 1, 8, 8, requires_grad=True)
    loss = build_seg_loss(name)(logits, torch.zeros(2, 1, 8, 8))
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_train_config_rejects_unknown_loss(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seg_loss"):
        TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path, seg_loss="l2")


def test_train_config_rejects_negative_weight_decay(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weight_decay"):
        TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path, weight_decay=-1e-3)
    assert TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path).weight_decay == 1e-4


def test_main_help_lists_cli_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for opt in ("--data-dir", "--out", "--epochs", "--max-minutes", "--image-size",
                "--batch-size", "--lr", "--seg-loss", "--arch", "--seed", "--resume",
                "--num-threads", "--amp", "--busi-share", "--no-flip-tta", "--val-every",
                "--init-weights", "--init-member", "--elastic-prob", "--weight-decay"):
        assert opt in text


def test_train_cascade_amp_busi_share_one_epoch(busi_dir: Path, busbra_dir: Path,
                                                tmp_path: Path) -> None:
    out = tmp_path / "run"
    best = train(_config(busi_dir, out, arch="cascade", amp=True, busi_share=0.5,
                         data_dirs=[busi_dir, busbra_dir]))
    ck = torch.load(best, map_location="cpu", weights_only=False)
    assert ck["arch"] == "cascade" and ck["config"]["amp"] is True
    assert ck["config"]["elastic_prob"] == 0.3  # the default augmentation warps
    assert "busi" in ck["metrics"]
    assert all(v.dtype == torch.float32 for v in ck["model"].values() if v.is_floating_point())


def test_train_init_weights_starts_from_a_bundled_member(busi_dir: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    train(_config(busi_dir, first, arch="cascade", epochs=2, keep_epochs=True))
    for ep in (0, 1):  # a two-member bundle of the same split
        torch.save(torch.load(first / "epochs" / f"ep_{ep:03d}.pt", weights_only=False),
                   tmp_path / f"m{ep}.pt")
    pt = export_checkpoint([tmp_path / "m0.pt", tmp_path / "m1.pt"], tmp_path / "w", "s",
                           temperature=1.0, half=False)
    start = member_checkpoint(pt, 2)["model"]
    # a learning rate too small to move the weights: what the run ends with is where it began
    out = tmp_path / "second"
    best = train(_config(busi_dir, out, arch="cascade", lr=1e-12, seed=5, split_seed=0,
                         init_weights=pt, init_member=2))
    ck = torch.load(best, map_location="cpu", weights_only=False)
    assert ck["init_source"].endswith("member 2") and ck["config"]["init_member"] == 2
    convs = [k for k in start if k.endswith("conv.weight") or k.endswith("conv1.weight")]
    assert convs and all(torch.allclose(ck["model"][k], start[k], atol=1e-6) for k in convs)
    # the bundle names the weights it began from by version, not only by path
    meta = json.loads(export_checkpoint(best, tmp_path / "w2", "s", 1.0).with_name(
        "model.json").read_text())
    assert meta["init_source"] == ck["init_source"]
    # resuming does not read the start weights again (they may have been replaced since)
    pt.unlink()
    train(_config(busi_dir, out, arch="cascade", lr=1e-12, seed=5, split_seed=0, epochs=2,
                  resume=True, init_weights=pt, init_member=2))
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1 and last["init_source"] == ck["init_source"]
    # from random weights the same run ends elsewhere: the start really came from the bundle
    rnd = torch.load(train(_config(busi_dir, tmp_path / "rnd", arch="cascade", lr=1e-12,
                                   seed=5, split_seed=0)), weights_only=False)
    assert not all(torch.allclose(rnd["model"][k], start[k], atol=1e-6) for k in convs)


def test_train_init_weights_refuses_another_split_or_arch(busi_dir: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    train(_config(busi_dir, first, arch="cascade", seed=0))
    with pytest.raises(ValueError, match="of this run's validation split"):
        train(_config(busi_dir, tmp_path / "b", arch="cascade", seed=1,
                      init_weights=first / "last.pt"))  # split follows seed 1
    with pytest.raises(ValueError, match="arch 'cascade'"):
        train(_config(busi_dir, tmp_path / "c", arch="multitask", seed=0,
                      init_weights=first / "last.pt"))
    with pytest.raises(FileNotFoundError, match="init_weights"):
        train(_config(busi_dir, tmp_path / "d", arch="cascade", init_weights=tmp_path / "no.pt"))
    with pytest.raises(ValueError, match="init_member"):
        _config(busi_dir, tmp_path / "e", init_member=0)


def test_epoch_order_busi_share_sets_the_mix() -> None:
    is_busi = np.zeros(100, dtype=bool)
    is_busi[:10] = True
    order = epoch_order(is_busi, 0.5, np.random.default_rng(0))
    assert len(order) == 100
    draws = np.concatenate([epoch_order(is_busi, 0.5, np.random.default_rng(s))
                            for s in range(50)])
    assert abs(is_busi[draws].mean() - 0.5) < 0.03
    plain = epoch_order(is_busi, None, np.random.default_rng(0))
    assert sorted(plain.tolist()) == list(range(100))


def test_train_config_rejects_bad_busi_share(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="busi_share"):
        TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path, busi_share=1.5)


@pytest.mark.parametrize("arch", ARCHS)
def test_flip_tta_is_mirror_consistent(arch: str) -> None:
    torch.manual_seed(0)
    net = build_network(arch).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        prob, cls = forward_tta(net, x, flip=True)
        prob_m, cls_m = forward_tta(net, torch.flip(x, dims=(-1,)), flip=True)
        plain, _ = forward_tta(net, x, flip=False)
    assert torch.allclose(torch.flip(prob_m, dims=(-1,)), prob, atol=1e-5)
    assert torch.allclose(cls_m, cls, atol=1e-5)
    assert not torch.allclose(plain, prob, atol=1e-5)  # the flip view did change something


@pytest.mark.parametrize("arch", ARCHS)
def test_grad_cam_runs_on_every_arch(arch: str) -> None:
    torch.manual_seed(0)
    net = build_network(arch).eval()
    x = torch.randn(3, 1, 64, 64)
    cams = grad_cam(net, x, arch)
    assert cams.shape == (3, 64, 64) and cams.dtype == np.float32
    assert float(cams.min()) >= 0.0 and float(cams.max()) <= 1.0
    assert float(cams.max()) == pytest.approx(1.0)  # each map is scaled to its own peak


def test_init_weights_may_add_a_source_folder(busi_dir: Path, tmp_path: Path) -> None:
    """Adding UCLM to a run started from BUSI weights keeps BUSI's validation images unseen."""
    first = tmp_path / "first"
    train(_config(busi_dir, first, arch="cascade", seed=0))
    uclm = make_busi(tmp_path / "uclm", seed=3)
    assert {s.source for s in discover(uclm)} == {"uclm"}
    cfg = _config(busi_dir, tmp_path / "more", arch="cascade", seed=0,
                  init_weights=first / "last.pt", vendor_prob=1.0, balance_sources=True)
    cfg.data_dirs.append(uclm)
    assert trained_on_validation(
        torch.load(first / "last.pt", weights_only=False)["config"], cfg.to_json()) == 0
    train(cfg)
    history = (tmp_path / "more" / "history.jsonl").read_text()
    assert '"vendor_augmented"' in history


def test_balanced_order_gives_each_source_an_equal_share() -> None:
    sources = np.array(["busbra"] * 90 + ["breast"] * 10)
    draws = np.concatenate([balanced_order(sources, np.random.default_rng(s)) for s in range(40)])
    assert abs((sources[draws] == "breast").mean() - 0.5) < 0.03


def test_train_config_rejects_bad_vendor_prob(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vendor_prob"):
        TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path, vendor_prob=2.0)
