"""Ensembles of trained networks (bundled as one model.pt) and the inference precision choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.visualize import GradCAM

from inference.export import export_checkpoint, member_checkpoint
from inference.gradcam import _unit_range, grad_cam
from inference.model import Model, cpu_has_native_bf16, resolve_precision
from inference.networks import (
    ARCHS,
    ClassLogits,
    EnsembleNets,
    build_network,
    fold_batch_norm,
)


def _checkpoint(path: Path, seed: int, arch: str = "cascade", split_seed: int | None = 0,
                image_size: int = 32) -> dict:
    torch.manual_seed(seed)
    net = build_network(arch)
    config = {"data_dirs": ["a", "b"], "val_fraction": 0.2, "seed": seed,
              "split_seed": split_seed}
    ck = {"model": net.state_dict(), "arch": arch, "image_size": image_size,
          "classes": ["normal", "benign", "malignant"], "epoch": 10 + seed,
          "metrics": {"busi": {"dice_mean": 0.5}}, "config": config,
          "saved_at": f"2026-12-0{seed + 1}T00:00:00+00:00"}
    torch.save(ck, path)
    return ck


def test_ensemble_output_is_the_mean_of_its_members() -> None:
    torch.manual_seed(0)
    ens = build_network("cascade", members=2).eval()
    assert isinstance(ens, EnsembleNets) and len(ens.members) == 2
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        seg, cls = ens(x)
        outs = [m(x) for m in ens.members]
    assert torch.allclose(seg, (outs[0][0] + outs[1][0]) / 2, atol=1e-6)
    assert torch.allclose(cls, (outs[0][1] + outs[1][1]) / 2, atol=1e-6)
    assert not torch.allclose(outs[0][1], outs[1][1])  # members differ, so the mean means something


def test_build_network_rejects_bad_member_counts() -> None:
    with pytest.raises(ValueError, match="members"):
        build_network("cascade", members=0)
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleNets([build_network("cascade")])


def test_grad_cam_of_an_ensemble_is_the_mean_of_its_members_maps() -> None:
    torch.manual_seed(0)
    ens = build_network("cascade", members=2).eval()
    x = torch.randn(3, 1, 64, 64)
    cls = torch.tensor([0, 1, 2])
    cams = grad_cam(ens, x, "cascade", class_idx=cls)
    assert cams.shape == (3, 64, 64) and cams.dtype == np.float32
    assert np.isfinite(cams).all() and cams.min() >= 0.0 and cams.max() <= 1.0
    # each member's map of its own score equals its map of the ensemble's score
    for i, member in enumerate(ens.members):
        of_ensemble = GradCAM(ClassLogits(ens), target_layers=f"net.members.{i}.classifier.layer4",
                              postprocessing=_unit_range)
        own = grad_cam(member, x, "cascade", class_idx=cls)
        for b, c in enumerate(cls.tolist()):
            with torch.enable_grad():
                ref = of_ensemble(x[b : b + 1].clone().requires_grad_(True), class_idx=c)
            assert np.allclose(own[b], torch.as_tensor(ref).detach().numpy()[0, 0], atol=1e-4)
    first_only = grad_cam(ens.members[0], x, "cascade", class_idx=cls)
    assert not np.allclose(cams, first_only)  # the second member contributes


def test_export_two_checkpoints_loads_as_an_ensemble(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "a.pt", 0)
    b = _checkpoint(tmp_path / "b.pt", 1)
    pt = export_checkpoint([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "w", "test status",
                           temperature=1.0, half=False, training_images=False)
    model = Model.load(pt, device="cpu", precision="float32")
    assert model.members == 2 and model.meta["name"] == "wecare-cascade-x2"
    assert [m["seed"] for m in model.meta["member_checkpoints"]] == [0, 1]
    assert model.meta["trained_at"] == b["saved_at"]  # the newest member dates the version
    image = np.random.default_rng(0).random((48, 40), dtype=np.float32)
    pred = model.predict([image])[0]
    assert pred.mask.shape == (48, 40)
    # the bundled ensemble computes what its two members average to
    manual = EnsembleNets([build_network("cascade"), build_network("cascade")])
    manual.members[0].load_state_dict(a["model"])
    manual.members[1].load_state_dict(b["model"])
    manual.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        want, got = manual(x), model.net(x)  # the loaded net has its BatchNorms folded
    for w, g in zip(want, got, strict=True):
        assert torch.allclose(w, g, atol=1e-5)


def test_export_refuses_members_from_another_split(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "a.pt", 0, split_seed=0)
    _checkpoint(tmp_path / "b.pt", 1, split_seed=None)  # split follows seed 1: another split
    with pytest.raises(ValueError, match="validation split"):
        export_checkpoint([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "w", "s", 1.0)
    _checkpoint(tmp_path / "c.pt", 1, arch="multitask")
    with pytest.raises(ValueError, match="arch"):
        export_checkpoint([tmp_path / "a.pt", tmp_path / "c.pt"], tmp_path / "w", "s", 1.0)
    assert not (tmp_path / "w").exists()  # nothing half-written


def test_member_checkpoint_unbundles_each_network_and_exports_again(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "a.pt", 0)
    b = _checkpoint(tmp_path / "b.pt", 1)
    pt = export_checkpoint([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "w", "s",
                           temperature=1.0, half=False, training_images=False)
    for i, ck in ((1, a), (2, b)):
        got = member_checkpoint(pt, i)
        assert got["arch"] == "cascade" and got["image_size"] == 32
        assert got["config"] == ck["config"] and got["epoch"] == ck["epoch"]
        assert got["source_weights"].startswith("wecare-cascade-x2 ")
        assert got["source_weights"].endswith(f"member {i}")
        assert got["model"].keys() == ck["model"].keys()
        assert all(torch.equal(got["model"][k], v) for k, v in ck["model"].items())
    # members written out again bundle to the same state: a new ensemble can reuse one
    for i in (1, 2):
        torch.save(member_checkpoint(tmp_path / "w", i), tmp_path / f"m{i}.pt")
    again = export_checkpoint([tmp_path / "m1.pt", tmp_path / "m2.pt"], tmp_path / "w2", "s",
                              temperature=1.0, half=False, training_images=False)
    s1, s2 = torch.load(pt, weights_only=True), torch.load(again, weights_only=True)
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    with pytest.raises(ValueError, match="member must be in 1..2"):
        member_checkpoint(pt, 3)
    with pytest.raises(FileNotFoundError):
        member_checkpoint(tmp_path / "nowhere" / "model.pt", 1)


def test_member_checkpoint_of_a_single_network_bundle(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "a.pt", 0)
    pt = export_checkpoint(tmp_path / "a.pt", tmp_path / "w", "s", temperature=1.0, half=True,
                           training_images=False)
    got = member_checkpoint(pt)
    assert got["config"] == a["config"] and got["model"].keys() == a["model"].keys()
    # float16 storage comes back as float32, within float16 rounding of the original
    for k, v in a["model"].items():
        if v.is_floating_point():
            assert got["model"][k].dtype == torch.float32
            assert torch.allclose(got["model"][k], v, atol=1e-2, rtol=1e-3), k
    with pytest.raises(ValueError, match="member must be in 1..1"):
        member_checkpoint(pt, 2)


def test_resolve_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda") == "float16"  # mixed precision on a GPU
    assert resolve_precision("auto", "cpu") == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", "cpu")


def test_bfloat16_inference_stays_close_to_float32(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "a.pt", 0)
    _checkpoint(tmp_path / "b.pt", 1)
    pt = export_checkpoint([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "w", "s", 1.0,
                           training_images=False)
    f32 = Model.load(pt, device="cpu", precision="float32")
    bf16 = Model.load(pt, device="cpu", precision="bfloat16")
    assert f32 is not bf16 and bf16.precision == "bfloat16"
    images = [np.random.default_rng(i).random((64, 64), dtype=np.float32) for i in range(3)]
    for p32, p16 in zip(f32.predict(images), bf16.predict(images), strict=True):
        for c in p32.probabilities:
            assert p16.probabilities[c] == pytest.approx(p32.probabilities[c], abs=0.03)


@pytest.mark.parametrize("arch", ARCHS)
def test_fold_batch_norm_keeps_outputs_and_layer_names(arch: str) -> None:
    torch.manual_seed(0)
    net = build_network(arch, members=2)
    for m in net.modules():  # trained-looking statistics, so a wrong fold would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    net.eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        before = net(x)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    names = {name for name, _ in net.named_modules()}
    assert fold_batch_norm(net) == n_bn > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert {name for name, _ in net.named_modules()} == names  # Grad-CAM's layers still there
    with torch.no_grad():
        after = net(x)
    for b, a in zip(before, after, strict=True):
        assert torch.allclose(b, a, atol=1e-4)
    # Grad-CAM still runs on the folded network (hooks on the named target layer)
    cams = grad_cam(net, x, arch)
    assert cams.shape == (2, 64, 64) and np.isfinite(cams).all() and cams.max() > 0


def test_fold_batch_norm_refuses_a_training_network() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norm(build_network("cascade").train())


def test_model_load_folds_batch_norm_unless_asked_not_to(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "a.pt", 0)
    pt = export_checkpoint(tmp_path / "a.pt", tmp_path / "w", "s", temperature=1.0, half=False,
                           training_images=False)
    folded = Model.load(pt, device="cpu", precision="float32")
    plain = Model.load(pt, device="cpu", precision="float32", fold_bn=False)
    assert folded is not plain  # cached apart
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.net.modules())
    image = np.random.default_rng(1).random((40, 40), dtype=np.float32)
    a, b = folded.predict([image])[0], plain.predict([image])[0]
    assert a.predicted_class == b.predicted_class
    assert all(abs(a.probabilities[c] - b.probabilities[c]) < 1e-4 for c in a.probabilities)
