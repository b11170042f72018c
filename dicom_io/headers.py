"""Header copies of source instances that highdicom accepts (no pixels, no highdicom)."""

from __future__ import annotations

import copy
import re

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = ["RETIRED_SOP_CLASSES", "restore_referenced_sop_classes", "source_header"]

_TYPE2_COPIED = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
)


def source_header(ds: Dataset) -> Dataset:
    """Return a copy of ``ds`` without pixel data, fit to be handed to highdicom.

    highdicom copies Patient/Study attributes and reads IOD tables by SOP class; real
    files bend the rules. The copy (the caller's dataset is never modified) gets: missing
    Type 2 Patient/Study attributes as empty values, old-style dates/times normalised,
    multi-valued single-valued identifiers reduced to the first value, a missing Modality
    as "OT", and a retired
    SOP Class UID replaced by its current equivalent (undo in the output with
    :func:`restore_referenced_sop_classes`).
    """
    header = Dataset()
    for element in ds:
        if element.tag.group == 0x7FE0:
            continue
        header.add(copy.deepcopy(element))
    header.file_meta = copy.deepcopy(getattr(ds, "file_meta", Dataset()))
    # Type 2 Patient/Study attributes that highdicom copies by attribute access; real
    # files sometimes lack them. Empty (zero length) is what Type 2 allows.
    for keyword in _TYPE2_COPIED:
        if keyword not in header:
            setattr(header, keyword, None)
    _repair_dates_and_times(header)
    if not str(header.get("Modality", "") or "").strip():
        # Type 1, yet absent from some secondary captures; highdicom's SR templates read
        # it (copied nowhere: SEG and SR carry their own Modality).
        header.Modality = "OT"
    header.SOPClassUID = RETIRED_SOP_CLASSES.get(str(ds.SOPClassUID), ds.SOPClassUID)
    return header


_DA_PATTERN = re.compile(r"\d{8}")
_TM_PATTERN = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
# Retired SOP classes highdicom has no IOD table for → their current equivalent.
RETIRED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6": "1.2.840.10008.5.1.4.1.1.6.1",
    "1.2.840.10008.5.1.4.1.1.3": "1.2.840.10008.5.1.4.1.1.3.1",
}


def restore_referenced_sop_classes(ds: Dataset, classes: dict[str, str]) -> None:
    """Set Referenced SOP Class UID back to ``classes[uid]`` wherever ``uid`` is referenced.

    Walks every sequence of ``ds`` (in place): references to a retired-class source must
    carry the class the source really has.
    """
    for element in ds:
        if element.VR != "SQ":
            continue
        for item in element.value:
            uid = item.get("ReferencedSOPInstanceUID")
            if uid in classes and "ReferencedSOPClassUID" in item:
                item.ReferencedSOPClassUID = classes[uid]
            restore_referenced_sop_classes(item, classes)


def _repair_dates_and_times(ds: Dataset) -> None:
    # Old (ACR-NEMA style) values such as "11:20:00" or "1994.11.05" are invalid DA/TM
    # (highdicom raises, validators flag them): normalise them, or leave the Type 2
    # attribute empty when still invalid. Single-valued Type 2 study attributes with
    # several values keep the first (e.g. Accession Number "PR\\US").
    for keyword in (
        "StudyDate",
        "StudyTime",
        "SeriesDate",
        "SeriesTime",
        "PatientBirthDate",
        "ContentDate",
        "ContentTime",
    ):
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        pattern = _DA_PATTERN if keyword.endswith("Date") else _TM_PATTERN
        text = str(value).strip()
        stripped = text.replace(":", "")
        if keyword.endswith("Date"):
            stripped = stripped.replace(".", "").replace("-", "")
        for candidate in (text, stripped):
            if pattern.fullmatch(candidate):
                setattr(ds, keyword, candidate)
                break
        else:
            setattr(ds, keyword, None)
    for keyword in ("AccessionNumber", "PatientID", "StudyID"):
        element = ds.get(keyword)
        if element is not None and isinstance(element, MultiValue):
            setattr(ds, keyword, element[0] if len(element) else None)
