"""Which stored images are in the model's scope (breast), decided on the DICOM header alone.

A PACS forwards every ultrasound study it has, not only breast: a cardiac echo or an
obstetric image given to a breast-lesion model comes back with a confident, wrong class.
:func:`route` reads Modality, SOP Class, Body Part Examined and the study/series/protocol
descriptions and says whether an image is analysed; an image out of scope is still stored
(the sender never sees a failure) and listed as "not analysed" with the reason.

Rule order (first that speaks decides):

1. Modality not in ``modalities`` or SOP class not in ``sop_classes`` (when set): skip.
2. Body Part Examined names breast: analyse; names anything else: skip.
3. A description or protocol names another body part (``other_keywords``): skip (also when
   it names breast as well: a mixed study is not guessed).
4. A description or protocol names breast (``breast_keywords``): analyse.
5. Nothing says anything: ``unlabelled`` decides ("skip" by default, see README).

Reasons carry only a code-string-like value of the header (upper-case ASCII letters,
digits, spaces, at most 24 characters) or the configured keyword that matched: never
patient, physician or institution fields.

Device awareness lives here too (:func:`is_validated_device`, :func:`device_caution`): the
model's metadata lists the scanners it was validated on; images from others carry a caution.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydicom.dataset import Dataset

__all__ = [
    "DEFAULT_BREAST_KEYWORDS",
    "DEFAULT_DESCRIPTION_FIELDS",
    "DEFAULT_OTHER_KEYWORDS",
    "DEVICE_CAUTION",
    "RoutingRules",
    "device_caution",
    "is_validated_device",
    "route",
    "route_code",
]

#: Breast words in the languages of the sites we know of (en, de, fr, es/pt, la, "BRST").
DEFAULT_BREAST_KEYWORDS: tuple[str, ...] = (
    "breast",
    "brst",
    "mamma",
    "mammary",
    "mama",
    "brust",
    "sein",
)
#: Other body parts ultrasound is used for. A keyword of 4+ letters also matches as a word's
#: start ("echocardio" matches "Echocardiogram"); shorter ones only as whole words ("OB").
DEFAULT_OTHER_KEYWORDS: tuple[str, ...] = (
    "heart",
    "cardiac",
    "echocardio",
    "transesophageal",
    "tte",
    "tee",
    "abdomen",
    "abdominal",
    "liver",
    "kidney",
    "renal",
    "thyroid",
    "neck",
    "obstetric",
    "ob",
    "fetal",
    "foetal",
    "pregnancy",
    "pelvis",
    "pelvic",
    "uterus",
    "ovary",
    "prostate",
    "testis",
    "scrotum",
    "carotid",
    "vascular",
    "venous",
    "vein",
    "artery",
    "aorta",
    "musculoskeletal",
    "msk",
    "shoulder",
    "knee",
)
#: Free-text attributes searched for keywords.
DEFAULT_DESCRIPTION_FIELDS: tuple[str, ...] = (
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "PerformedProcedureStepDescription",
    "RequestedProcedureDescription",
)
_WORD = re.compile(r"[A-Z0-9]+")
_SAFE = re.compile(r"[^A-Z0-9 ]")
_REASON_VALUE_LIMIT = 24

#: The caution an SR and the dashboard carry for an image from a device not validated.
DEVICE_CAUTION = "Device not among those the model was validated on: results may be less accurate"


@dataclass(frozen=True)
class RoutingRules:
    """What is analysed (config section ``routing``; defaults: breast ultrasound only).

    Attributes
    ----------
    enabled: bool
        False analyses every supported ultrasound image (the rules are not applied).
    modalities: tuple[str, ...]
        Modality values analysed; an absent Modality is left to the other rules.
    sop_classes: tuple[str, ...]
        SOP Class UIDs analysed; empty: every class dicom_io.read supports.
    breast_body_parts: tuple[str, ...]
        Body Part Examined values meaning breast (besides the breast keywords).
    breast_keywords, other_keywords: tuple[str, ...]
        Words in descriptions/protocol meaning breast, or another body part.
    description_fields: tuple[str, ...]
        Attributes searched for keywords.
    unlabelled: "analyse" | "skip"
        What happens when neither body part nor a keyword says anything.
    """

    enabled: bool = True
    modalities: tuple[str, ...] = ("US", "OT")
    sop_classes: tuple[str, ...] = ()
    breast_body_parts: tuple[str, ...] = ("BREAST",)
    breast_keywords: tuple[str, ...] = DEFAULT_BREAST_KEYWORDS
    other_keywords: tuple[str, ...] = DEFAULT_OTHER_KEYWORDS
    description_fields: tuple[str, ...] = DEFAULT_DESCRIPTION_FIELDS
    unlabelled: Literal["analyse", "skip"] = "skip"

    def __post_init__(self) -> None:
        if self.unlabelled not in ("analyse", "skip"):
            raise ValueError("unlabelled must be 'analyse' or 'skip'")
        for name in ("modalities", "breast_body_parts", "breast_keywords", "other_keywords"):
            values = tuple(str(v).strip().upper() for v in getattr(self, name))
            object.__setattr__(self, name, tuple(v for v in values if v))
        object.__setattr__(self, "sop_classes", tuple(str(v).strip() for v in self.sop_classes))
        object.__setattr__(self, "description_fields", tuple(self.description_fields))


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception:  # noqa: BLE001 - a malformed element says nothing
        return ""
    if value is None:
        return ""
    if not isinstance(value, (str, bytes)) and isinstance(value, Sequence):
        value = " ".join(str(v) for v in value)
    return str(value).upper()


def _matches(words: Sequence[str], keywords: Iterable[str]) -> str | None:
    """The first keyword found: a whole word, or a word's start for keywords of 4+ letters."""
    for keyword in keywords:
        for word in words:
            if word == keyword or (len(keyword) >= 4 and word.startswith(keyword)):
                return keyword
    return None


