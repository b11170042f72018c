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

# BI-RADS ultrasound descriptors of a lesion (TID 1500 qualitative evaluations). Concept
# names and values from DICOM PS3.16 (as shipped in pydicom.sr.codedict, generated from the
# standard): CID 6005 "Shape Characteristic from BI-RADS", CID 6152 "Orientation",
# CID 6007 "Margin Characteristic from BI-RADS", CID 6154 "Echo Pattern", CID 6155
# "Posterior Acoustic Feature", CID 6165 "Breast Linear Measurement". CID 6154 predates
# BI-RADS 5th edition's "heterogeneous"; that value and a not circumscribed margin without
# a further word take the RadLex codes PS3.16 uses in CID 6335/6341.
SHAPE = Code("300842002", "SCT", "Shape")  # concept name, as in CID 6333
ORIENTATION = Code("111354", "DCM", "Orientation")
MARGINS = Code("111037", "DCM", "Margins")
ECHO_PATTERN = Code("111360", "DCM", "Echo pattern")
POSTERIOR_ACOUSTIC_FEATURES = Code("111366", "DCM", "Posterior acoustic features")
DISTANCE_FROM_SKIN = Code("121243", "DCM", "Distance from skin")  # CID 6165: lesion depth

#: Lexicon word → CID 6005 value.
SHAPE_CODES: dict[str, Code] = {
    "oval": Code("84360004", "SCT", "Ovoid shape (Oval)"),
    "round": Code("42700002", "SCT", "Round shape"),
    "irregular": Code("49608001", "SCT", "Irregular"),
}
#: Lexicon word → CID 6152 value.
ORIENTATION_CODES: dict[str, Code] = {
    "parallel": Code("111355", "DCM", "Parallel"),
    "not parallel": Code("111356", "DCM", "Not parallel"),
}
#: Lexicon word → CID 6007 value (RadLex for a bare "not circumscribed", CID 6341).
MARGIN_CODES: dict[str, Code] = {
    "circumscribed": Code("129738007", "SCT", "Circumscribed lesion"),
    "not circumscribed": Code("RID34355", "RADLEX", "Non-circumscribed margin"),
    "indistinct": Code("129741003", "SCT", "Indistinct lesion"),
    "angular": Code("111343", "DCM", "Angular margins"),
    "microlobulated": Code("129739004", "SCT", "Microlobulated lesion"),
    "spiculated": Code("129742005", "SCT", "Spiculated lesion"),
}
#: Lexicon word → CID 6154 value (RadLex "Heterogeneous", CID 6335, for heterogeneous).
ECHO_PATTERN_CODES: dict[str, Code] = {
    "anechoic": Code("111361", "DCM", "Anechoic"),
    "hypoechoic": Code("111364", "DCM", "Hypoechoic"),
    "isoechoic": Code("111365", "DCM", "Isoechoic"),
    "hyperechoic": Code("111362", "DCM", "Hyperechoic"),
    "complex cystic and solid": Code("111363", "DCM", "Complex"),
    "heterogeneous": Code("RID6060", "RADLEX", "Heterogeneous"),
}
#: Lexicon word → CID 6155 value.
POSTERIOR_CODES: dict[str, Code] = {
    "none": Code("111367", "DCM", "No posterior acoustic features"),
    "enhancement": Code("111368", "DCM", "Posterior enhancement"),
    "shadowing": Code("111369", "DCM", "Posterior shadowing"),
    "combined": Code("111370", "DCM", "Combined posterior enhancement and shadowing"),
}

# Radiologist review of the AI result (the corrected SR, service/review.py). PS3.16 has no
# concept for "an AI result was accepted / corrected / rejected by a reader" (the nearest, CID
# 7010's "Rejected for Quality Reasons", is about images), so these are private codes.
REVIEW = Code("WCR-REVIEW", WECARE_SCHEME, "Radiologist review of AI result")
#: Review outcome → value of the "Radiologist review of AI result" evaluation.
REVIEW_CODES: dict[str, Code] = {
    "accepted": Code("WCR-RV-ACCEPT", WECARE_SCHEME, "AI outline accepted"),
    "corrected": Code("WCR-RV-CORRECT", WECARE_SCHEME, "AI outline corrected"),
    "drawn": Code("WCR-RV-DRAWN", WECARE_SCHEME, "Lesion outlined by radiologist"),
    "rejected": Code("WCR-RV-REJECT", WECARE_SCHEME, "AI lesion rejected: no lesion"),
}
REVIEWER_CLASS = Code("WCR-RV-CLASS", WECARE_SCHEME, "Radiologist's class")
PERSON = Code("121006", "DCM", "Person")
