"""Header copies of source instances that highdicom accepts (no pixels, no highdicom).

highdicom copies the Patient, Clinical Trial Subject, General Study, Patient Study and
Clinical Trial Study modules of the first source into every SEG and SR, and the source's
General Equipment into Contributing Equipment, as they are. Real files bend the rules
(Patient Sex "U" or "f", a birth date of 31 February, an empty Procedure Code Sequence,
de-identified without saying how, ...): highdicom then raises, or the output fails
validation. :func:`copied_attributes` gives the attributes fit to copy: valid values as
they are, unambiguous ones normalised, the rest left out (a Type 2 one left empty), and
each such change recorded by keyword (never by value: these are patient data).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom import config
from pydicom.datadict import dictionary_VM, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import DA, DT, TM, validate_value

__all__ = [
    "COPIED_KEYWORDS",
    "RETIRED_SOP_CLASSES",
    "CopiedAttributes",
    "copied_attributes",
    "log_notes",
    "reference_header",
    "restore_referenced_sop_classes",
    "source_header",
]

log = logging.getLogger(__name__)

# Root attributes of the modules highdicom copies (its module tables for the US, US
# multi-frame and SC IODs, highdicom 0.28; tests/dicom_io/test_headers.py checks).
_PATIENT = (
    "ReferencedPatientSequence", "PatientName", "PatientID", "IssuerOfPatientID",
    "TypeOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "SourcePatientGroupIdentificationSequence", "GroupOfPatientsIdentificationSequence",
    "PatientBirthDate", "PatientBirthTime", "PatientBirthDateInAlternativeCalendar",
    "PatientDeathDateInAlternativeCalendar", "PatientAlternativeCalendar", "PatientSex",
    "QualityControlSubject", "StrainDescription", "StrainNomenclature", "StrainStockSequence",
    "StrainAdditionalInformation", "StrainCodeSequence", "GeneticModificationsSequence",
    "OtherPatientNames", "OtherPatientIDsSequence", "ReferencedPatientPhotoSequence",
    "EthnicGroupCodeSequence", "PatientSpeciesDescription", "PatientSpeciesCodeSequence",
    "PatientBreedDescription", "PatientBreedCodeSequence", "BreedRegistrationSequence",
    "ResponsiblePerson", "ResponsiblePersonRole", "ResponsibleOrganization", "PatientComments",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
)  # fmt: skip
_CLINICAL_TRIAL_SUBJECT = (
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
    "IssuerOfClinicalTrialProtocolID", "OtherClinicalTrialProtocolIDsSequence",
    "ClinicalTrialSiteID", "ClinicalTrialSiteName", "IssuerOfClinicalTrialSiteID",
    "ClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID", "IssuerOfClinicalTrialSubjectReadingID",
    "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
)  # fmt: skip
_GENERAL_STUDY = (
    "StudyDate", "StudyTime", "AccessionNumber", "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName", "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName", "ConsultingPhysicianIdentificationSequence",
    "StudyDescription", "ProcedureCodeSequence", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "ReferencedStudySequence", "StudyID",
    "RequestingService", "RequestingServiceCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
)  # fmt: skip
_PATIENT_STUDY = (
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge",
    "PatientSize", "PatientSizeCodeSequence", "PatientBodyMassIndex", "MeasuredAPDimension",
    "MeasuredLateralDimension", "PatientWeight", "MedicalAlerts", "Allergies", "Occupation",
    "SmokingStatus", "AdditionalPatientHistory", "PregnancyStatus", "LastMenstrualDate",
    "PatientSexNeutered", "ReasonForVisit", "ReasonForVisitCodeSequence", "AdmissionID",
    "IssuerOfAdmissionIDSequence", "ServiceEpisodeID", "ServiceEpisodeDescription",
    "IssuerOfServiceEpisodeIDSequence", "PatientState",
)  # fmt: skip
_CLINICAL_TRIAL_STUDY = (
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
    "LongitudinalTemporalOffsetFromEvent", "LongitudinalTemporalEventType",
    "ClinicalTrialTimePointTypeCodeSequence", "IssuerOfClinicalTrialTimePointID",
    "ConsentForClinicalTrialUseSequence",
)  # fmt: skip
# What highdicom's ContributingEquipment.for_image_acquisition reads (General Equipment).
_EQUIPMENT = (
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber",
    "InstitutionName", "InstitutionalDepartmentName", "InstitutionAddress", "StationName",
    "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime",
)  # fmt: skip
#: Every keyword :func:`copied_attributes` decides about.
COPIED_KEYWORDS = frozenset(
    _PATIENT + _CLINICAL_TRIAL_SUBJECT + _GENERAL_STUDY + _PATIENT_STUDY
    + _CLINICAL_TRIAL_STUDY + _EQUIPMENT
)  # fmt: skip

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
# Type 2C when the patient is an animal (Patient Species present): PS3.3 C.7.1.1, C.7.2.2.
_ANIMAL_TYPE2 = (
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    "PatientSexNeutered",
)
_TYPE2 = frozenset(
    _TYPE2_COPIED
    + _ANIMAL_TYPE2
    + ("ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName")
    + ("ClinicalTrialTimePointID",)
)
# Enumerated values, matched case-insensitively (PatientSex "f" is "F").
_ENUMERATED = {
    "PatientSex": ("M", "F", "O"),
    "PatientIdentityRemoved": ("YES", "NO"),
    "QualityControlSubject": ("YES", "NO"),
    "SmokingStatus": ("YES", "NO", "UNKNOWN"),
    "PatientSexNeutered": ("ALTERED", "UNALTERED"),
    "TypeOfPatientID": ("TEXT", "RFID", "BARCODE"),
}
# Single-valued identifiers some writers give several values: keep the first.
_FIRST_VALUE = ("AccessionNumber", "PatientID", "StudyID")
# Sequences whose items are a simple macro we can check and rebuild.
_REFERENCE_SEQUENCES = ("ReferencedPatientSequence", "ReferencedStudySequence")
_CODE_ITEM_KEYWORDS = (
    "CodeValue",
    "LongCodeValue",
    "URNCodeValue",
    "CodingSchemeDesignator",
    "CodingSchemeVersion",
    "CodeMeaning",
)
#: DeidentificationMethod when the source says it is de-identified but not how.
DEIDENTIFICATION_UNKNOWN = "Unknown (not stated by the source)"
# Defined Terms of Specific Character Set (PS3.3 C.12.1.1.2).
_CHARACTER_SETS = frozenset(
    {f"ISO_IR {n}" for n in (100, 101, 109, 110, 144, 127, 126, 138, 148, 203, 13, 166, 192)}
    | {f"ISO 2022 IR {n}" for n in (6, 100, 101, 109, 110, 144, 127, 126, 138, 148, 203, 13)}
    | {f"ISO 2022 IR {n}" for n in (166, 87, 159, 149, 58)}
    | {"GB18030", "GBK"}
)
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                       "TM", "UC", "UI", "UR", "UT"})  # fmt: skip
# Characters outside the default repertoire need a declared Specific Character Set.
_EXTENDED_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_CONTROL_SHORT = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")  # LO, SH, PN, CS...: ESC only


@dataclass(frozen=True)
class CopiedAttributes:
    """The Patient, Study and General Equipment attributes of a source, fit to copy.

    Attributes
    ----------
    dataset: pydicom.Dataset
        The attributes (and Specific Character Set when valid); Type 2 ones always present.
    notes: dict[str, str]
        Keyword -> what was done to it and why ("invalid value, left out", ...). Fixed
        texts only: never the source's value.
    """

    dataset: Dataset
    notes: dict[str, str] = field(default_factory=dict)


def copied_attributes(ds: Dataset) -> CopiedAttributes:
    """Return the attributes of ``ds`` that the SEG and SR may copy, each valid.

    Per attribute: a value pydicom cannot convert, of the wrong length, format, character
    repertoire (non-ASCII without a valid Specific Character Set), multiplicity or
    calendar date is left out (Type 2: left empty); an enumerated value in another case is
    upper-cased; old-style dates/times are normalised; empty sequences are left out; code
    sequences are kept only when every item has value, scheme and meaning; other
    sequences, which we do not check, are not copied. Per module: de-identified without
    a method gets :data:`DEIDENTIFICATION_UNKNOWN`; an animal patient gets its empty
    Type 2C breed/responsible attributes; an incomplete Clinical Trial Subject module is
    left out. ``ds`` is not modified.
    """
    notes: dict[str, str] = {}
    out = Dataset()
    charset = _character_set(ds, notes)
    if charset is not None:
        out.SpecificCharacterSet = charset
    for keyword in sorted(COPIED_KEYWORDS):
        tag = tag_for_keyword(keyword)
        if tag is None or tag not in ds:
            continue
        try:
            element = ds[tag]
        except Exception:  # noqa: BLE001 - any value pydicom cannot convert
            notes[keyword] = "value cannot be decoded, left out"
            continue
        if element.VR == "SQ":
            sequence = _checked_sequence(keyword, element.value, charset is not None, notes)
            if sequence is not None:
                out.add(DataElement(tag, "SQ", sequence))
        else:
            value = _checked_value(keyword, element, charset is not None, notes)
            if value is not None:
                out.add(DataElement(tag, element.VR, value))
    _make_modules_consistent(out, notes)
    for keyword in _TYPE2_COPIED:
        if keyword not in out:
            setattr(out, keyword, None)
    return CopiedAttributes(out, notes)


def log_notes(notes: dict[str, str], output: str) -> None:
    """Log what was not copied as found into ``output`` ("SEG", "SR"): keywords only."""
    if notes:
        log.warning(
            "source attributes not copied as found into the %s: %s",
            output,
            "; ".join(f"{keyword} ({why})" for keyword, why in sorted(notes.items())),
        )


def source_header(ds: Dataset) -> tuple[Dataset, dict[str, str]]:
    """Return a copy of ``ds`` without pixel data, fit to be handed to highdicom, and notes.

    The Patient/Study/Equipment attributes are those of :func:`copied_attributes` (its
    notes are returned); of the rest, elements pydicom cannot convert are left out,
    old-style dates/times normalised, a missing Modality set to "OT", and a retired SOP
    Class UID replaced by its current equivalent (undo in the output with
    :func:`restore_referenced_sop_classes`). The caller's dataset is never modified.
    """
    copied = copied_attributes(ds)
    header = Dataset()
    for tag in list(ds.keys()):
        if tag.group == 0x7FE0:
            continue
        try:
            element = ds[tag]
        except Exception:  # noqa: BLE001 - unconvertible: highdicom would raise on it
            continue
        if element.keyword in COPIED_KEYWORDS or element.keyword == "SpecificCharacterSet":
            continue
        header.add(copy.deepcopy(element))
    header.update(copied.dataset)
    header.file_meta = copy.deepcopy(getattr(ds, "file_meta", Dataset()))
    _repair_dates_and_times(header)
    if not str(header.get("Modality", "") or "").strip():
        # Type 1, yet absent from some secondary captures; highdicom's SR templates read
        # it (copied nowhere: SEG and SR carry their own Modality).
        header.Modality = "OT"
    header.SOPClassUID = RETIRED_SOP_CLASSES.get(str(ds.SOPClassUID), ds.SOPClassUID)
    return header, copied.notes


def reference_header(ds: Dataset, keywords: Iterable[str]) -> Dataset:
    """Return the part of :func:`source_header` of ``ds`` that holds only ``keywords``.

    For a source highdicom only references (SR evidence and image library entries after the
    first, from which nothing is copied): the same elements with the same values as the
    full header (unconvertible ones left out, Modality "OT" when absent, a retired SOP Class
    UID replaced), without the Patient/Study/Equipment checks and copies whose results the
    output never holds. ``keywords`` must not name a :data:`COPIED_KEYWORDS` attribute.
    """
    keywords = frozenset(keywords)
    if keywords & COPIED_KEYWORDS or "SpecificCharacterSet" in keywords:
        raise ValueError("reference_header takes no Patient/Study/Equipment keyword")
    header = Dataset()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None or tag not in ds or tag >> 16 == 0x7FE0:
            continue
        try:
            element = ds[tag]
        except Exception:  # noqa: BLE001 - left out, as source_header leaves it out
            continue
        header.add(copy.deepcopy(element))
    _repair_dates_and_times(header)
    if not str(header.get("Modality", "") or "").strip():
        header.Modality = "OT"  # as source_header: highdicom's image library reads it
    header.SOPClassUID = RETIRED_SOP_CLASSES.get(str(ds.SOPClassUID), ds.SOPClassUID)
    return header


def _character_set(ds: Dataset, notes: dict[str, str]) -> str | list[str] | None:
    # The declared Specific Character Set when every term is a Defined Term, else None.
    try:
        value = ds.get("SpecificCharacterSet")
    except Exception:  # noqa: BLE001
        value = "?"
    if value in (None, ""):
        return None
    terms = [str(v).strip() for v in (value if isinstance(value, MultiValue) else [value])]
    first_may_be_empty = terms[1:] if len(terms) > 1 and terms[0] == "" else terms
    if terms and all(term in _CHARACTER_SETS for term in first_may_be_empty):
        return terms if len(terms) > 1 else terms[0]
    notes["SpecificCharacterSet"] = "not a Defined Term, treated as absent"
    return None


def _checked_value(
    keyword: str, element: DataElement, charset: bool, notes: dict[str, str]
) -> object | None:
    # The value to copy, "" for a Type 2 attribute left empty, None to leave it out.
    empty = "" if keyword in _TYPE2 else None
    value = element.value
    if value is None or value == "" or (isinstance(value, MultiValue) and len(value) == 0):
        return empty  # an empty Type 1C/3 attribute says nothing: left out
    values = list(value) if isinstance(value, MultiValue) else [value]
    if keyword in _FIRST_VALUE and len(values) > 1:
        values = values[:1]
        notes[keyword] = "several values, first kept"
    if not _multiplicity_ok(keyword, len(values)):
        notes[keyword] = "too many values, left out"
        return empty
    vr = element.VR
    if keyword in _ENUMERATED:
        text = str(values[0]).strip().upper()
        if text not in _ENUMERATED[keyword]:
            notes[keyword] = "not an enumerated value, left out"
            return empty
        if text != values[0]:
            notes[keyword] = "upper-cased"
        return text
    if vr in ("DA", "TM", "DT"):
        values = [_repaired_date_time(vr, str(v)) for v in values]
    for item in values:
        if not _valid(vr, item, charset):
            notes[keyword] = "invalid value, left out"
            return empty
    return values[0] if len(values) == 1 else values


def _valid(vr: str, value: object, charset: bool) -> bool:
    if vr in _TEXT_VRS:
        text = str(value)
        if not text.isascii() and (not charset or vr not in _EXTENDED_VRS):
            return False
        control = _CONTROL if vr in ("ST", "LT", "UT") else _CONTROL_SHORT
        if control.search(text):
            return False
        if vr == "PN":
            groups = text.split("=")
            if len(groups) > 3 or any(len(g.split("^")) > 5 for g in groups):
                return False
            value = text
        elif vr in ("DS", "IS"):
            value = text.strip()
    try:
        validate_value(vr, value, config.RAISE)
        if vr in ("DA", "TM", "DT"):
            {"DA": DA, "TM": TM, "DT": DT}[vr](str(value))  # a real day/time, not 31 Feb
    except Exception:  # noqa: BLE001
        return False
    return True


def _multiplicity_ok(keyword: str, count: int) -> bool:
    vm = dictionary_VM(tag_for_keyword(keyword))
    if vm == "1":
        return count == 1
    match = re.fullmatch(r"(\d+)-(\d+)", vm)
    if match:
        return int(match[1]) <= count <= int(match[2])
    return vm.endswith("n") or vm == str(count)


def _repaired_date_time(vr: str, text: str) -> str:
    # Old (ACR-NEMA style) "1994.11.05", "11:20:00": their DICOM form when unambiguous.
    text = text.strip()
    if vr == "DA":
        candidate = text.replace(".", "").replace("-", "")
        return candidate if _DA_PATTERN.fullmatch(candidate) else text
    if vr == "TM":
        candidate = text.replace(":", "")
        return candidate if _TM_PATTERN.fullmatch(candidate) else text
    return text


def _checked_sequence(
    keyword: str, items: Iterable[Dataset], charset: bool, notes: dict[str, str]
) -> DicomSequence | None:
    items = list(items)
    if not items:
        if keyword not in _ANIMAL_TYPE2:  # those: decided in _make_modules_consistent
            notes[keyword] = "empty sequence, left out"
        return None
    if keyword.endswith("CodeSequence"):
        codes = [_checked_code_item(item, charset) for item in items]
        if any(code is None for code in codes):
            notes[keyword] = "incomplete code item, left out"
            return None
        return DicomSequence(codes)
    if keyword in _REFERENCE_SEQUENCES:
        references = []
        for item in items:
            reference = Dataset()
            for name in ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID"):
                value = item.get(name)
                if value and _valid("UI", str(value), False):
                    setattr(reference, name, str(value))
            if len(reference) != 2:
                notes[keyword] = "incomplete reference, left out"
                return None
            references.append(reference)
        return DicomSequence(references)
    notes[keyword] = "sequence not checked, not copied"
    return None


def _checked_code_item(item: Dataset, charset: bool) -> Dataset | None:
    # Basic Code Sequence Macro (PS3.3 Table 8.8-1): one value, scheme and meaning.
    code = Dataset()
    try:
        for keyword in _CODE_ITEM_KEYWORDS:
            value = item.get(keyword)
            if value in (None, ""):
                continue
            vr = item[keyword].VR
            if not _valid(vr, value, charset):
                return None
            setattr(code, keyword, value)
    except Exception:  # noqa: BLE001
        return None
    values = [k for k in ("CodeValue", "LongCodeValue", "URNCodeValue") if k in code]
    if len(values) != 1 or "CodingSchemeDesignator" not in code or "CodeMeaning" not in code:
        return None
    return code


def _drop(ds: Dataset, keywords: Iterable[str], notes: dict[str, str], why: str) -> None:
    for keyword in keywords:
        if keyword in ds:
            delattr(ds, keyword)
            notes[keyword] = why


def _make_modules_consistent(ds: Dataset, notes: dict[str, str]) -> None:
    # Conditional attributes (Type 1C/2C) that the copied ones make required.
    if ds.get("PatientIdentityRemoved") == "YES" and not (
        ds.get("DeidentificationMethod") or ds.get("DeidentificationMethodCodeSequence")
    ):
        ds.DeidentificationMethod = DEIDENTIFICATION_UNKNOWN
        notes["DeidentificationMethod"] = "absent although identity removed, stated as unknown"
    if "PatientAlternativeCalendar" not in ds:
        _drop(
            ds,
            ("PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar"),
            notes,
            "no Patient Alternative Calendar, left out",
        )
    animal = bool(ds.get("PatientSpeciesDescription") or ds.get("PatientSpeciesCodeSequence"))
    if ds.get("ResponsiblePerson") and not ds.get("ResponsiblePersonRole"):
        ds.ResponsiblePerson = ""
        notes["ResponsiblePerson"] = "no Responsible Person Role, left empty"
    for keyword in _ANIMAL_TYPE2:
        if animal and keyword not in ds:
            setattr(ds, keyword, [] if keyword.endswith("Sequence") else "")
            notes[keyword] = "required for a non-human patient, added empty"
        elif not animal and keyword in ds and not ds[keyword].value:
            _drop(ds, (keyword,), notes, "empty and not required, left out")
    subject = [k for k in _CLINICAL_TRIAL_SUBJECT if k in ds]
    if subject:
        complete = (
            ds.get("ClinicalTrialSponsorName")
            and ds.get("ClinicalTrialProtocolID")
            and (ds.get("ClinicalTrialSubjectID") or ds.get("ClinicalTrialSubjectReadingID"))
        )
        if not complete:
            _drop(ds, subject, notes, "Clinical Trial Subject module incomplete, left out")
        else:
            for keyword in ("ClinicalTrialProtocolName", "ClinicalTrialSiteID",
                            "ClinicalTrialSiteName"):  # fmt: skip
                if keyword not in ds:
                    setattr(ds, keyword, "")
            if not ds.get("ClinicalTrialProtocolEthicsCommitteeName"):
                _drop(
                    ds,
                    ("ClinicalTrialProtocolEthicsCommitteeApprovalNumber",),
                    notes,
                    "no ethics committee name, left out",
                )
    if "LongitudinalTemporalOffsetFromEvent" in ds and not ds.get("LongitudinalTemporalEventType"):
        _drop(ds, ("LongitudinalTemporalOffsetFromEvent",), notes, "no event type, left out")
    if any(k in ds for k in _CLINICAL_TRIAL_STUDY) and "ClinicalTrialTimePointID" not in ds:
        ds.ClinicalTrialTimePointID = ""


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
    # Series/Content dates and times (not copied, but highdicom reads some of them):
    # old-style values normalised, or left out when still invalid.
    for keyword in ("SeriesDate", "SeriesTime", "ContentDate", "ContentTime"):
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        vr = "DA" if keyword.endswith("Date") else "TM"
        text = _repaired_date_time(vr, str(value))
        if _valid(vr, text, False):
            setattr(ds, keyword, text)
        else:
            delattr(ds, keyword)
