"""Every coded concept the result objects carry, in one reviewed place (DESIGN.md section 3).

SNOMED CT (``SCT``), DICOM (``DCM``) and UCUM codes are used only where the code and its meaning appear in
DICOM PS3.16 (as shipped in pydicom's concept dictionary, which ``tests/reports/test_codes.py`` checks
against). Concepts without such a verified code use the private scheme ``99ORTHOD``, declared in every
object through :func:`coding_scheme`; its meanings are exact and its values never change meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.coding import Code

from ortho_node.labels import DIAGNOSIS_LABELS, DIAGNOSIS_NAMES, Joint, Plane
from ortho_node.prediction import OperatingPoint, ThresholdRule

PRIVATE_SCHEME = "99ORTHOD"


def coding_scheme() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification Sequence item declaring ``99ORTHOD`` (PS3.3 C.12.1.1.2)."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name="OrthoDiffusion Node private concepts", version="1",
        responsible_organization="OrthoDiffusion Node project")


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


def _dcm(value: str, meaning: str) -> Code:
    return Code(value, "DCM", meaning)


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


# --- Segmented property categories (CID 7150) ----------------------------------------------------------
TISSUE = _sct("85756007", "Tissue")
ANATOMICAL_STRUCTURE = _sct("91723000", "Anatomical Structure")

# --- Anatomy (CID 4, 7151 and friends) -------------------------------------------------------------------
FEMUR = _sct("71341001", "Femur")
TIBIA = _sct("12611008", "Tibia")
FIBULA = _sct("87342007", "Fibula")
PATELLA = _sct("64234005", "Patella")
CARTILAGE = _sct("309312004", "Cartilage")
MENISCUS = _sct("74135004", "Meniscus")
LIGAMENT = _sct("52082005", "Ligament")
KNEE_JOINT = _sct("49076000", "Knee joint")
ANKLE_JOINT = _sct("70258002", "Ankle joint")
SHOULDER = _sct("16982005", "Shoulder")
TALUS = _sct("67453005", "Talus")
ACHILLES_TENDON = _sct("61352006", "Achilles Tendon")
ACROMIOCLAVICULAR_JOINT = _sct("85856004", "Acromioclavicular joint")
TENDON = _sct("13024002", "Tendon")
# No verified code for the cruciate ligaments: private, so that ACL and PCL stay distinguishable by code.
ANTERIOR_CRUCIATE_LIGAMENT = _private("S-ACL", "Anterior cruciate ligament")
POSTERIOR_CRUCIATE_LIGAMENT = _private("S-PCL", "Posterior cruciate ligament")

# --- Modifiers: CID 2 (anatomic modifier) and CID 244 (laterality) ------------------------------------------
MEDIAL = _sct("255561001", "Medial")
LATERAL = _sct("49370004", "Lateral")
RIGHT = _sct("24028007", "Right")
LEFT = _sct("7771000", "Left")

# --- Report concepts (TID 1500, 1501, 1411, 4019) ------------------------------------------------------------
IMAGING_PROCEDURE = _sct("363679005", "Imaging procedure")
ARTIFICIAL_INTELLIGENCE = _dcm("123110", "Artificial Intelligence")  # CID 7162 algorithm family
VOLUME = _sct("118565006", "Volume")
PRESENCE = _dcm("121052", "Presence of property")
PRESENT = _dcm("121053", "Present")
ABSENT = _dcm("121054", "Absent")
CERTAINTY_OF_FINDING = _dcm("111012", "Certainty of Finding")
THRESHOLD_VALUE = _dcm("122411", "Threshold Value")
PLANE_WEIGHT = {
    Plane.SAGITTAL: _private("W-SAG", "Sagittal plane weight"),
    Plane.CORONAL: _private("W-COR", "Coronal plane weight"),
    Plane.AXIAL: _private("W-AX", "Axial plane weight"),
}

# --- A finding's operating point: how its threshold was chosen, the model card's validation figures there ---------
# DCM 111088 Case Sensitivity and 111090 Case Specificity are defined for CAD marks on mammograms, not per-label
# decisions on validation studies: private concepts instead.
SENSITIVITY = _private("M-SENS", "Sensitivity at threshold on validation studies")
SPECIFICITY = _private("M-SPEC", "Specificity at threshold on validation studies")
VALIDATION_POSITIVES = _private("M-NPOS", "Positive validation studies")
VALIDATION_NEGATIVES = _private("M-NNEG", "Negative validation studies")
TARGET_SPECIFICITY = _private("M-TSPEC", "Target specificity of the operating point")
FALSE_POSITIVE_BUDGET = _private("M-FPB", "False positive budget per normal study")
OPERATING_POINT = _private("OP", "Operating point")
#: Values of OPERATING_POINT by ``ThresholdRule``; TARGET_NOT_MET where no threshold reached the target.
OPERATING_RULES = {
    ThresholdRule.TARGET_SPECIFICITY: _private("OP-TSPEC", "Lowest threshold meeting the target specificity"),
    ThresholdRule.YOUDEN: _private("OP-YOUDEN", "Maximal sensitivity plus specificity"),
    ThresholdRule.FALLBACK: _private("OP-FIXED", "Fixed threshold, too few validation studies"),
}
TARGET_NOT_MET = _private("OP-TSPEC-NM", "Most specific threshold, target specificity not met")

# --- Units (UCUM, CID 7181) -------------------------------------------------------------------------------------
CUBIC_CENTIMETER = Code("cm3", "UCUM", "cubic centimeter")
PERCENT = Code("%", "UCUM", "Percent")
NO_UNITS = Code("1", "UCUM", "no units")


def operating_rule(point: OperatingPoint) -> Code:
    """The OPERATING_POINT value of a finding's operating point."""
    if point.rule is ThresholdRule.TARGET_SPECIFICITY and not point.target_met:
        return TARGET_NOT_MET
    return OPERATING_RULES[point.rule]


