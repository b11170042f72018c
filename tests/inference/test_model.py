"""The bundled model: load once, shapes, probabilities, post-processing, real-data check."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import torch

from inference.data import discover, read_grayscale, read_mask, split_samples
from inference.metrics import dice_iou
from inference.model import (
    CLASSES,
    WEIGHTS_DIR,
    Model,
    Prediction,
    autocast_dtype,
    default_batch_size,
    postprocess_mask,
    resolve_device,
    resolve_precision,
)
from tests.requirements import SHARED_DIR, require_or_skip

from .conftest import datasets_dir


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.load(device="cpu")


def test_model_load_twice_returns_same_object(model: Model) -> None:
    assert Model.load(device="cpu") is model


def test_model_version_names_weights_hash(model: Model) -> None:
    digest = hashlib.sha256((WEIGHTS_DIR / "model.pt").read_bytes()).hexdigest()[:8]
    assert re.fullmatch(r"wecare-\S+ \d{4}-\d{2}-\d{2} [0-9a-f]{8}", model.version)
    assert model.version.endswith(digest)
    meta = json.loads((WEIGHTS_DIR / "model.json").read_text())
    assert model.status == meta["status"] and model.status


def test_model_weights_file_under_25_mb() -> None:
    assert (WEIGHTS_DIR / "model.pt").stat().st_size < 25 * 1024 * 1024


@pytest.mark.parametrize("shapes", [[(120, 160)], [(64, 64), (200, 150), (97, 131)]])
def test_predict_shapes_and_probabilities(model: Model, shapes: list[tuple[int, int]]) -> None:
    rng = np.random.default_rng(0)
    images = [rng.random(s, dtype=np.float32) for s in shapes]
    preds = model.predict(images)
    assert len(preds) == len(images)
    for p, shape in zip(preds, shapes, strict=True):
        assert p.mask.shape == shape and p.mask.dtype == bool
        assert tuple(p.probabilities) == CLASSES
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert all(0.0 <= v <= 1.0 for v in p.probabilities.values())
        assert p.predicted_class == max(p.probabilities, key=p.probabilities.get)
        assert p.cam is None


def test_predict_with_cam_gives_unit_range_map(model: Model) -> None:
    rng = np.random.default_rng(1)
    images = [rng.random((90, 110), dtype=np.float32), rng.random((70, 70), dtype=np.float32)]
    for p, img in zip(model.predict(images, with_cam=True), images, strict=True):
        assert p.cam is not None and p.cam.shape == img.shape and p.cam.dtype == np.float32
        assert 0.0 <= float(p.cam.min()) and float(p.cam.max()) <= 1.0


def test_predict_rejects_color_image(model: Model) -> None:
    with pytest.raises(ValueError, match=r"images\[0\]"):
        model.predict([np.zeros((10, 10, 3), np.float32)])


def test_postprocess_mask_drops_specks_and_fills_holes() -> None:
    mask = np.zeros((100, 100), bool)
    mask[20:60, 20:60] = True
    mask[35:40, 35:40] = False  # hole
    mask[90, 90] = True  # speck: 1 px < 0.2 % of 10000
    out = postprocess_mask(mask, min_area_fraction=0.002, fill_holes=True)
    assert not out[90, 90] and out[37, 37] and out[20:60, 20:60].all()
    two = np.zeros((50, 50), bool)
    two[0:10, 0:10] = True
    two[30:35, 30:35] = True
    assert postprocess_mask(two, keep_largest=True).sum() == 100


def test_prediction_rejects_probabilities_not_summing_to_one() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        Prediction(mask=np.zeros((2, 2), bool),
                   probabilities={"normal": 0.5, "benign": 0.1, "malignant": 0.1},
                   predicted_class="normal", cam=None)


@pytest.mark.dataset
def test_bundled_weights_find_lesions_on_real_validation_images(model: Model) -> None:
    root = datasets_dir()
    require_or_skip(
        root is not None,
        "shared datasets not found (set WECARE_DATASETS)",
        shared=SHARED_DIR / "datasets",
    )
    assert root is not None
    cfg = model.meta.get("train_config", {})
    _, val = split_samples(discover(root / "busbra"), cfg.get("val_fraction", 0.2),
                           cfg.get("seed", 0))
    chosen = val[:8]
    images = [read_grayscale(s.image) for s in chosen]
    preds = model.predict(images)
    dices = [dice_iou(read_mask(s.mask, img.shape), p.mask)[0]
             for s, img, p in zip(chosen, images, preds, strict=True)]
    assert sum(p.mask.any() for p in preds) >= 6
    assert float(np.mean(dices)) > 0.5


def test_grad_cam_leaves_no_hooks_or_frozen_weights_behind(model: Model) -> None:
    # MONAI adds hooks to the target layer per GradCAM built; the served model must not gain
    # one per prediction (it slowed and grew the service with every image).
    import copy

    images = [np.random.default_rng(5).random((80, 90), dtype=np.float32)]
    layers = [m.classifier.layer4 for m in model.net.members]
    flags = [p.requires_grad for p in model.net.parameters()]
    for _ in range(3):
        assert model.predict(images, with_cam=True)[0].cam is not None
    assert [(len(x._forward_hooks), len(x._backward_hooks)) for x in layers] == [(0, 0)] * 2
    assert [p.requires_grad for p in model.net.parameters()] == flags
    copy.deepcopy(model.net)  # nothing left on the network that cannot be copied


def test_grad_cam_equals_plain_monai_grad_cam(model: Model) -> None:
    """Freezing the layers below the target layer leaves the maps unchanged."""
    import copy

    import torch
    from monai.visualize import GradCAM

    from inference.gradcam import _unit_range, grad_cam
    from inference.networks import ClassLogits, cam_target_layer
    from inference.transforms import normalise

    x = normalise(torch.rand(3, 1, 192, 192, generator=torch.Generator().manual_seed(2)))
    cls = torch.tensor([0, 1, 2])
    got = grad_cam(model.net, x, "cascade", class_idx=cls)
    want = []
    for member in copy.deepcopy(model.net).members:
        cam = GradCAM(ClassLogits(member), target_layers=cam_target_layer("cascade"),
                      postprocessing=_unit_range)
        maps = [cam(x[i : i + 1].clone().requires_grad_(True), class_idx=int(c))
                for i, c in enumerate(cls.tolist())]
        want.append(torch.cat([torch.as_tensor(m) for m in maps])[:, 0].detach().numpy())
    np.testing.assert_allclose(got, np.mean(want, axis=0), atol=1e-5)


@pytest.mark.parametrize(
    ("gpu", "bf16", "device", "precision", "expected"),
    [
        (True, True, None, "auto", ("cuda", "bfloat16", 32)),
        (True, False, "auto", "auto", ("cuda", "float16", 32)),
        (True, True, "cuda", "float32", ("cuda", "float32", 32)),
        (True, True, "cpu", "float32", ("cpu", "float32", 8)),
        (False, False, None, "float32", ("cpu", "float32", 8)),
    ],
)
def test_device_selection_gpu_present_or_not_picks_device_amp_and_batch(
    monkeypatch: pytest.MonkeyPatch,
    gpu: bool,
    bf16: bool,
    device: str | None,
    precision: str,
    expected: tuple[str, str, int],
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    assert (dev, prec, default_batch_size(dev)) == expected
    amp = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}[prec]
    assert autocast_dtype(prec) is amp


def test_device_selection_cuda_without_gpu_or_float16_on_cpu_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        resolve_precision("float16", "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("mps")


def test_model_load_without_gpu_cpu_path_unchanged() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto picks it")
    auto = Model.load(precision="float32")
    assert (auto.device, auto.batch_size, autocast_dtype(auto.precision)) == ("cpu", 8, None)
    images = [np.random.default_rng(n).random((90, 120), dtype=np.float32) for n in range(10)]
    default = auto.predict(images)
    by_eight = [p for i in (0, 8) for p in auto.predict(images[i : i + 8])]
    for a, b in zip(default, by_eight, strict=True):
        assert np.array_equal(a.mask, b.mask)
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
