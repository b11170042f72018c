"""Tests of dicom_io.uids: deterministic, valid, recognisable output UIDs."""

from __future__ import annotations

import re
import uuid

import pytest
from pydicom.uid import generate_uid

from dicom_io.uids import WECARE_UUID_MARKER, is_our_uid, output_uid

UID_PATTERN = re.compile(r"2\.25\.(0|[1-9][0-9]*)")


@pytest.mark.parametrize(
    ("source", "version", "kind"),
    [
        ("1.2.3", "v1", "seg"),
        (generate_uid(), "wecare-multitask 2026-11-23 ab12cd34", "sr"),
        ("1.2.840.10008.5.1.4.1.1.6.1", "x", "seg-frame-of-reference"),
    ],
)
def test_output_uid_inputs_give_valid_deterministic_uid(
    source: str, version: str, kind: str
) -> None:
    uid = output_uid(source, version, kind)
    assert uid == output_uid(source, version, kind)
    assert UID_PATTERN.fullmatch(uid) and len(uid) <= 64
    value = uuid.UUID(int=int(uid[5:]))
    assert value.version == 8 and value.variant == uuid.RFC_4122
    assert value.int >> 96 == WECARE_UUID_MARKER
    assert is_our_uid(uid)


@pytest.mark.parametrize(
    "other",
    [("1.2.4", "v1", "seg"), ("1.2.3", "v2", "seg"), ("1.2.3", "v1", "sr")],
)
def test_output_uid_any_input_change_gives_other_uid(other: tuple[str, str, str]) -> None:
    assert output_uid(*other) != output_uid("1.2.3", "v1", "seg")


@pytest.mark.parametrize(
    "uid",
    [
        generate_uid(),
        "2.25." + str(uuid.uuid4().int),
        "2.25.0",
        "2.25.0123",
        "",
        None,
        "2.25." + str(1 << 130),
        "1.2.3.4",
    ],
)
def test_is_our_uid_foreign_uids_false(uid: object) -> None:
    assert not is_our_uid(uid)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", "v", "seg"), "source_uid"),
        (("1.2", "", "seg"), "model_version"),
        (("1.2", "v", "SEG"), "kind"),
        (("1.2", "v", ""), "kind"),
    ],
)
def test_output_uid_invalid_arguments_raise(args: tuple[str, str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        output_uid(*args)
