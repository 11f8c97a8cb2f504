"""The label sets of the OrthoDiffusion tasks (DESIGN.md section 3): one source for every stage.

Codes for these concepts live in ``reports/codes.py``; this module holds only names and order, which the
model heads, the synthetic generator and the result objects must agree on.
"""

from __future__ import annotations

import enum


class Joint(str, enum.Enum):
    KNEE = "knee"
    ANKLE = "ankle"
    SHOULDER = "shoulder"
    UNKNOWN = "unknown"


class Plane(str, enum.Enum):
    SAGITTAL = "sagittal"
    CORONAL = "coronal"
    AXIAL = "axial"
    OBLIQUE = "oblique"


#: The joints the model analyses (one diagnosis head each), in the model's order.
MODEL_JOINTS: tuple[Joint, ...] = (Joint.KNEE, Joint.ANKLE, Joint.SHOULDER)

#: The three analysed planes in the model's order (one backbone each).
MODEL_PLANES: tuple[Plane, ...] = (Plane.SAGITTAL, Plane.CORONAL, Plane.AXIAL)

#: Knee segmentation classes; index = label value in a mask (0 is background).
KNEE_STRUCTURES: tuple[str, ...] = (
    "background",
    "femur",
    "tibia",
    "fibula",
    "patella",
    "femoral cartilage",
    "tibial cartilage",
    "patellar cartilage",
    "medial meniscus",
    "lateral meniscus",
    "anterior cruciate ligament",
    "posterior cruciate ligament",
)

#: The value of a mask voxel nobody labelled (a slice a sparse DICOM-SEG has no frame for): neither background
#: nor a structure, so the segmentation loss and the validation Dice leave it out (the official code ignores
#: unlabelled slices).
UNLABELLED = 255

#: Diagnosis labels per joint, in the official order (short keys; display names below).
DIAGNOSIS_LABELS: dict[Joint, tuple[str, ...]] = {
    Joint.KNEE: ("ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD", "EFFU"),
    Joint.ANKLE: ("ATFL", "CFL", "ATR", "OLT"),
    Joint.SHOULDER: ("SSP", "ISP", "SSC", "LHBT", "AC", "GHJ", "BTSE", "SASD"),
}

DIAGNOSIS_NAMES: dict[str, str] = {
    "ACL": "anterior cruciate ligament tear",
    "PCL": "posterior cruciate ligament tear",
    "MM": "medial meniscus tear",
    "LM": "lateral meniscus tear",
    "MCL": "medial collateral ligament injury",
    "LCL": "lateral collateral ligament injury",
    "PD": "patellar dislocation",
    "EFFU": "knee joint effusion",
    "ATFL": "anterior talofibular ligament injury",
    "CFL": "calcaneofibular ligament injury",
    "ATR": "Achilles tendon rupture",
    "OLT": "osteochondral lesion of talus",
    "SSP": "supraspinatus tendon tear",
    "ISP": "infraspinatus tendon tear",
    "SSC": "subscapularis tendon tear",
    "LHBT": "long head of biceps tendon injury",
    "AC": "acromioclavicular joint abnormality",
    "GHJ": "glenohumeral joint abnormality",
    "BTSE": "biceps tendon sheath effusion",
    "SASD": "subacromial-subdeltoid bursitis or effusion",
}
