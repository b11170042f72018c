"""Dataset discovery and the group-disjoint split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.data import (
    Sample,
    detect_layout,
    discover,
    load_arrays,
    split_samples,
)
from tests.inference.conftest import SCANNERS


def test_detect_layout_both_layouts_named(busi_dir: Path, busbra_dir: Path) -> None:
    assert detect_layout(busi_dir) == "busi"
    assert detect_layout(busbra_dir) == "busbra"


def test_detect_layout_unknown_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a BUSI"):
        detect_layout(tmp_path)


def test_discover_busbra_groups_by_case(busbra_dir: Path) -> None:
    samples = discover(busbra_dir)
    assert len(samples) == 8
    assert {s.group for s in samples} == {f"busbra:{c}" for c in range(1, 5)}
    assert all(Path(s.image).is_file() and Path(s.mask).is_file() for s in samples)
    assert {s.label for s in samples} == {1, 2}


def test_split_samples_groups_never_straddle() -> None:
    samples = [Sample(f"/x/{i}.png", f"/x/{i}_m.png", i % 3, "busi", f"busi:{i // 2}")
               for i in range(60)]
    train, val = split_samples(samples, 0.2, seed=3)
    assert len(train) + len(val) == 60
    assert not {s.group for s in train} & {s.group for s in val}
    assert 0.1 < len(val) / 60 < 0.3


def test_split_samples_same_seed_same_split_any_order() -> None:
    samples = [Sample(f"/x/{i}.png", f"/x/{i}_m.png", i % 3, "busi", f"busi:{i}")
               for i in range(40)]
    a = split_samples(samples, 0.25, seed=1)
    b = split_samples(list(reversed(samples)), 0.25, seed=1)
    c = split_samples(samples, 0.25, seed=2)
    assert a == b
    assert a[1] != c[1]


def test_load_arrays_resizes_and_caches(busi_dir: Path, tmp_path: Path) -> None:
    samples = discover(busi_dir)
    arrays = load_arrays(samples, 32, tmp_path / "cache")
    assert arrays["images"].shape == (12, 32, 32) and arrays["images"].dtype == np.uint8
    assert set(np.unique(arrays["masks"])) <= {0, 1}
    normal = arrays["labels"] == 0
    assert arrays["masks"][normal].sum() == 0 and arrays["masks"][~normal].sum() > 0
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = load_arrays(samples, 32, tmp_path / "cache")
    np.testing.assert_array_equal(again["images"], arrays["images"])


def test_discover_reads_the_busbra_device_column(busbra_dir: Path, busi_dir: Path) -> None:
    names = {s.image: s.scanner for s in discover(busbra_dir) if s.scanner}
    assert len(names) == 8 and set(names.values()) == set(SCANNERS)
    assert set(names) == {s.image for s in discover(busbra_dir)}
    assert {s.scanner for s in discover(busi_dir)} == {""}  # the BUSI manifest names none
