"""Scene label values, their MR appearance classes, and the ground-truth label sets exported per joint.

Values 1-11 are exactly the knee segmentation classes of ``ortho_node.labels.KNEE_STRUCTURES``; every other
value is an extra tissue that makes the image believable and that the ground-truth export maps away (knee)
or onto the joint's own synthetic label set (ankle, shoulder).
"""

from __future__ import annotations

import enum

import numpy as np

from ortho_node.labels import KNEE_STRUCTURES, Joint


class Structure(enum.IntEnum):
    """What a scene voxel *is* (anatomy); see :class:`Signal` for what it looks like."""

    BACKGROUND = 0
    FEMUR = 1
    TIBIA = 2
    FIBULA = 3
    PATELLA = 4
    FEMORAL_CARTILAGE = 5
    TIBIAL_CARTILAGE = 6
    PATELLAR_CARTILAGE = 7
    MEDIAL_MENISCUS = 8
    LATERAL_MENISCUS = 9
    ACL = 10
    PCL = 11
    # Soft tissues shared by all joints.
    MUSCLE = 12
    FAT = 13
    FLUID = 14
    SKIN = 15
    VESSEL = 16
    OEDEMA = 17
    TENDON = 18  # tendons without a label of their own
    # Knee extras.
    MCL = 20
    LCL = 21
    PATELLAR_TENDON = 22
    QUADRICEPS_TENDON = 23
    # Ankle.
    TALUS = 30
    CALCANEUS = 31
    TARSAL = 32  # navicular, cuboid: context only
    TALAR_CARTILAGE = 33
    ATFL = 34
    CFL = 35
    ACHILLES = 36
    # Shoulder.
    HUMERUS = 40
    SCAPULA = 41  # glenoid, neck, body, coracoid
    ACROMION = 42
    CLAVICLE = 43
    HUMERAL_CARTILAGE = 44
    GLENOID_CARTILAGE = 45
    LABRUM = 46
    SUPRASPINATUS = 47
    INFRASPINATUS = 48
    SUBSCAPULARIS = 49
    BICEPS_LONG_HEAD = 50
    AC_JOINT = 51
    SASD_BURSA = 52
    BICEPS_SHEATH = 53
    LUNG = 54
    # Knee muscle compartments: one label each, so fat septa can run between them and the randomised render
    # can give each its own intensity; all look like muscle (``Signal.MUSCLE``) in realistic renders.
    VASTUS_INTERMEDIUS = 60  # with rectus femoris
    VASTUS_MEDIALIS = 61
    VASTUS_LATERALIS = 62
    SEMIMEMBRANOSUS = 63
    SEMITENDINOSUS = 64
    SARTORIUS = 65
    BICEPS_FEMORIS = 66
    GASTROCNEMIUS_MEDIAL = 67
    GASTROCNEMIUS_LATERAL = 68
    SOLEUS = 69
    TIBIALIS_ANTERIOR = 70  # with the long extensors
    PERONEALS = 71
    POPLITEUS = 72


class Signal(enum.IntEnum):
    """MR appearance classes; render.py gives each its relaxation parameters."""

    AIR = 0
    CORTEX = 1
    MARROW = 2
    MARROW_OEDEMA = 3
    CARTILAGE = 4
    FIBROCARTILAGE = 5
    LIGAMENT = 6
    DEGENERATE = 7  # torn / sprained ligament or tendon: intermediate signal
    MUSCLE = 8
    FAT = 9
    FLUID = 10
    SKIN = 11
    VESSEL = 12
    SOFT_OEDEMA = 13


_BONES = (
    Structure.FEMUR, Structure.TIBIA, Structure.FIBULA, Structure.PATELLA, Structure.TALUS,
    Structure.CALCANEUS, Structure.TARSAL, Structure.HUMERUS, Structure.SCAPULA, Structure.ACROMION,
    Structure.CLAVICLE,
)
_CARTILAGE = (
    Structure.FEMORAL_CARTILAGE, Structure.TIBIAL_CARTILAGE, Structure.PATELLAR_CARTILAGE,
    Structure.TALAR_CARTILAGE, Structure.HUMERAL_CARTILAGE, Structure.GLENOID_CARTILAGE,
)
_FIBROCARTILAGE = (Structure.MEDIAL_MENISCUS, Structure.LATERAL_MENISCUS, Structure.LABRUM)
# AC joint, bursa and sheath are fluid-lined spaces: thin and fluid-bright even when normal.
_FLUID = (Structure.FLUID, Structure.AC_JOINT, Structure.SASD_BURSA, Structure.BICEPS_SHEATH)
#: Muscle of any compartment (``Structure.MUSCLE`` where a joint has no compartments).
MUSCLES = frozenset({Structure.MUSCLE, *(Structure(v) for v in range(Structure.VASTUS_INTERMEDIUS,
                                                                   Structure.POPLITEUS + 1))})
