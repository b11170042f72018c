"""The compiled network (torch.compile): same results as eager, two batch shapes, fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from inference import compiled as compiled_mod
from inference.compiled import CompiledForward, cxx_compiler, resolve_compile
from inference.model import Model
from service.worker import ModelProvider
from tests.requirements import require_or_skip

from .conftest import _lesion_image


def _require_compiler() -> None:
    require_or_skip(
        cxx_compiler() is not None, "no C++ compiler (g++): torch.compile cannot build CPU kernels"
    )


class _Toy(nn.Module):
    """A two-output network shaped like ours: (seg logits (B, 1, S, S), class logits (B, 3))."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.down = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.PReLU())
        self.up = nn.ConvTranspose2d(8, 1, 2, stride=2)
        self.cls = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.down(x)
        return self.up(h), self.cls(h.mean(dim=(-2, -1)))


@pytest.fixture(scope="module")
def toy_compiled() -> CompiledForward:
    _require_compiler()
    forward = CompiledForward(_Toy().eval(), torch.float32, "cpu", full_batch=8)
    assert forward.warm_up(32) > 0
    assert forward.active, forward.error
    return forward


def test_resolve_compile_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_compile("off", "cpu") is False
    assert resolve_compile("on", "cpu") is True
    assert resolve_compile("auto", "cuda") is False  # CUDA path not measured: eager unless asked
    monkeypatch.setattr(compiled_mod.shutil, "which", lambda name: None)
    assert cxx_compiler() is None
    assert resolve_compile("auto", "cpu") is False
    monkeypatch.setattr(compiled_mod.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert resolve_compile("auto", "cpu") is True
    with pytest.raises(ValueError, match="compile must be one of"):
        resolve_compile("fast", "cpu")


def test_compiled_forward_rejects_training_mode_and_tiny_full_batch() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        CompiledForward(_Toy(), torch.float32, "cpu")
    with pytest.raises(ValueError, match="full_batch"):
        CompiledForward(_Toy().eval(), torch.float32, "cpu", full_batch=1)


@pytest.mark.parametrize("batch", [1, 2, 5, 8, 11])
def test_compiled_matches_eager_at_every_batch_size(toy_compiled: CompiledForward,
                                                    batch: int) -> None:
    # 1 and 8 run as compiled; 2 as singles, 5 padded to 8, 11 as 8 + 3 singles.
    x = torch.randn(batch, 1, 32, 32, generator=torch.Generator().manual_seed(batch))
    seg, cls = toy_compiled(x)
    seg_ref, cls_ref = toy_compiled.eager(x)
    assert seg.shape == (batch, 1, 32, 32) and cls.shape == (batch, 3)
    assert seg.dtype == cls.dtype == torch.float32
    torch.testing.assert_close(seg, seg_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cls, cls_ref, atol=1e-4, rtol=1e-4)
    assert toy_compiled.active


def test_run_error_falls_back_to_eager_and_says_why(
    toy_compiled: CompiledForward, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("C++ compile failed: g++ not found")

    forward = CompiledForward(_Toy().eval(), torch.float32, "cpu")
    monkeypatch.setattr(forward, "_compiled", broken)
    x = torch.randn(3, 1, 32, 32)
    with caplog.at_level(logging.WARNING, logger="inference.compiled"):
        seg, cls = forward(x)
    torch.testing.assert_close(seg, forward.eager(x)[0])
    torch.testing.assert_close(cls, forward.eager(x)[1])
    assert not forward.active and "g++ not found" in (forward.error or "")
    assert "running eager" in caplog.text
    assert forward(x)[0].shape == (3, 1, 32, 32)  # stays eager, no new attempt


def test_warm_up_mismatch_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    forward = CompiledForward(_Toy().eval(), torch.float32, "cpu")

    def wrong(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seg, cls = forward.eager(x)
        return -seg, cls  # a kernel that flips every lesion probability

    monkeypatch.setattr(forward, "_compiled", wrong)
    forward.warm_up(32)
    assert not forward.active
    assert "differ from eager" in (forward.error or "")


def _lesion_images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [(_lesion_image(rng, shape, lesion=True)[0] / 255.0).astype(np.float32)
            for shape in [(200, 240), (180, 180), (256, 300)]]


def test_bundled_model_compiled_by_default_gives_eager_results() -> None:
    """The service default (``auto``) on the bundled weights: compiled, and the same answers."""
    _require_compiler()
    # Generated lesions are outside the model's scope (inference/scope.py): compared with the
    # check off, so the masks are the network's.
    provider = ModelProvider(None, "cpu", None, compile_mode="auto", scope_check=False)
    model = provider.get()  # loads and warms up (both batch shapes)
    assert provider.network == "compiled" == model.compile_state
    eager = Model.load(None, device="cpu", compile="off", scope_check=False)
    assert eager is not model and eager.compile_state == "eager"
    images = _lesion_images()
    for got_all in (model.predict(images), [model.predict([im])[0] for im in images]):
        for got, want in zip(got_all, eager.predict(images), strict=True):
            assert got.predicted_class == want.predicted_class
            for c, p in want.probabilities.items():
                assert got.probabilities[c] == pytest.approx(p, abs=0.02)
            union = (got.mask | want.mask).sum()
            assert want.mask.any() and (got.mask & want.mask).sum() >= 0.97 * union
    assert model.compile_state == "compiled"
