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
from PIL import Image
from pydicom import dcmread

from service.errors import JobError
from service.pipeline import SourceImage, algorithm_info, process_study
from service.previews import render_preview
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
        self.cam_calls = 0

    def predict(self, images: Sequence[np.ndarray], with_cam: bool = False) -> list[_Prediction]:
        self.calls.append(len(images))
        self.cam_calls += int(with_cam)
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
    # No preview is made per image; the dashboard renders one on demand from source + SEG.
    assert not (tmp_path / "out" / "preview").exists()
    preview = render_preview(
        tmp_path / "out" / "preview",
        row["mask_png"],
        source=path,
        sop_instance_uid=str(source.SOPInstanceUID),
        frame_number=row["frame"],
        seg_paths=[seg_path],
    )
    assert preview is not None
    overlay = np.asarray(Image.open(preview).convert("RGB"))
    tinted = (overlay[..., 0] > overlay[..., 2] + 20) & mask  # the mask's pixels, tinted
    assert tinted.sum() > 0.9 * mask.sum()
    assert row["cam_png"] is not None
    assert model.cam_calls == 0  # no Grad-CAM in the job
    cam = render_preview(
        tmp_path / "out" / "preview",
        row["cam_png"],
        source=path,
        sop_instance_uid=str(source.SOPInstanceUID),
        frame_number=row["frame"],
        seg_paths=[seg_path],
        model=model,
    )
    assert cam is not None and cam.is_file() and model.cam_calls == 1
    assert set(result.stage_seconds) == {
        "decode",
        "inference",
        "collect",
        "describe",
        "build",
        "store",
    }


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
    assert info.version.endswith("(not validated)") and len(info.version) <= 64


# --- Sequence of Ultrasound Regions: each 2D tissue region, its own calibration ---------


def _region(x0: int, x1: int, rows: int, delta_cm: float | None, spatial_format: int = 1):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RegionSpatialFormat = spatial_format
    item.RegionDataType = 1 if spatial_format == 1 else 3
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMaxX1 = x0, x1 - 1
    item.RegionLocationMinY0, item.RegionLocationMaxY1 = 0, rows - 1
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3 if delta_cm else 0
    item.PhysicalDeltaX = item.PhysicalDeltaY = delta_cm or 1.0
    return item


def _dual_view(path: Path, left_cm: float | None, right_cm: float | None) -> Path:
    """Two B-mode panes side by side (x 0-159 and 160-319), one lesion in each, and a
    spectral Doppler strip that must be ignored."""
    from tests.factories import lesion_mask, make_us_dataset, write_dataset

    rows, columns = 128, 320
    ds = make_us_dataset(rows=rows, columns=columns, lesion=(64, 80), lesion_radii=(20, 25))
    pixels = np.frombuffer(ds.PixelData, np.uint8).reshape(rows, columns).copy()
    pixels[lesion_mask(rows, columns, center=(60, 240), radii=(12, 30))] = 230
    ds.PixelData = pixels.tobytes()
    ds.SequenceOfUltrasoundRegions = [
        _region(0, 160, rows, left_cm),
        _region(160, 320, rows, right_cm),
        _region(0, 320, 20, 0.05, spatial_format=3),  # spectral strip: not a tissue region
    ]
    return write_dataset(ds, path)


@pytest.mark.parametrize(
    ("left_cm", "right_cm"),
    [(0.01, -0.02), (-0.015, None), (None, None)],
    ids=["both-calibrated-negative-delta", "one-uncalibrated", "none-calibrated"],
)
def test_process_study_dual_view_one_finding_per_region_with_its_own_deltas(
    tmp_path: Path, left_cm: float | None, right_cm: float | None
) -> None:
    from dicom_io.measure import mask_measurements
    from tests.factories import lesion_mask
    from tests.service.pipeline_checks import check_study_outputs, expected_source

    path = _dual_view(tmp_path / "dual.dcm", left_cm, right_cm)
    model = ThresholdModel()
    result = process_study([_source(path)], model, tmp_path / "out")
    assert model.calls == [2]  # one crop per tissue pane, the Doppler strip is not sent
    summary = check_study_outputs(result, [expected_source(path, 0.6)], "dual view")
    assert summary["findings"] == 2
    assert summary["measured"] == sum(d is not None for d in (left_cm, right_cm))
    # The values the SR carries, independently of the pipeline's own helpers.
    sr = hd.sr.srread(_outputs(result, "sr")[0])
    groups = sr.content.get_planar_roi_measurement_groups()
    masks = [
        lesion_mask(128, 320, center=(64, 80), radii=(20, 25))[:, :160],
        lesion_mask(128, 320, center=(60, 240), radii=(12, 30))[:, 160:],
    ]
    for group, mask, delta in zip(groups, masks, (left_cm, right_cm), strict=True):
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        if delta is None:
            assert values == {}
            notes = {e.name.meaning: e.value.meaning for e in group.get_qualitative_evaluations()}
            assert notes["Lesion size measurement"].startswith("Not measured")
        else:
            mm = abs(delta) * 10
            area, long_axis, short_axis = mask_measurements(mask, mm, mm)
            assert values["Area"] == pytest.approx(area, abs=0.01)
            assert values["Long axis"] == pytest.approx(long_axis, abs=0.01)
            assert values["Short axis"] == pytest.approx(short_axis, abs=0.01)
    if left_cm == 0.01 and right_cm == -0.02:
        # Right pane: 60 px wide lesion at 0.2 mm/px ≈ 12 mm; left: 50 px at 0.1 ≈ 5 mm.
        long_axes = [
            {m.name.meaning: m.value for m in g.get_measurements()}["Long axis"] for g in groups
        ]
        assert long_axes[0] == pytest.approx(5.0, abs=0.5)
        assert long_axes[1] == pytest.approx(12.0, abs=0.5)


