"""The radiologist's corrected SEG and review SR of one image, built on build_seg / build_sr.

Corrected SEG (PS3.3 A.51): a new series with its own UIDs (derived from the review's
content key, so the same review gives the same UIDs and never two objects), one BINARY
segment "lesion" whose Segment Algorithm Type is SEMIAUTOMATIC (the radiologist accepted or
edited the model's outline; the model stays named in Segment Algorithm Identification) or
MANUAL (drawn from nothing; no algorithm named), Content Creator's Name the reviewer. It
derives its frames from the source image frames (per-frame Derivation Image Sequence, as the
AI SEG) and references the AI SEG it corrects as a further source: Source Image Sequence
(0008,2112) of the General Image module ("the set of images ... used to derive this image")
and, as a series of its own after the source series, the Referenced Series Sequence of the
Common Instance Reference module (C.12.2). Viewers (OHIF) take the first Referenced Series
item as the series to overlay, which stays the source series.

Review SR (TID 1500): the reviewer as Person observer beside the measuring device (TID 1002),
the review outcome and the radiologist's class in the classification group, one lesion group
per outlined lesion measured on the corrected mask, and the AI SR as the predecessor
(Predecessor Documents Sequence, PS3.3 C.17.2.3: "SR instances whose content has been wholly
or partially included in this document"). A new series "WeCare radiologist review report".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.seg import AlgorithmInfo, build_seg
from dicom_io.sr import LesionFinding, ReviewRecord, StudyClassification, build_sr

__all__ = [
    "CORRECTED_SEG_SERIES_DESCRIPTION",
    "REVIEW_SR_SERIES_DESCRIPTION",
    "build_corrected_seg",
    "build_review_sr",
    "reference_of",
]

CORRECTED_SEG_SERIES_DESCRIPTION = "WeCare radiologist-corrected lesion segmentation"
REVIEW_SR_SERIES_DESCRIPTION = "WeCare radiologist review report"
#: output_uid kind of the review SRs' series: every review SR of a study in one series.
REVIEW_SR_SERIES_KIND = "review-sr-series"


def reference_of(ds: Dataset) -> Dataset:
    """The four UIDs a reference to `ds` is made of (SOP Class/Instance, Series, Study)."""
    ref = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        setattr(ref, keyword, str(getattr(ds, keyword)))
    return ref


def _unmatched(ref: Dataset) -> Dataset:
    # highdicom 0.28 looks for per-frame matches among further sources that share the SEG's
    # Frame of Reference (and needs their geometry for it); the AI SEG is referenced, not
    # matched, so its stand-in carries a Frame of Reference UID no SEG has (not written out).
    ref.FrameOfReferenceUID = ""
    return ref


def build_corrected_seg(
    source: Dataset,
    masks: np.ndarray,
    frame_numbers: Sequence[int],
    algorithm: AlgorithmInfo,
    *,
    reviewer: str,
    from_ai: bool,
    ai_seg: Dataset | None,
    uid_source: str,
    series_number: int,
) -> Dataset:
    """The corrected SEG of one source image (see the module docstring).

    Parameters
    ----------
    source: pydicom.Dataset
        The source image's header.
    masks: numpy.ndarray
        ``(N, Rows, Columns) bool``: the corrected lesion mask of each reviewed frame.
    frame_numbers: Sequence[int]
        1-based source frame of each mask; frames not listed are empty.
    algorithm: AlgorithmInfo
        The model whose outline was reviewed (named for SEMIAUTOMATIC segments).
    reviewer: str
        Content Creator's Name.
    from_ai: bool
        True: SEMIAUTOMATIC (accepted or edited from the AI outline); False: MANUAL.
    ai_seg: pydicom.Dataset | None
        The AI SEG holding this image's lesion frames (its UIDs suffice), None if the model
        found no lesion on it.
    uid_source: str
        The review's content key: the SEG's UIDs derive from it.

    Raises
    ------
    dicom_io.errors.EmptySegmentationError
        No reviewed frame has a lesion pixel: no SEG (the review SR says so).
    """
    return build_seg(
        [source],
        [np.asarray(masks, dtype=bool)],
        [tuple(int(n) for n in frame_numbers)],
        algorithm,
        series_number,
        uid_source=uid_source,
        algorithm_type="SEMIAUTOMATIC" if from_ai else "MANUAL",
        content_creator=f"{reviewer}^",  # the user name as a PN family name
        further_sources=[_unmatched(reference_of(ai_seg))] if ai_seg is not None else (),
        series_description=CORRECTED_SEG_SERIES_DESCRIPTION,
    )


def build_review_sr(
    source: Dataset,
    seg: Dataset | None,
    classification: StudyClassification,
    findings: Sequence[LesionFinding],
    algorithm: AlgorithmInfo,
    review: ReviewRecord,
    *,
    ai_sr: Dataset | None,
    uid_source: str,
    series_number: int,
    instance_number: int = 1,
) -> Dataset:
    """The review SR of one source image (see the module docstring).

    ``classification`` is the AI's study classification as its SR reported it; ``findings``
    the lesions measured on the corrected mask (each on a frame of ``seg``); ``ai_sr`` the AI
    report this one partly includes (its UIDs suffice), None when there is none.
    """
    return build_sr(
        [source],
        [seg] if seg is not None else [],
        classification,
        findings,
        algorithm,
        series_number,
        uid_source=uid_source,
        predecessors=[reference_of(ai_sr)] if ai_sr is not None else [],
        instance_number=instance_number,
        review=review,
        series_kind=REVIEW_SR_SERIES_KIND,
        series_description=REVIEW_SR_SERIES_DESCRIPTION,
    )
