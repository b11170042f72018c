"""The study SR made by the pipeline carries each lesion's BI-RADS descriptors (issue 30)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from service.pipeline import process_study
from tests.dciodvfy import needs_dciodvfy, run_dciodvfy
from tests.factories import make_us_image
from tests.service.test_pipeline import ThresholdModel, _outputs, _source

# Concept names of TID 1500 items the descriptors become (codes from PS3.16).
DESCRIPTOR_CONCEPTS = {
    ("300842002", "SCT"): "Shape",
    ("111354", "DCM"): "Orientation",
    ("111037", "DCM"): "Margins",
    ("111360", "DCM"): "Echo pattern",
    ("111366", "DCM"): "Posterior acoustic features",
}


def _content_items(ds: Dataset) -> list[Dataset]:
    items: list[Dataset] = []
    stack = list(ds.get("ContentSequence", []))
    while stack:
        item = stack.pop()
        items.append(item)
        stack.extend(item.get("ContentSequence", []))
    return items


@needs_dciodvfy
def test_process_study_sr_has_descriptors_of_the_ai_mask(tmp_path: Path) -> None:
    path = make_us_image(tmp_path / "a.dcm")
    result = process_study([_source(path)], ThresholdModel(), tmp_path / "out")
    (sr_path,) = _outputs(result, "sr")
    errors, _ = run_dciodvfy(sr_path)
    assert errors == []
    items = _content_items(dcmread(sr_path))
    coded = {
        (
            str(i.ConceptNameCodeSequence[0].CodeValue),
            str(i.ConceptNameCodeSequence[0].CodingSchemeDesignator),
        )
        for i in items
        if i.ValueType == "CODE"
    }
    assert set(DESCRIPTOR_CONCEPTS) <= coded
    numbers = {
        str(i.ConceptNameCodeSequence[0].CodeMeaning): i.MeasuredValueSequence[0]
        for i in items
        if i.ValueType == "NUM" and "MeasuredValueSequence" in i
    }
    assert str(numbers["Long axis"].MeasurementUnitsCodeSequence[0].CodeValue) == "mm"
    assert float(numbers["Long axis"].NumericValue) > 0
    row = result.results[0]
    assert row["descriptors"]["shape"] in ("oval", "round", "irregular")
    assert float(numbers["Long axis"].NumericValue) == pytest.approx(
        row["descriptors"]["long_axis_mm"], rel=0.01
    )


def test_descriptors_overlap_the_inference_of_later_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image's descriptors start once its last frame is predicted, in the pipeline's
    'describe' thread, while later images are still being predicted; every lesion still gets
    them (issue 31: describing ~100 lesions after inference doubled a study's time)."""
    import threading

    import service.pipeline as pipeline

    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_describe = pipeline.describe_in_box

    def recording_describe(*args: object, **kwargs: object) -> object:
        with lock:
            events.append(("describe", threading.current_thread().name))
        return real_describe(*args, **kwargs)  # type: ignore[arg-type]

    class RecordingModel(ThresholdModel):
        def predict(self, images, with_cam=False):  # type: ignore[no-untyped-def]
            with lock:
                events.append(("predict", threading.current_thread().name))
            return super().predict(images, with_cam)

    monkeypatch.setattr(pipeline, "describe_in_box", recording_describe)
    study, series = "1.2.826.0.1.3680043.8.498.31", "1.2.826.0.1.3680043.8.498.31.1"
    sources = [
        _source(make_us_image(tmp_path / f"{i}.dcm", study_instance_uid=study,
                              series_instance_uid=series))
        for i in range(20)
    ]
    result = process_study(sources, RecordingModel(), tmp_path / "out")

    kinds = [kind for kind, _ in events]
    last_predict = len(kinds) - 1 - kinds[::-1].index("predict")
    assert kinds.count("predict") == 3  # 20 crops in batches of 8
    assert "describe" in kinds[:last_predict]  # started before the last batch was predicted
    assert {name for kind, name in events if kind == "describe"} == {"describe_0"}
    assert kinds.count("describe") == 20  # one per image's lesion, none twice
    assert all(row["descriptors"]["shape"] for row in result.results)
