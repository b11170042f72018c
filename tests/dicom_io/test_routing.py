"""Routing rules on the header (dicom_io.routing): breast analysed, everything else said."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_io.read import skip_code, skip_reason
from dicom_io.routing import (
    DEVICE_CAUTION,
    RoutingRules,
    device_caution,
    is_validated_device,
    route,
)
from tests.factories import make_us_dataset
from tests.realfiles import deid_ultrasound, pydicom_data_file

#: Every ultrasound image in pydicom-data and deid-data: none is breast.
PYDICOM_US = (
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "OBXXXX1A.dcm",
    "OBXXXX1A_2frame.dcm",
    "OBXXXX1A_expb.dcm",
    "OBXXXX1A_expb_2frame.dcm",
    "OBXXXX1A_rle.dcm",
    "OBXXXX1A_rle_2frame.dcm",
    "US1_J2KI.dcm",
    "US1_J2KR.dcm",
    "US1_UNCI.dcm",
    "US1_UNCR.dcm",
    "color-pl.dcm",
    "color-px.dcm",
    "color3d_jpeg_baseline.dcm",
    "gdcm-US-ALOKA-16.dcm",
    "gdcm-US-ALOKA-16_big.dcm",
)
DEID_US = ("GREYSCALE_IMAGE.dcm", "RGB_IMAGE.dcm", "ultrasound-multiframe.dcm")
RULES = RoutingRules()


def non_breast_files() -> list[Path]:
    return [pydicom_data_file(n) for n in PYDICOM_US] + [deid_ultrasound(n) for n in DEID_US]


def _breast(**attributes: object) -> Dataset:
    ds = make_us_dataset(rows=64, columns=64)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_us_file_list_covers_every_ultrasound_file_of_both_packages() -> None:
    listed = {p.resolve() for p in non_breast_files()}
    found = set()
    for package in ("data_store", "deid_data"):
        spec = find_spec(package)
        assert spec is not None and spec.submodule_search_locations
        for path in Path(list(spec.submodule_search_locations)[0]).rglob("*.dcm"):
            try:
                ds = dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - not every test file is readable
                continue
            if skip_code(ds) is None and str(ds.get("Modality", "")) == "US":
                found.add(path.resolve())
    assert found == listed


@pytest.mark.parametrize("path", non_breast_files(), ids=lambda p: p.name)
def test_skip_reason_non_breast_real_file_not_analysed_with_reason(path: Path) -> None:
    ds = dcmread(path, stop_before_pixels=True)
    assert skip_code(ds) is None  # processable without rules: routing is what skips it
    reason = skip_reason(ds, RULES)
    assert reason is not None and reason.split(":")[0] in ("not_breast", "no_body_part")
    assert reason.endswith("stored, not analysed") and reason.isascii()


def test_route_echo_and_kidney_descriptions_named() -> None:
    echo = route(
        dcmread(deid_ultrasound("ultrasound-multiframe.dcm"), stop_before_pixels=True), RULES
    )
    kidney = route(dcmread(deid_ultrasound("GREYSCALE_IMAGE.dcm"), stop_before_pixels=True), RULES)
    assert echo is not None and "ECHOCARDIO" in echo[1]
    assert kidney is not None and "KIDNEY" in kidney[1]


def test_route_breast_body_part_any_case_analysed() -> None:
    assert route(_breast(BodyPartExamined="breast"), RULES) is None
    assert route(_breast(BodyPartExamined="BREAST"), RULES) is None


@pytest.mark.parametrize(
    "description", ["US BREAST LEFT", "Mamma re", "Echographie du sein", "BRST US", "Brust li."]
)
def test_route_breast_keyword_without_body_part_analysed(description: str) -> None:
    ds = _breast(StudyDescription=description)
    del ds.BodyPartExamined
    assert route(ds, RULES) is None


@pytest.mark.parametrize(
    ("attribute", "value", "named"),
    [
        ("BodyPartExamined", "HEART", "HEART"),
        ("BodyPartExamined", "ABDOMEN", "ABDOMEN"),
        ("StudyDescription", "OB 2nd trimester", "OB"),
        ("ProtocolName", "Carotid duplex", "CAROTID"),
        ("SeriesDescription", "Thyroid", "THYROID"),
    ],
)
def test_route_other_body_part_not_breast(attribute: str, value: str, named: str) -> None:
    ds = _breast(**{attribute: value})
    if attribute != "BodyPartExamined":
        del ds.BodyPartExamined
    decision = route(ds, RULES)
    assert decision is not None and decision[0] == "not_breast" and named in decision[1]


def test_route_breast_and_other_keyword_not_guessed() -> None:
    ds = _breast(StudyDescription="US thyroid + breast")
    del ds.BodyPartExamined
    decision = route(ds, RULES)
    assert decision is not None and decision[0] == "not_breast"


def test_route_unlabelled_follows_switch() -> None:
    ds = _breast()
    del ds.BodyPartExamined
    decision = route(ds, RULES)
    assert decision is not None and decision[0] == "no_body_part"
    assert route(ds, RoutingRules(unlabelled="analyse")) is None


def test_route_modality_and_sop_class_rules() -> None:
    ds = _breast(Modality="MG")
    decision = route(ds, RULES)
    assert decision is not None and "Modality MG" in decision[1]
    only_multiframe = RoutingRules(sop_classes=("1.2.840.10008.5.1.4.1.1.3.1",))
    assert route(_breast(), only_multiframe) is not None
    assert route(_breast(), RoutingRules(enabled=False, unlabelled="skip")) is None


def test_route_reason_sanitised_no_phi_ascii_capped() -> None:
    ds = _breast(BodyPartExamined="HÉART; DOE^JANE " * 4)
    reason = skip_reason(ds, RULES)
    assert reason is not None and reason.isascii()
    assert "DOE^JANE" not in reason and ";" not in reason.split(": ", 1)[1].split("; stored")[0]
    assert len(reason) < 200
    assert str(ds.PatientName) not in reason


def test_routing_rules_bad_unlabelled_refused() -> None:
    with pytest.raises(ValueError, match="unlabelled"):
        RoutingRules(unlabelled="maybe")  # type: ignore[arg-type]


# ---- device awareness --------------------------------------------------------------------------

VALIDATED = [
    {"manufacturer": "GE", "models": ["LOGIQ E9", "Logiq 5", "Logiq 7"]},
    {"manufacturer": "Siemens", "models": ["ACUSON S2000", "S2000"]},
]


@pytest.mark.parametrize(
    ("maker", "model", "expected"),
    [
        ("GE Healthcare", "LOGIQE9", True),
        ("G.E. Medical Systems", "logiq 7", True),
        ("SIEMENS", "S2000", True),
        ("G.E. Medical Systems", "LOGIQ 700", False),
        ("Philips Medical Systems", "EPIQ 7C", False),
        ("", "LOGIQ E9", False),
        ("Toshiba", "LOGIQ E9", False),
    ],
)
def test_is_validated_device_case_and_punctuation_insensitive(
    maker: str, model: str, expected: bool
) -> None:
    assert is_validated_device(maker, model, VALIDATED) is expected


def test_device_caution_real_files() -> None:
    siemens = dcmread(deid_ultrasound("RGB_IMAGE.dcm"), stop_before_pixels=True)
    philips = dcmread(deid_ultrasound("GREYSCALE_IMAGE.dcm"), stop_before_pixels=True)
    assert device_caution([siemens], VALIDATED) is None
    assert device_caution([siemens, philips], VALIDATED) == DEVICE_CAUTION
    assert device_caution([philips], None) is None