def laterality_code(laterality: str | None) -> Code | None:
    """CID 244 code for DICOM laterality ``R``/``L``; None when unknown."""
    return {"R": RIGHT, "L": LEFT}.get(laterality or "")


@dataclass(frozen=True)
class StructureConcept:
    """How one segmentation class is coded in a SEG segment (PS3.3 C.8.20.2) and an SR finding site."""

    category: Code
    type: Code
    rgb: tuple[int, int, int]
    modifier: Code | None = None  # Segmented Property Type Modifier (medial / lateral meniscus)
    region: Code | None = None  # the bone whose cartilage this is (Anatomic Region Sequence)


#: Knee structures by the names in ``ortho_node.labels.KNEE_STRUCTURES``; colours are distinct on MR grey.
STRUCTURES: dict[str, StructureConcept] = {
    "femur": StructureConcept(ANATOMICAL_STRUCTURE, FEMUR, (230, 220, 170)),
    "tibia": StructureConcept(ANATOMICAL_STRUCTURE, TIBIA, (200, 160, 110)),
    "fibula": StructureConcept(ANATOMICAL_STRUCTURE, FIBULA, (160, 120, 200)),
    "patella": StructureConcept(ANATOMICAL_STRUCTURE, PATELLA, (250, 150, 190)),
    "femoral cartilage": StructureConcept(TISSUE, CARTILAGE, (60, 200, 240), region=FEMUR),
    "tibial cartilage": StructureConcept(TISSUE, CARTILAGE, (40, 120, 250), region=TIBIA),
    "patellar cartilage": StructureConcept(TISSUE, CARTILAGE, (120, 240, 220), region=PATELLA),
    "medial meniscus": StructureConcept(TISSUE, MENISCUS, (250, 60, 60), modifier=MEDIAL),
    "lateral meniscus": StructureConcept(TISSUE, MENISCUS, (250, 160, 30), modifier=LATERAL),
    "anterior cruciate ligament": StructureConcept(TISSUE, ANTERIOR_CRUCIATE_LIGAMENT, (60, 230, 80)),
    "posterior cruciate ligament": StructureConcept(TISSUE, POSTERIOR_CRUCIATE_LIGAMENT, (230, 240, 40)),
}


@dataclass(frozen=True)
class FindingConcept:
    """A diagnosis label: its finding code, where it is (finding site) and the structure that locates it."""

    code: Code
    site: Code
    site_modifier: Code | None = None
    key_structure: str | None = None  # segmentation class whose key slice anchors the SR's located group


_FINDING_SITES: dict[str, tuple[Code, Code | None, str | None]] = {
    "ACL": (ANTERIOR_CRUCIATE_LIGAMENT, None, "anterior cruciate ligament"),
    "PCL": (POSTERIOR_CRUCIATE_LIGAMENT, None, "posterior cruciate ligament"),
    "MM": (MENISCUS, MEDIAL, "medial meniscus"),
    "LM": (MENISCUS, LATERAL, "lateral meniscus"),
    "MCL": (LIGAMENT, MEDIAL, "femur"),
    "LCL": (LIGAMENT, LATERAL, "femur"),
    "PD": (PATELLA, None, "patella"),
    "EFFU": (KNEE_JOINT, None, "femoral cartilage"),
    "ATFL": (LIGAMENT, None, None),
    "CFL": (LIGAMENT, None, None),
    "ATR": (ACHILLES_TENDON, None, None),
    "OLT": (TALUS, None, None),
    "SSP": (TENDON, None, None),
    "ISP": (TENDON, None, None),
    "SSC": (TENDON, None, None),
    "LHBT": (TENDON, None, None),
    "AC": (ACROMIOCLAVICULAR_JOINT, None, None),
    "GHJ": (SHOULDER, None, None),
    "BTSE": (TENDON, None, None),
    "SASD": (SHOULDER, None, None),
}


def _finding_meaning(label: str) -> str:
    name = DIAGNOSIS_NAMES[label]
    return name[0].upper() + name[1:]


#: Diagnosis findings by label key. No verified SNOMED CT code exists in PS3.16 for these disorders.
FINDINGS: dict[str, FindingConcept] = {
    label: FindingConcept(_private(f"F-{label}", _finding_meaning(label)), *_FINDING_SITES[label])
    for labels in DIAGNOSIS_LABELS.values() for label in labels
}

#: The joint each study is about, as a finding site for structures without a more specific site.
JOINT_SITE: dict[Joint, Code] = {Joint.KNEE: KNEE_JOINT, Joint.ANKLE: ANKLE_JOINT, Joint.SHOULDER: SHOULDER}


def structure(name: str) -> StructureConcept:
    """The concept of a segmentation class; raises KeyError naming unknown classes."""
    try:
        return STRUCTURES[name]
    except KeyError:
        raise KeyError(f"no code for segmentation class {name!r}; add it to reports/codes.py") from None


def finding(label: str) -> FindingConcept:
    try:
        return FINDINGS[label]
    except KeyError:
        raise KeyError(f"no code for diagnosis label {label!r}; add it to reports/codes.py") from None

