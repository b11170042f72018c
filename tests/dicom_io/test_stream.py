"""dicom_io.read.iter_frames / read_info: frames in batches, same values as read_frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicom_io.errors import UnsupportedObjectError
from dicom_io.read import iter_frames, read_frames, read_info
from tests.dicom_io.conftest import DEID_FILES, REAL_FILES, real_file
from tests.factories import make_us_dataset, make_us_image, write_dataset

STREAMED = [
    "OBXXXX1A_rle_2frame.dcm",
    "examples_ybr_color.dcm",
    "SC_rgb_rle_2frame.dcm",
    "image_dfl.dcm",
    "gdcm-US-ALOKA-16_big.dcm",
    "US1_J2KI.dcm",
    "data/ultrasounds/ultrasound-multiframe.dcm",
]


@pytest.mark.parametrize("name", STREAMED)
@pytest.mark.parametrize("batch", [1, 7])
def test_iter_frames_real_file_equals_read_frames(name: str, batch: int) -> None:
    assert name in REAL_FILES or name in DEID_FILES
    path = real_file(name)
    whole = read_frames(path)
    parts = list(iter_frames(path, batch=batch))
    assert all(len(numbers) <= batch for numbers, _ in parts)
    numbers = tuple(n for part, _ in parts for n in part)
    assert numbers == whole.frame_numbers
    assert np.array_equal(np.concatenate([p for _, p in parts]), whole.pixels)
    info = read_info(path)
    assert info.number_of_frames == len(numbers) and info.shape == whole.shape
    assert info.regions == whole.regions and info.laterality == whole.laterality


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frames": 5, "photometric": "YBR_FULL_422"},
        {"frames": 5, "photometric": "RGB", "planar_configuration": 1},
        {"frames": 5, "transfer_syntax": "deflate"},
        {"frames": 5, "transfer_syntax": "jpeg-ls", "bits": 16},
    ],
)
def test_iter_frames_generated_clip_equals_read_frames(tmp_path: Path, kwargs: dict) -> None:
    path = make_us_image(tmp_path / "clip.dcm", rows=32, columns=48, lesion_radii=(5, 8), **kwargs)
    parts = list(iter_frames(path, batch=2))
    assert [len(n) for n, _ in parts] == [2, 2, 1]
    assert np.array_equal(np.concatenate([p for _, p in parts]), read_frames(path).pixels)


def test_iter_frames_no_pixel_data_and_corrupt_raise_codes(tmp_path: Path) -> None:
    ds = make_us_dataset(rows=32, columns=48, lesion_radii=(5, 8))
    del ds.PixelData
    path = write_dataset(ds, tmp_path / "empty.dcm")
    with pytest.raises(UnsupportedObjectError) as info:
        list(iter_frames(path))
    assert info.value.code == "no_pixel_data"
    good = make_us_image(tmp_path / "good.dcm", frames=3, transfer_syntax="rle")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(good.read_bytes()[:-5000])
    with pytest.raises(UnsupportedObjectError) as info:
        list(iter_frames(broken))
    assert info.value.code == "undecodable"
    with pytest.raises(ValueError):
        next(iter_frames(good, batch=0))
