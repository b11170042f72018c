"""The in-distribution score: fitted on training features, threshold from validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inference.networks import build_network
from inference.scope import Scope, classifier_modules, fit_scope, load_scope, pooled_features


def test_far_features_are_out_of_scope_near_ones_in(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cov = np.diag(np.linspace(0.5, 2.0, 16))
    train = rng.multivariate_normal(np.zeros(16), cov, 2000)
    val = rng.multivariate_normal(np.zeros(16), cov, 500)
    scope = fit_scope(train, val, "abc", "test", percentile=99.0)
    assert 0.005 <= 1 - scope.in_scope(val).mean() <= 0.02  # about 1 % of validation refused
    fresh = rng.multivariate_normal(np.zeros(16), cov, 1000)
    assert scope.in_scope(fresh).mean() > 0.97
    shifted = rng.multivariate_normal(np.full(16, 3.0), cov, 200)
    assert scope.in_scope(shifted).mean() < 0.05
    scope.save(tmp_path / "scope.npz")
    back = Scope.load(tmp_path / "scope.npz")
    assert back.threshold == scope.threshold and back.fitted_on == "test"
    assert np.allclose(back.distances(shifted[:5]), scope.distances(shifted[:5]), rtol=1e-4)


def test_scope_for_other_weights_is_switched_off(tmp_path: Path) -> None:
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    rng = np.random.default_rng(1)
    fit_scope(rng.normal(size=(100, 4)), rng.normal(size=(50, 4)), "0" * 64, "x").save(
        tmp_path / "scope.npz")
    assert load_scope(tmp_path, weights) is None


def test_pooled_features_of_a_cascade_and_an_ensemble() -> None:
    x = torch.randn(3, 1, 64, 64)
    seg = torch.rand(3, 1, 64, 64)
    net = build_network("cascade").eval()
    assert len(classifier_modules(net)) == 1
    assert pooled_features(net, x, seg).shape == (3, 256)
    pair = build_network("cascade", members=2).eval()
    assert pooled_features(pair, x, seg).shape == (3, 512)
    assert classifier_modules(build_network("multitask")) == []


def _bundle_copy(tmp_path: Path) -> Path:
    import shutil

    from inference.model import WEIGHTS_DIR

    for name in ("model.pt", "model.json"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    return tmp_path / "model.pt"


def test_model_with_a_scope_check_flags_and_empties_out_of_scope_images(tmp_path: Path) -> None:
    import dataclasses

    from inference.model import Model
    from inference.scope import file_sha256

    weights = _bundle_copy(tmp_path)
    rng = np.random.default_rng(0)
    image = rng.random((160, 200)).astype(np.float32)
    sha = file_sha256(weights)
    features = 512 if "x2" in Model.load(weights).meta["name"] else 256
    for threshold, expect in ((np.inf, True), (-1.0, False)):
        Scope(mean=np.zeros(features), precision=np.eye(features), threshold=threshold,
              percentile=99.0, weights_sha256=sha, fitted_on="test").save(tmp_path / "scope.npz")
        Model._cache.clear()
        model = Model.load(weights)
        assert model.scope is not None
        (pred,) = model.predict([image])
        assert pred.in_scope is expect and pred.scope_distance is not None
        if not expect:
            assert not pred.mask.any()
    Model._cache.clear()
    # the gate: p(normal) >= 0 empties every mask and the class follows the mask
    model = Model.load(weights)
    pp = {**model.meta["postprocess"], "normal_gate": 0.0}
    gated = dataclasses.replace(model, meta={**model.meta, "postprocess": pp})
    (pred,) = gated.predict([image])
    assert not pred.mask.any() and pred.predicted_class == "normal"
    Model._cache.clear()


def test_bundled_check_refuses_the_non_breast_ultrasound_files_of_both_packages() -> None:
    """Cardiac, obstetric, abdominal and other US files (routing aside): refused by the image."""
    from inference.model import Model
    from inference.scope import dicom_crops
    from tests.dicom_io.test_routing import non_breast_files

    Model._cache.clear()
    model = Model.load(None)
    assert model.scope is not None, "the bundle ships its scope check (inference/weights)"
    crops = refused = 0
    wholly = 0
    for path in non_breast_files():
        images = dicom_crops(path)
        preds = [p for i in range(0, len(images), 8) for p in model.predict(images[i: i + 8])]
        crops += len(preds)
        refused += sum(not p.in_scope for p in preds)
        wholly += all(not p.in_scope for p in preds)
        assert all(not p.mask.any() for p in preds if not p.in_scope)
    assert refused / crops >= 0.9  # measured 164 of 172 crops (dd6bbd2e)
    assert wholly >= 15  # measured 16 of 19 files


@pytest.mark.dataset
def test_bundled_check_keeps_breast_images_of_sources_it_never_saw() -> None:
    """BrEaST (another hospital) must stay within scope: the check is not a vendor filter."""
    from inference.data import discover, read_grayscale
    from inference.model import Model
    from tests.inference.conftest import datasets_dir
    from tests.requirements import SHARED_DIR, require_or_skip

    root = datasets_dir()
    require_or_skip(root is not None and (root / "breast" / "manifest.csv").is_file(),
                    "shared datasets not found (set WECARE_DATASETS)",
                    shared=SHARED_DIR / "datasets")
    assert root is not None
    Model._cache.clear()
    model = Model.load(None)
    samples = discover(root / "breast")[:48]
    preds = [p for i in range(0, len(samples), 8) for p in model.predict(
        [read_grayscale(s.image) for s in samples[i: i + 8]])]
    assert sum(not p.in_scope for p in preds) / len(preds) <= 0.05  # measured 0 of 128
