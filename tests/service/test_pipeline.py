"""The study pipeline on generated and real files, with a transparent threshold model.

The threshold model (lesion = pixels brighter than 0.6) makes the expected mask known, so
the tests can check what the SEG holds, where it lies, and that the SR measures it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from service.errors import JobError
from service.pipeline import SourceImage, algorithm_info, process_study
from tests.dciodvfy import run_dciodvfy
from tests.factories import make_us_image
from tests.realfiles import deid_ultrasound


@dataclass(frozen=True)
class _Prediction:
    mask: np.ndarray
    probabilities: dict[str, float]
    predicted_class: str
    cam: np.ndarray | None


class ThresholdModel:
    """A test double with the service's model interface: lesion = bright pixels."""

    version = "threshold-test 2026-11-23 00000000"
    status = "final"

    def __init__(self, level: float = 0.6) -> None:
        self.level = level
        self.calls: list[int] = []

    def predict(self, images: Sequence[np.ndarray], with_cam: bool = False) -> list[_Prediction]:
        self.calls.append(len(images))
        out = []
        for image in images:
            mask = image > self.level
            probs = (
                {"normal": 0.1, "benign": 0.3, "malignant": 0.6}
                if mask.any()
                else {"normal": 0.8, "benign": 0.15, "malignant": 0.05}
            )
            out.append(
                _Prediction(
                    mask,
                    probs,
                    max(probs, key=probs.get),  # type: ignore[arg-type]
                    image.astype(np.float32) if with_cam else None,
                )
            )
        return out


def _source(path: Path) -> SourceImage:
    ds = dcmread(path, stop_before_pixels=True)
    return SourceImage(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), path)


def _outputs(result: object, kind: str) -> list[Path]:
    return [o.path for o in result.outputs if o.kind == kind]  # type: ignore[attr-defined]


def test_process_study_single_image_seg_holds_model_mask_and_sr_measures_it(tmp_path: Path) -> None:
    path = make_us_image(tmp_path / "a.dcm")
    model = ThresholdModel()
    result = process_study([_source(path)], model, tmp_path / "out")
    (seg_path,) = _outputs(result, "seg")
    (sr_path,) = _outputs(result, "sr")
    for p in (seg_path, sr_path):
        errors, _ = run_dciodvfy(p)
        assert errors == []
    seg = hd.seg.segread(seg_path)
    source = dcmread(path)
    expected = source.pixel_array.astype(np.float32) / 255.0 > 0.6
    mask = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1]
    )[0, :, :, 0].astype(bool)
    assert mask.shape == expected.shape
    # Only pixels inside the calibrated tissue region are processed.
    assert np.array_equal(mask, expected & _region_box(source, expected.shape))
    row = result.results[0]
    assert row["lesion_area_px"] == int(mask.sum())
    assert row["lesion_area_mm2"] == pytest.approx(mask.sum() * 0.1 * 0.1, rel=0.01)
    assert result.predicted_class == "malignant"
    assert (tmp_path / "out" / "preview" / row["mask_png"]).exists()
    assert (tmp_path / "out" / "preview" / row["cam_png"]).exists()
    assert set(result.stage_seconds) == {"decode", "inference", "build", "store"}


def _region_box(ds: object, shape: tuple[int, ...]) -> np.ndarray:
    box = np.zeros(shape, dtype=bool)
    region = ds.SequenceOfUltrasoundRegions[0]  # type: ignore[attr-defined]
    box[
        region.RegionLocationMinY0 : region.RegionLocationMaxY1 + 1,
        region.RegionLocationMinX0 : region.RegionLocationMaxX1 + 1,
    ] = True
    return box


def test_process_study_no_lesion_no_seg_but_sr(tmp_path: Path) -> None:
    path = make_us_image(tmp_path / "a.dcm", lesion=None)
    result = process_study([_source(path)], ThresholdModel(level=0.99), tmp_path / "out")
    assert _outputs(result, "seg") == []
    assert len(_outputs(result, "sr")) == 1
    assert result.predicted_class == "normal"