def _safe(value: str) -> str:
    """Header text fit for a reason: ASCII upper-case letters, digits, spaces; capped."""
    text = _SAFE.sub(" ", value.upper())
    text = " ".join(text.split())[:_REASON_VALUE_LIMIT].strip()
    return text or "none"


def route(ds: Dataset, rules: RoutingRules) -> tuple[str, str] | None:
    """None when ``ds`` is analysed, else ``(code, text)``: why it is out of scope.

    ``code`` is ``not_breast`` (the header names something else) or ``no_body_part``
    (nothing names a body part and ``rules.unlabelled`` is "skip"). Works on a header read
    without pixels.
    """
    if not rules.enabled:
        return None
    modality = _text(ds, "Modality").strip()
    if modality and modality not in rules.modalities:
        return "not_breast", f"Modality {_safe(modality)} is not analysed (routing.modalities)"
    sop_class = _text(ds, "SOPClassUID").strip()
    if rules.sop_classes and sop_class not in rules.sop_classes:
        return "not_breast", "SOP class not in routing.sop_classes"
    body_part = _text(ds, "BodyPartExamined").strip()
    if body_part:
        words = _WORD.findall(body_part)
        if body_part in rules.breast_body_parts or _matches(words, rules.breast_keywords):
            return None
        return "not_breast", f"Body Part Examined is {_safe(body_part)}, not breast"
    words = [w for field in rules.description_fields for w in _WORD.findall(_text(ds, field))]
    other = _matches(words, rules.other_keywords)
    breast = _matches(words, rules.breast_keywords)
    if other is not None:
        both = f" (and {_safe(breast)})" if breast is not None else ""
        return "not_breast", f"description or protocol names {_safe(other)}{both}, not breast"
    if breast is not None or rules.unlabelled == "analyse":
        return None
    return (
        "no_body_part",
        "no Body Part Examined and no breast keyword in the descriptions "
        "(routing.unlabelled = skip)",
    )


def route_code(ds: Dataset, rules: RoutingRules) -> str | None:
    """The code of :func:`route` alone (None: analysed)."""
    decision = route(ds, rules)
    return decision[0] if decision is not None else None


# ---- device awareness --------------------------------------------------------------------------


def _squash(value: object) -> str:
    """Upper-case letters and digits only: "G.E. Medical Systems" -> "GEMEDICALSYSTEMS"."""
    return "".join(_WORD.findall(str(value or "").upper()))


def is_validated_device(
    manufacturer: str, model_name: str, validated: Iterable[Mapping[str, object]]
) -> bool:
    """True when (Manufacturer, Manufacturer's Model Name) is a device the model was validated on.

    Compared case-insensitively without spaces or punctuation. An entry of ``validated``
    (the model metadata's ``validated_devices``) has ``manufacturer`` (matched as the start
    of the header's, so "GE" covers "GE Healthcare" and "G.E. Medical Systems") and
    ``models``: the model names as scanners write them ("LOGIQ E9", "LOGIQE9").
    """
    maker = _squash(manufacturer)
    model = _squash(model_name)
    if not maker or not model:
        return False
    for entry in validated:
        prefix = _squash(entry.get("manufacturer"))
        names = entry.get("models") or ()
        names = [names] if isinstance(names, str) else list(names)  # type: ignore[call-overload]
        if prefix and maker.startswith(prefix) and model in {_squash(n) for n in names}:
            return True
    return False


def device_caution(
    sources: Iterable[Dataset], validated: Iterable[Mapping[str, object]] | None
) -> str | None:
    """:data:`DEVICE_CAUTION` when any source comes from a device not in ``validated``.

    None when every source's device is listed, or when ``validated`` is None (a model whose
    metadata lists no devices: nothing to compare against).
    """
    if validated is None:
        return None
    devices = list(validated)
    for ds in sources:
        maker = str(ds.get("Manufacturer", "") or "")
        model = str(ds.get("ManufacturerModelName", "") or "")
        if not is_validated_device(maker, model, devices):
            return DEVICE_CAUTION
    return None
