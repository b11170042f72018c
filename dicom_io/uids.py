"""Our UIDs: deterministic ``2.25.`` UIDs and recognising objects we made.

Output UIDs are derived from (source UID, model version, kind) so a job re-run after a
crash produces the same SEG/SR UIDs and a re-send overwrites instead of duplicating.

Outputs are versioned by what they hold: the "source UID" of a SEG or an SR is
:func:`content_key` of the series (or study) and the SOP Instance UIDs it covers. A late
image therefore gets a SEG of its own and the study a new SR under new UIDs (the SR names
its predecessor), while a re-run of the same job, covering the same images, gives the same
UIDs: no UID ever names two different objects.

How we recognise our UIDs: a ``2.25.`` UID is the decimal form of a 128-bit UUID (PS3.5
B.2, ITU-T X.667). We take the name-based SHA-1 UUID (``uuid5``) and turn it into a
vendor-specific RFC 9562 version-8 UUID whose first 32 bits are the marker ``0x57654361``
("WeCa"). It stays a valid UUID (version 8, RFC variant) and hence a valid ``2.25.`` UID,
it is still fully determined by its inputs, and :func:`is_our_uid` can recognise it
without a registered organisation root.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable

__all__ = [
    "WECARE_MANUFACTURER",
    "WECARE_UID_ROOT",
    "WECARE_UUID_MARKER",
    "content_key",
    "is_our_uid",
    "output_uid",
]

WECARE_MANUFACTURER = "WeCare"
#: All our UIDs are UUID-derived (PS3.5 B.2).
WECARE_UID_ROOT = "2.25."
#: First 32 bits of every UUID we derive ("WeCa" in ASCII).
WECARE_UUID_MARKER = 0x57654361
_NAMESPACE = uuid.UUID("6f1c2b9e-7d4a-5e0b-9a53-3c8f6e2d1a47")
_KINDS_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


def output_uid(source_uid: str, model_version: str, kind: str) -> str:
    """Return the deterministic UID of an output object.

    Parameters
    ----------
    source_uid: str
        UID the output derives from (e.g. the source Series Instance UID for a SEG,
        the Study Instance UID for an SR).
    model_version: str
        Model version string (changes → new UIDs, so versions never overwrite each other).
    kind: str
        What the UID names, lower-case ASCII (``"seg"``, ``"seg-series"``, ``"sr"``, ...).

    Returns
    -------
    str
        ``"2.25." + decimal`` of a version-8 UUID carrying :data:`WECARE_UUID_MARKER`;
        at most 44 characters (≤ 64 as PS3.5 requires).
    """
    if not source_uid or not isinstance(source_uid, str):
        raise ValueError("source_uid must be a non-empty str")
    if not model_version or not isinstance(model_version, str):
        raise ValueError("model_version must be a non-empty str")
    if not kind or not set(kind) <= _KINDS_CHARS:
        raise ValueError("kind must be non-empty lower-case ASCII letters, digits, '-' or '_'")
    base = uuid.uuid5(_NAMESPACE, "\x1f".join((source_uid, model_version, kind))).int
    value = (base & ((1 << 96) - 1)) | (WECARE_UUID_MARKER << 96)
    value = (value & ~(0xF << 76)) | (0x8 << 76)  # version 8 (RFC 9562, vendor-specific)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC variant
    return WECARE_UID_ROOT + str(uuid.UUID(int=value).int)


def content_key(container_uid: str, member_uids: Iterable[str]) -> str:
    """The key of an output holding `member_uids` of `container_uid`, for :func:`output_uid`.

    Parameters
    ----------
    container_uid: str
        Series Instance UID (a SEG) or Study Instance UID (an SR).
    member_uids: Iterable[str]
        SOP Instance UIDs of the source images the output covers; order and repeats do not
        matter.

    Returns
    -------
    str
        ``"<container_uid>/<32 hex of sha256 of the sorted member UIDs>"``: the same set gives
        the same key, another set another key.
    """
    members = sorted(set(member_uids))
    if not container_uid or not members:
        raise ValueError("content_key needs a container UID and at least one member UID")
    digest = hashlib.sha256("\x1f".join(members).encode("ascii", "replace")).hexdigest()
    return f"{container_uid}/{digest[:32]}"


def is_our_uid(uid: object) -> bool:
    """True if ``uid`` was made by :func:`output_uid` (marker and version 8 present)."""
    text = str(uid or "").strip()
    if not text.startswith(WECARE_UID_ROOT):
        return False
    digits = text[len(WECARE_UID_ROOT) :]
    if not digits.isdigit() or (len(digits) > 1 and digits[0] == "0"):
        return False
    value = int(digits)
    if value >= 1 << 128:
        return False
    return (value >> 96) == WECARE_UUID_MARKER and ((value >> 76) & 0xF) == 0x8
