"""Per-joint scan protocol and patient placement: what a radiographer prescribes for each joint."""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

from ortho_node.labels import Joint, Plane
from ortho_node.synthetic.render import SequencePreset


@dataclasses.dataclass(frozen=True)
class JointProtocol:
    """Placement and prescription of one joint (canonical mm unless stated).

    Attributes:
        body_part: BodyPartExamined.
        coil: ReceiveCoilName.
        patient_position: PatientPosition (feet first for the lower limb).
        centre: canonical point at the centre of every field of view.
        coverage: slab thickness (mm) each plane must cover.
        yaw: (mean, spread) rotation of the limb about the patient's z axis, degrees; the shoulder's mean is
            the scapular plane, so its coronal and sagittal series come out coronal/sagittal *oblique*.
        table_x: (min, max) distance of the joint from the patient midline, mm.
        default_weighting: weighting per plane when the caller does not choose.
    """

    body_part: str
    coil: str
    patient_position: str
    centre: tuple[float, float, float]
    coverage: dict[Plane, float]
    yaw: tuple[float, float]
    table_x: tuple[float, float]
    default_weighting: dict[Plane, SequencePreset]


_PD_FS = {Plane.SAGITTAL: SequencePreset.PD_FS, Plane.CORONAL: SequencePreset.PD_FS, Plane.AXIAL: SequencePreset.PD_FS}

PROTOCOLS: dict[Joint, JointProtocol] = {
    Joint.KNEE: JointProtocol(
        # Centred between the patella's front and the posterior condyles; the coronal slab covers both.
        "KNEE", "Knee 16", "FFS", (0.0, -8.0, 8.0),
        {Plane.SAGITTAL: 95.0, Plane.CORONAL: 95.0, Plane.AXIAL: 110.0}, (0.0, 8.0), (70.0, 110.0), _PD_FS),
    Joint.ANKLE: JointProtocol(
        "ANKLE", "Foot Ankle 16", "FFS", (0.0, 5.0, -15.0),
        {Plane.SAGITTAL: 85.0, Plane.CORONAL: 100.0, Plane.AXIAL: 100.0}, (0.0, 8.0), (70.0, 110.0), _PD_FS),
    Joint.SHOULDER: JointProtocol(
        "SHOULDER", "Shoulder 16", "HFS", (-5.0, 0.0, 5.0),
        {Plane.SAGITTAL: 90.0, Plane.CORONAL: 80.0, Plane.AXIAL: 100.0}, (-32.0, 6.0), (150.0, 190.0),
        {Plane.SAGITTAL: SequencePreset.T2_FS, Plane.CORONAL: SequencePreset.PD_FS, Plane.AXIAL: SequencePreset.PD_FS}),
}


def anatomy_module(joint: Joint) -> ModuleType:
    """The anatomy module of ``joint`` (``sample_params``, ``build``)."""
    return importlib.import_module(f"ortho_node.synthetic.anatomy.{Joint(joint).value}")
