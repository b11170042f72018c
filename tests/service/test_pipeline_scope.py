"""Out of scope is said, not guessed; the study's class agrees with its masks (issue 32)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread

from dicom_io.sr import sr_caution
from service.pipeline import OUTSIDE_SCOPE_CAUTION, process_study
from tests.dciodvfy import needs_dciodvfy, run_dciodvfy
from tests.factories import make_us_image
from tests.service.test_pipeline import ThresholdModel, _outputs, _source


@dataclass(frozen=True)
class _ScopedPrediction:
    mask: np.ndarray
    probabilities: dict[str, float]
    predicted_class: str
    cam: np.ndarray | None
    in_scope: bool


class ScopedModel(ThresholdModel):
    """Refuses (in_scope False, empty mask) every image whose mean is over ``refuse_above``."""

    def __init__(self, refuse_above: float) -> None:
        super().__init__()
        self.refuse_above = refuse_above

    def predict(self, images: Sequence[np.ndarray], with_cam: bool = False
                ) -> list[_ScopedPrediction]:
        out = []
        for image, p in zip(images, super().predict(images, with_cam), strict=True):
            inside = float(image.mean()) <= self.refuse_above
            mask = p.mask if inside else np.zeros_like(p.mask)
            out.append(_ScopedPrediction(mask, p.probabilities, p.predicted_class, p.cam, inside))
        return out


class LesionClassNoMaskModel(ThresholdModel):
    """Says benign 97 % and outlines nothing: the class must follow the (empty) mask."""

    def predict(self, images: Sequence[np.ndarray], with_cam: bool = False) -> list:
        return [type(p)(np.zeros_like(p.mask), {"normal": 0.01, "benign": 0.97,
                                                 "malignant": 0.02}, "benign", p.cam)
                for p in super().predict(images, with_cam)]


@needs_dciodvfy
def test_every_image_outside_scope_gives_an_sr_with_no_class_and_the_reason(
        tmp_path: Path) -> None:
    path = make_us_image(tmp_path / "a.dcm", rows=128, columns=160)
    result = process_study([_source(path)], ScopedModel(refuse_above=-1.0), tmp_path / "out")
    assert result.predicted_class is None and result.probabilities is None
    assert _outputs(result, "seg") == []
    (sr_path,) = _outputs(result, "sr")
    errors, _ = run_dciodvfy(sr_path)
    assert errors == []
    sr = dcmread(sr_path)
    assert OUTSIDE_SCOPE_CAUTION in (sr_caution(sr) or "")
    text = str(sr)
    assert "Probability" not in text and "Impression" not in text
    assert [s["reason"].split(":")[0] for s in result.skipped] == ["outside_scope"]
    assert result.results == []


def test_one_image_outside_scope_is_skipped_and_named_the_others_reported(
        tmp_path: Path) -> None:
    dark = make_us_image(tmp_path / "a.dcm", rows=128, columns=160)
    bright = make_us_image(tmp_path / "b.dcm", rows=128, columns=160)
    ds = dcmread(bright)
    ds.StudyInstanceUID = dcmread(dark).StudyInstanceUID
    pixels = ds.pixel_array.copy()
    pixels[:] = 250
    ds.PixelData = pixels.tobytes()
    ds.save_as(bright)
    result = process_study([_source(dark), _source(bright)], ScopedModel(refuse_above=0.9),
                           tmp_path / "out")
    assert result.predicted_class in ("benign", "malignant")
    assert len(result.skipped) == 1 and result.skipped[0]["code"] == "outside_scope"
    (sr_path,) = _outputs(result, "sr")
    assert "1 image(s) of this study were outside the model's scope" in sr_caution(
        dcmread(sr_path))


def test_a_lesion_class_with_no_outline_becomes_normal_and_says_so(tmp_path: Path) -> None:
    path = make_us_image(tmp_path / "a.dcm", rows=128, columns=160)
    result = process_study([_source(path)], LesionClassNoMaskModel(), tmp_path / "out")
    assert result.predicted_class == "normal"
    assert result.probabilities["benign"] == 0.97  # reported as they are
    (sr_path,) = _outputs(result, "sr")
    assert "called this study benign (97 %) but no lesion" in sr_caution(dcmread(sr_path))
