"""Coded concepts used in our SEG and SR, in one place (documented in docs/CONFORMANCE.md).

Standard codes (SNOMED CT "SCT", DICOM "DCM", UCUM) wherever one exists; the few concepts
without a standard code use the private coding scheme :data:`WECARE_SCHEME` ("99WECARE"),
declared in the SR's Coding Scheme Identification Sequence.
"""

from __future__ import annotations

from pydicom.sr.coding import Code

__all__ = [
    "ALGORITHM_FAMILIES",
    "CLASS_CODES",
    "PROBABILITY_CODES",
    "WECARE_SCHEME",
]

WECARE_SCHEME = "99WECARE"

# SEG segment.
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically abnormal structure")
LESION = Code("52988006", "SCT", "Lesion")
BREAST = Code("76752008", "SCT", "Breast")

#: AlgorithmInfo.family → CID 7162 "Surface Processing Algorithm Families" code.
ALGORITHM_FAMILIES: dict[str, Code] = {
    "Artificial Intelligence": Code("123110", "DCM", "Artificial Intelligence"),
    "Morphological Operations": Code("123106", "DCM", "Morphological Operations"),
}

# Laterality (CID 244).
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")

# SR document.
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
ULTRASONOGRAPHY_OF_BREAST = Code("47079000", "SCT", "Ultrasonography of breast")
LONG_AXIS = Code("103339001", "SCT", "Long axis")
SHORT_AXIS = Code("103340004", "SCT", "Short axis")
AREA = Code("42798000", "SCT", "Area")
# Concept of the predicted class. Not "Finding" (DCM 121071): TID 1501 already uses that
# concept for the group's Finding type, and readers (highdicom) take it as such.
IMPRESSION = Code("121073", "DCM", "Impression")
MILLIMETER = Code("mm", "UCUM", "millimeter")
SQUARE_MILLIMETER = Code("mm2", "UCUM", "square millimeter")
NO_UNITS = Code("1", "UCUM", "no units")

#: Predicted class → value of the "Impression" qualitative evaluation.
CLASS_CODES: dict[str, Code] = {
    "normal": Code("17621005", "SCT", "Normal"),
    "benign": Code("30807003", "SCT", "Benign"),
    "malignant": Code("21594007", "SCT", "Malignant"),
}
#: Class → concept name of its calibrated probability (unit UCUM "1").
PROBABILITY_CODES: dict[str, Code] = {
    "normal": Code("WCR-P-NORMAL", WECARE_SCHEME, "Probability of normal"),
    "benign": Code("WCR-P-BENIGN", WECARE_SCHEME, "Probability of benign lesion"),
    "malignant": Code("111047", "DCM", "Probability of cancer"),
}
STUDY_CLASSIFICATION = Code("WCR-STUDY-CLASS", WECARE_SCHEME, "AI study classification")
SIZE_MEASUREMENT = Code("WCR-SIZE", WECARE_SCHEME, "Lesion size measurement")
SIZE_NOT_MEASURED = Code(
    "WCR-SIZE-NM",
    WECARE_SCHEME,
    "Not measured: no calibrated ultrasound region",
)
LESION_SEGMENTED = Code("WCR-LESION-SEG", WECARE_SCHEME, "Lesion segmented by AI")
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
DEVICE = Code("121007", "DCM", "Device")
