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
