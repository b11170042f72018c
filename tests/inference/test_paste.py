"""Copy-paste augmentation: a donor's lesion lands in the host image and mask, labels stay true."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference.train import TrainConfig, main, train
from inference.transforms import paste_into_normals, paste_lesion, paste_lesions

S = 96


def _scan(centre: tuple[int, int] | None, radius: int = 10, tissue: int = 120,
          lesion: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A speckle-free 'scan': uniform tissue with one dark disk (the lesion) or none."""
    image = np.full((S, S), tissue, dtype=np.uint8)
    mask = np.zeros((S, S), dtype=np.uint8)
    if centre is not None:
        yy, xx = np.mgrid[:S, :S]
        disk = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
        image[disk], mask[disk] = lesion, 1
    return image, mask


def test_paste_lesion_adds_the_donor_lesion_to_image_and_mask() -> None:
    host_img, host_mask = _scan((25, 25))
    donor_img, donor_mask = _scan((60, 60), radius=8, tissue=160, lesion=80)
    out = paste_lesion(host_img, host_mask, donor_img, donor_mask, np.random.default_rng(0))
    assert out is not None
    image, mask = out
    assert image.dtype == np.uint8 and mask.dtype == host_mask.dtype
    assert (mask[host_mask > 0] == 1).all()  # the host's lesion is kept
    assert (image[host_mask > 0] == host_img[host_mask > 0]).all()  # and not painted over
    new = (mask > 0) & (host_mask == 0)
    assert abs(int(new.sum()) - int(donor_mask.sum())) <= 2  # one donor lesion more
    # the brightness was matched at the rim: the donor's tissue 160 became the host's 120, so
    # its lesion 80 (80 below its tissue) becomes about 40 (80 below the host's tissue)
    assert abs(float(image[new].mean()) - 40.0) < 4.0
    far = np.ones_like(new)
    ys, xs = np.nonzero(new)
    far[max(0, ys.min() - 6) : ys.max() + 7, max(0, xs.min() - 6) : xs.max() + 7] = False
    assert (image[far] == host_img[far]).all()  # nothing changes away from the paste


def test_paste_lesion_refuses_empty_donors_and_impossible_spots() -> None:
    host_img, host_mask = _scan((48, 48))
    empty_img, empty_mask = _scan(None)
    rng = np.random.default_rng(0)
    assert paste_lesion(host_img, host_mask, empty_img, empty_mask, rng) is None
    black = np.zeros((S, S), dtype=np.uint8)  # no ultrasound content to paste onto
    donor_img, donor_mask = _scan((30, 30))
    assert paste_lesion(black, np.zeros_like(host_mask), donor_img, donor_mask, rng) is None


def test_paste_lesions_keeps_labels_true_and_normals_untouched() -> None:
    scans = [_scan((30, 30)), _scan((60, 60)), _scan((40, 60)), _scan(None), _scan((30, 60))]
    pool = {
        "images": np.stack([s[0] for s in scans]), "masks": np.stack([s[1] for s in scans]),
        "labels": np.array([1, 1, 2, 0, 1]),
        "is_busi": np.array([True, True, True, True, False]),
    }
    index = np.arange(5)
    images, masks, pasted = paste_lesions(pool, index, 1.0, np.random.default_rng(1))
    # benign BUSI 0 and 1 take each other's lesion; the malignant image and the BUS-BRA benign
    # image have no other donor of their class and dataset; the normal image is never pasted
    assert pasted == 2
    for i in (0, 1):
        assert masks[i].sum() > pool["masks"][i].sum()
    for i in (2, 3, 4):
        assert (images[i] == pool["images"][i]).all() and (masks[i] == pool["masks"][i]).all()
    assert (pool["masks"][3] == 0).all() and (masks[3] == 0).all()
    same, same_m, none = paste_lesions(pool, index, 0.0, np.random.default_rng(1))
    assert none == 0 and (same == pool["images"]).all() and (same_m == pool["masks"]).all()
    with pytest.raises(ValueError, match="paste prob"):
        paste_lesions(pool, index, 1.5, np.random.default_rng(1))


def test_paste_into_normals_gives_the_normal_a_lesion_and_the_donor_class() -> None:
    scans = [_scan(None), _scan((60, 60), radius=8), _scan(None), _scan((30, 30)),
             _scan(None)]
    pool = {
        "images": np.stack([s[0] for s in scans]), "masks": np.stack([s[1] for s in scans]),
        "labels": np.array([0, 2, 0, 1, 0]),
        "is_busi": np.array([True, True, True, False, False]),
    }
    index = np.array([0, 1, 2, 4])
    images, masks, labels, pasted = paste_into_normals(
        pool, index, pool["images"][index], pool["masks"][index], 1.0,
        np.random.default_rng(3))
    # BUSI normals 0 and 2 take the only BUSI lesion (malignant image 1) and become
    # malignant; BUS-BRA normal 4 takes the BUS-BRA benign lesion; the lesion image is kept
    assert pasted == 3 and labels.dtype == np.int64
    assert labels.tolist() == [2, 2, 2, 1]
    for i in (0, 1, 3):
        assert abs(int(masks[i].sum()) - int(pool["masks"][1 if i < 3 else 3].sum())) <= 2
    assert (images[1] == pool["images"][1]).all() and (masks[1] == pool["masks"][1]).all()
    assert (pool["masks"][[0, 2, 4]] == 0).all()  # the pool itself is not changed
    same, same_m, same_l, none = paste_into_normals(
        pool, index, pool["images"][index], pool["masks"][index], 0.0,
        np.random.default_rng(3))
    assert none == 0 and same_l.tolist() == [0, 2, 0, 0] and (same_m[0] == 0).all()
    with pytest.raises(ValueError, match="paste-normal prob"):
        paste_into_normals(pool, index, images, masks, -0.1, np.random.default_rng(3))


@pytest.mark.parametrize("field", ["paste_prob", "fade_prob", "paste_normal_prob"])
def test_augmentation_prob_is_validated_and_off_by_default(field: str, tmp_path: Path) -> None:
    """Copy-paste and lesion fading (tests/inference/test_fade.py) share these rules."""
    assert getattr(TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path), field) == 0.0
    with pytest.raises(ValueError, match=field):
        TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path, **{field: 1.2})
    with pytest.raises(ValueError, match="teacher"):
        TrainConfig(data_dirs=[tmp_path], out_dir=tmp_path, teacher=tmp_path / "model.pt",
                    **{field: 0.3})


@pytest.mark.parametrize(("field", "record_key", "option"), [
    ("paste_prob", "pasted", "--paste-prob"), ("fade_prob", "faded", "--fade-prob"),
    ("paste_normal_prob", "pasted_normal", "--paste-normal-prob")])
def test_train_with_augmentation_logs_its_count(
        field: str, record_key: str, option: str, busi_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    train(TrainConfig(data_dirs=[busi_dir], out_dir=out, epochs=1, image_size=32,
                      batch_size=4, lr=1e-3, num_threads=1, val_fraction=0.25,
                      **{field: 1.0}))
    record = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    assert record[record_key] > 0
    with pytest.raises(SystemExit):
        main(["--help"])
    assert option in capsys.readouterr().out