_OTHER = {
    Structure.BACKGROUND: Signal.AIR, Structure.LUNG: Signal.AIR,
    Structure.FAT: Signal.FAT, Structure.SKIN: Signal.SKIN, Structure.VESSEL: Signal.VESSEL,
    Structure.OEDEMA: Signal.SOFT_OEDEMA,
}


def default_signal(structure: Structure) -> Signal:
    """The appearance of healthy ``structure`` (bones: fatty marrow; the cortex is painted as a rim)."""
    if structure in _BONES:
        return Signal.MARROW
    if structure in _CARTILAGE:
        return Signal.CARTILAGE
    if structure in _FIBROCARTILAGE:
        return Signal.FIBROCARTILAGE
    if structure in _FLUID:
        return Signal.FLUID
    if structure in MUSCLES:
        return Signal.MUSCLE
    return _OTHER.get(structure, Signal.LIGAMENT)


#: Filler tissues that anatomy painted later may overwrite (``Paint.within``).
SOFT_TISSUES = frozenset({Structure.BACKGROUND, Structure.FAT, Structure.FLUID, Structure.SKIN}) | MUSCLES

#: Ground-truth label sets exported per joint: index = value in an exported label map.
ANKLE_STRUCTURES: tuple[str, ...] = (
    "background", "tibia", "fibula", "talus", "calcaneus", "talar cartilage",
    "anterior talofibular ligament", "calcaneofibular ligament", "Achilles tendon",
)
SHOULDER_STRUCTURES: tuple[str, ...] = (
    "background", "humerus", "scapula", "acromion", "clavicle", "humeral cartilage", "glenoid cartilage",
    "labrum", "supraspinatus tendon", "infraspinatus tendon", "subscapularis tendon",
    "long head of biceps tendon", "acromioclavicular joint", "subacromial-subdeltoid bursa",
)
_EXPORTED: dict[Joint, tuple[Structure, ...]] = {
    Joint.KNEE: tuple(Structure(v) for v in range(len(KNEE_STRUCTURES))),
    Joint.ANKLE: (
        Structure.BACKGROUND, Structure.TIBIA, Structure.FIBULA, Structure.TALUS, Structure.CALCANEUS,
        Structure.TALAR_CARTILAGE, Structure.ATFL, Structure.CFL, Structure.ACHILLES,
    ),
    Joint.SHOULDER: (
        Structure.BACKGROUND, Structure.HUMERUS, Structure.SCAPULA, Structure.ACROMION, Structure.CLAVICLE,
        Structure.HUMERAL_CARTILAGE, Structure.GLENOID_CARTILAGE, Structure.LABRUM, Structure.SUPRASPINATUS,
        Structure.INFRASPINATUS, Structure.SUBSCAPULARIS, Structure.BICEPS_LONG_HEAD, Structure.AC_JOINT,
        Structure.SASD_BURSA,
    ),
}


def structure_names(joint: Joint) -> tuple[str, ...]:
    """Names of the exported ground-truth labels of ``joint`` (index = label value)."""
    return {Joint.KNEE: KNEE_STRUCTURES, Joint.ANKLE: ANKLE_STRUCTURES, Joint.SHOULDER: SHOULDER_STRUCTURES}[
        Joint(joint)
    ]


def exported_structures(joint: Joint) -> tuple[Structure, ...]:
    """Scene structures exported for ``joint``, in ground-truth label order."""
    return _EXPORTED[Joint(joint)]


def ground_truth_lut(joint: Joint) -> np.ndarray:
    """A 256-entry table mapping scene label values to the joint's exported label values (others -> 0)."""
    lut = np.zeros(256, dtype=np.uint8)
    for index, structure in enumerate(exported_structures(joint)):
        lut[int(structure)] = index
    return lut