def test_process_study_no_region_whole_frame_and_sr_says_not_measured(tmp_path: Path) -> None:
    from tests.service.pipeline_checks import check_study_outputs, expected_source

    path = make_us_image(tmp_path / "a.dcm", regions=False)
    result = process_study([_source(path)], ThresholdModel(), tmp_path / "out")
    summary = check_study_outputs(result, [expected_source(path, 0.6)], "no region")
    assert summary == {"segs": 1, "seg_frames": 1, "findings": 1, "measured": 0}
    assert result.results[0]["lesion_area_mm2"] is None


# --- Cine streaming: memory does not grow with the number of frames -------------------

_MEMORY_CHILD = """
import gc, sys
from pathlib import Path
from pydicom import dcmread
from service.pipeline import SourceImage, process_study
from tests.service.test_pipeline import ThresholdModel

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1])

def run(path, out):
    ds = dcmread(path, stop_before_pixels=True)
    source = SourceImage(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), Path(path))
    return process_study([source], ThresholdModel(), Path(out))

run(sys.argv[2], sys.argv[3] + "-warm")  # imports, highdicom's IOD tables: a constant
gc.collect()
try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset VmHWM to the current RSS
except OSError:
    print("no-clear-refs")
    sys.exit(0)
before = peak_kib()
result = run(sys.argv[1], sys.argv[3])
assert result.image_count > 1
print(peak_kib() - before)
"""


def _peak_growth_kib(clip: Path, warm: Path, out: Path) -> int:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(clip), str(warm), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=root,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    if last == "no-clear-refs":
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs not writable)")
    return int(last)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_process_study_long_cine_memory_does_not_grow_with_frame_count(tmp_path: Path) -> None:
    """Peak RSS growth of process_study for a 50- and a 400-frame clip (240 × 320, lesion
    in 5 frames). Before streaming, every frame was held as float32 plus a bool mask and a
    float32 CAM: ≈ 450 MB more for 400 frames than for 50. Now the growth is bounded by
    the decode batch, the previews and the lesion frames, whatever the clip length."""
    size = {"rows": 240, "columns": 320, "lesion_frames": range(5)}
    warm = make_us_image(tmp_path / "warm.dcm", frames=2, rows=240, columns=320)
    short = make_us_image(tmp_path / "short.dcm", frames=50, **size)
    long = make_us_image(tmp_path / "long.dcm", frames=400, **size)
    grow_short = _peak_growth_kib(short, warm, tmp_path / "o-short")
    grow_long = _peak_growth_kib(long, warm, tmp_path / "o-long")
    print(f"peak RSS growth: 50 frames {grow_short} KiB, 400 frames {grow_long} KiB")
    assert grow_long < 60 * 1024  # stated bound: 60 MiB for any clip length at this size
    assert grow_long - grow_short < 10 * 1024  # 350 more frames (≈ 100 MB as float32)


def test_process_study_decodes_ahead_and_stops_decoding_when_the_model_fails(
    tmp_path: Path,
) -> None:
    """Frames are decoded in a background thread one batch ahead of the model (issue 31:
    decoding overlaps inference); a job that fails half-way leaves no decoding thread behind."""
    import threading

    class FailingModel(ThresholdModel):
        def predict(self, images, with_cam=False):  # type: ignore[no-untyped-def]
            if len(self.calls) == 1:
                raise RuntimeError("model failed")
            return super().predict(images, with_cam)

    clips = [make_us_image(tmp_path / f"{i}.dcm", frames=20, study_instance_uid="1.2.3.31",
                           series_instance_uid="1.2.3.31.1") for i in range(3)]
    with pytest.raises(RuntimeError, match="model failed"):
        process_study([_source(p) for p in clips], FailingModel(), tmp_path / "out")
    assert not [t for t in threading.enumerate() if t.name == "decode"]

    model = ThresholdModel()
    result = process_study([_source(p) for p in clips], model, tmp_path / "out2")
    assert sum(model.calls) == 60  # every frame of every clip, in order, once
    assert {row["frame"] for row in result.results} == {1, 2, 3, 4}
    assert not [t for t in threading.enumerate() if t.name == "decode"]