def test_process_study_rerun_same_output_uids(tmp_path: Path) -> None:
    path = make_us_image(tmp_path / "a.dcm")
    first = process_study([_source(path)], ThresholdModel(), tmp_path / "o1")
    second = process_study([_source(path)], ThresholdModel(), tmp_path / "o2")
    assert [o.sop_instance_uid for o in first.outputs] == [
        o.sop_instance_uid for o in second.outputs
    ]


def test_process_study_multiframe_every_frame_predicted_seg_references_frames(
    tmp_path: Path,
) -> None:
    path = make_us_image(tmp_path / "cine.dcm", frames=5)
    model = ThresholdModel()
    result = process_study([_source(path)], model, tmp_path / "out")
    assert sum(model.calls) == 5
    seg = dcmread(_outputs(result, "seg")[0])
    referenced_frames = {
        int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert referenced_frames == {1, 2, 3, 4, 5}
    assert run_dciodvfy(_outputs(result, "seg")[0])[0] == []


def test_process_study_series_of_two_images_one_seg(tmp_path: Path) -> None:
    a = make_us_image(
        tmp_path / "a.dcm",
        series_instance_uid="1.2.826.0.1.3680043.10.1.1",
        study_instance_uid="1.2.826.0.1.3680043.10.1",
        sop_instance_uid="1.2.826.0.1.3680043.10.1.1.1",
    )
    b = make_us_image(
        tmp_path / "b.dcm",
        series_instance_uid="1.2.826.0.1.3680043.10.1.1",
        study_instance_uid="1.2.826.0.1.3680043.10.1",
        sop_instance_uid="1.2.826.0.1.3680043.10.1.1.2",
    )
    result = process_study([_source(a), _source(b)], ThresholdModel(), tmp_path / "out")
    assert len(_outputs(result, "seg")) == 1
    seg = dcmread(_outputs(result, "seg")[0])
    assert seg.NumberOfFrames == 2


def test_process_study_real_file_without_region_whole_frame_and_no_mm(tmp_path: Path) -> None:
    from tests.realfiles import pydicom_data_file

    result = process_study(
        [_source(pydicom_data_file("US1_UNCR.dcm"))], ThresholdModel(), tmp_path / "out"
    )
    row = result.results[0]
    assert row["lesion_area_px"] > 0 and row["lesion_area_mm2"] is None
    assert all(run_dciodvfy(p)[0] == [] for p in _outputs(result, "seg") + _outputs(result, "sr"))


def test_process_study_real_calibrated_file_sizes_in_mm(tmp_path: Path) -> None:
    result = process_study(
        [_source(deid_ultrasound("GREYSCALE_IMAGE.dcm"))], ThresholdModel(), tmp_path / "out"
    )
    row = result.results[0]
    assert row["lesion_area_mm2"] is not None and row["long_axis_mm"] >= row["short_axis_mm"] > 0


def test_process_study_undecodable_only_image_job_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.dcm"
    good = make_us_image(tmp_path / "good.dcm")
    path.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(JobError) as info:
        process_study(
            [_source(good), SourceImage("1.2.3", "1.2", path)][1:],
            ThresholdModel(),
            tmp_path / "out",
        )
    assert info.value.code == "no_processable_images"


def test_process_study_one_bad_image_others_processed_and_reported(tmp_path: Path) -> None:
    good = make_us_image(tmp_path / "good.dcm")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(good.read_bytes()[:2000])
    result = process_study(
        [_source(good), SourceImage("1.2.3.4", "1.2.3", bad)], ThresholdModel(), tmp_path / "out"
    )
    assert len(result.skipped) == 1 and result.image_count == 1


def test_algorithm_info_checkpoint_model_marked_unvalidated() -> None:
    model = ThresholdModel()
    model.status = "checkpoint epoch 3: training in progress"  # type: ignore[misc]
    info = algorithm_info(model)
    assert info.version.endswith("(unvalidated checkpoint)") and len(info.version) <= 64
