"""From per-frame model outputs to the study: the study-level class rule and mask pasting.

Arrays and probabilities in, plain values out; nothing here knows DICOM (the crop boxes
come from ``dicom_io.regions.analysis_boxes`` as plain ``(y0, y1, x0, x1)`` tuples).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: :data:`inference.model.CLASSES`, repeated so that this module needs no torch (a test
#: checks that the two agree).
CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")

__all__ = ["CLASSES", "StudyCall", "paste_masks", "study_class"]


@dataclass(frozen=True)
class StudyCall:
    """The study's class and the calibrated probabilities it comes with.

    Attributes
    ----------
    predicted_class: str
        One of :data:`inference.model.CLASSES`.
    probabilities: dict[str, float]
        The probabilities of the frame that decided (they sum to 1).
    frame_index: int
        Index, in the sequence given to :func:`study_class`, of that frame.
    """

    predicted_class: str
    probabilities: dict[str, float] = field(hash=False)
    frame_index: int

    def __post_init__(self) -> None:
        if self.predicted_class not in CLASSES:
            raise ValueError(f"StudyCall.predicted_class must be one of {CLASSES}")
        if set(self.probabilities) != set(CLASSES):
            raise ValueError(f"StudyCall.probabilities must have the keys {CLASSES}")
        if not math.isclose(sum(self.probabilities.values()), 1.0, abs_tol=1e-3):
            raise ValueError("StudyCall.probabilities must sum to 1")


def study_class(frame_probabilities: Iterable[Mapping[str, float]]) -> StudyCall:
    """The study-level class: the most suspicious frame decides.

    Rule: the frame (of any image, any crop box) with the highest calibrated probability
    of ``malignant`` gives the study its class (that frame's most probable class) and its
    probabilities; the first such frame on ties. One suspicious frame suffices, as a
    radiologist reports the worst finding of a study; averaging would let many normal
    frames of a cine clip hide the one that shows the lesion.

    Parameters
    ----------
    frame_probabilities: Iterable[Mapping[str, float]]
        Calibrated probabilities over :data:`inference.model.CLASSES`, one per analysed
        frame (or per crop box of a frame).

    Raises
    ------
    ValueError
        No frame given.
    """
    best: tuple[float, int, Mapping[str, float]] | None = None
    for index, probabilities in enumerate(frame_probabilities):
        p_malignant = float(probabilities.get("malignant", 0.0))
        if best is None or p_malignant > best[0]:
            best = (p_malignant, index, probabilities)
    if best is None:
        raise ValueError("study_class needs at least one frame")
    _, index, probabilities = best
    values = {name: float(probabilities[name]) for name in CLASSES}
    predicted = max(CLASSES, key=lambda name: values[name])  # first on ties, as argmax
    return StudyCall(predicted_class=predicted, probabilities=values, frame_index=index)


def agree_with_masks(call: StudyCall, lesions: bool) -> str:
    """The study's class made to agree with its masks: a study with a lesion outline is benign
    or malignant (the deciding frame's more probable of the two), one without is normal.

    A lesion drawn under the word "normal", or "benign 97 %" with nothing drawn, is a result a
    radiologist cannot act on; the probabilities are reported unchanged beside the class, and
    :func:`disagreement_caution` says when the class had to follow the mask against them.
    """
    if lesions and call.predicted_class == "normal":
        return max(CLASSES[1:], key=lambda name: call.probabilities[name])
    if not lesions and call.predicted_class != "normal":
        return "normal"
    return call.predicted_class


def disagreement_caution(call: StudyCall, lesions: bool) -> str | None:
    """A plain sentence when the classifier called a lesion class that no mask shows."""
    if lesions or call.predicted_class == "normal":
        return None
    share = round(100 * call.probabilities[call.predicted_class])
    return (f"The classifier called this study {call.predicted_class} ({share} %) but no lesion "
            "could be outlined; the class given is normal. Review the images.")


def paste_masks(
    shape: tuple[int, int], pieces: Sequence[tuple[tuple[int, int, int, int], np.ndarray]]
) -> np.ndarray:
    """Paste crop-sized masks back into the frame grid: ``(H, W) bool``, the union of them.

    Parameters
    ----------
    shape: tuple[int, int]
        (rows, columns) of the frame.
    pieces: Sequence[tuple[tuple[int, int, int, int], numpy.ndarray]]
        ``((y0, y1, x0, x1), mask)`` with ``mask`` of shape ``(y1 - y0, x1 - x0)``.
    """
    full = np.zeros(shape, dtype=bool)
    for (y0, y1, x0, x1), mask in pieces:
        if mask.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"mask {mask.shape} does not fit box {(y0, y1, x0, x1)}")
        full[y0:y1, x0:x1] |= mask
    return full
