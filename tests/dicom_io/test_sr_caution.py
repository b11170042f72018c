"""The SR's device caution: a TEXT "Comment" in the classification group, dciodvfy-clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_io.routing import DEVICE_CAUTION, device_caution
from dicom_io.sr import build_sr
from tests.dciodvfy import needs_dciodvfy, validate_dataset
from tests.dicom_io.test_seg import ALGORITHM, roundtrip
from tests.dicom_io.test_sr import MALIGNANT, PRIVATE_SCHEME_WARNING, _case, _flatten
from tests.realfiles import deid_ultrasound, pydicom_data_file

MODEL_JSON = Path(__file__).resolve().parents[2] / "inference" / "weights" / "model.json"


def _validated() -> list[dict[str, object]]:
    return json.loads(MODEL_JSON.read_text())["validated_devices"]


@needs_dciodvfy
def test_build_sr_with_caution_passes_dciodvfy_and_carries_text() -> None:
    sources, segs, findings = _case("calibrated")
    sr = build_sr(sources, segs, MALIGNANT, findings, ALGORITHM, 901, caution=DEVICE_CAUTION)
    errors, warnings = validate_dataset(sr)
    assert errors == []
    assert all(PRIVATE_SCHEME_WARNING in line for line in warnings), warnings
    assert ("Comment", DEVICE_CAUTION) in _flatten(roundtrip(sr))["text"]


def test_build_sr_without_caution_has_no_comment() -> None:
    sources, segs, findings = _case("calibrated")
    sr = build_sr(sources, segs, MALIGNANT, findings, ALGORITHM, 901)
    assert all(name != "Comment" for name, _ in _flatten(roundtrip(sr))["text"])


@pytest.mark.parametrize("caution", ["", "  ", "caf\u00e9 caution", "x" * 1025])
def test_build_sr_bad_caution_raises(caution: str) -> None:
    sources, segs, findings = _case("normal")
    with pytest.raises(ValueError, match="caution"):
        build_sr(sources, segs, MALIGNANT, findings, ALGORITHM, 901, caution=caution)


def test_model_metadata_lists_the_training_scanners() -> None:
    """The bundle names the scanners its training/validation data came from.

    inference.export.export_checkpoint writes model.json anew: an export must carry
    ``validated_devices`` (``extra=``), or no SR is cautioned any more. A model trained on
    more sources (e.g. UCLM, Siemens ACUSON S2000) must list their scanners too."""
    meta = json.loads(MODEL_JSON.read_text())
    assert "validated_devices" in meta, "model.json lost validated_devices (re-exported?)"
    listed = {(str(d["manufacturer"]), str(m)) for d in _validated() for m in d["models"]}  # type: ignore[attr-defined]
    assert {("GE", "LOGIQ E9"), ("GE", "LOGIQ 5"), ("GE", "LOGIQ 7")} <= listed
    sources = {Path(d).name for d in meta["train_config"]["data_dirs"]}
    assert sources <= {"busi", "busbra", "uclm", "breast"}, f"trained on {sources}: list them"
    if "uclm" in sources:
        assert ("Siemens", "ACUSON S2000") in listed
    # BrEaST does not name its scanners: training on it lists none (its images stay cautioned).


def test_device_caution_real_files_against_bundled_metadata() -> None:
    from pydicom import dcmread

    ge_logiq_700 = dcmread(pydicom_data_file("US1_UNCR.dcm"), stop_before_pixels=True)
    philips = dcmread(deid_ultrasound("GREYSCALE_IMAGE.dcm"), stop_before_pixels=True)
    assert device_caution([ge_logiq_700], _validated()) == DEVICE_CAUTION
    assert device_caution([philips], _validated()) == DEVICE_CAUTION
    ge_logiq_700.ManufacturerModelName = "LOGIQE9"
    assert device_caution([ge_logiq_700], _validated()) is None
