"""Knee findings: ACL, PCL, MM, LM, MCL, LCL, PD, EFFU (DIAGNOSIS_LABELS[Joint.KNEE])."""

from __future__ import annotations

import dataclasses

import numpy as np

from ortho_node.synthetic.anatomy import AnatomyModel
from ortho_node.synthetic.anatomy.knee import KneeParams
from ortho_node.synthetic.findings import FindingSpec, Lesion
from ortho_node.synthetic.findings.common import band_injury, marrow_oedema
from ortho_node.synthetic.scene import Paint
from ortho_node.synthetic.shapes import Ellipsoid, rotation
from ortho_node.synthetic.structures import Signal, Structure as S


def _cruciate(structure: S, key: str, radius: float):
    def lesion(m: AnatomyModel, rng: np.random.Generator) -> Lesion:
        injury = band_injury(m.points[key], radius * m.points["scale"][0], structure, rng)
        if structure is not S.ACL:
            return injury
        # Pivot-shift contusions: lateral femoral condyle and posterolateral tibial plateau.
        s = m.points["scale"][0]
        bruises = [marrow_oedema(m.points["lateral_condyle"] + np.array([0, 10, -22]) * s, np.array([10, 12, 8]) * s,
                                 frozenset({S.FEMUR})),
                   marrow_oedema(m.points["lateral_plateau_posterior"], np.array([11, 10, 7]) * s, frozenset({S.TIBIA}))]
        return Lesion(injury.paints + bruises, injury.description)
    return lesion


def _meniscal_tear(structure: S, horn: str):
    def lesion(m: AnatomyModel, rng: np.random.Generator) -> Lesion:
        s = m.points["scale"][0]
        kind = ["horizontal", "oblique", "vertical longitudinal", "radial"][int(rng.integers(4))]
        tilt = {"horizontal": 0.0, "oblique": 35.0, "vertical longitudinal": 90.0, "radial": 90.0}[kind]
        spin = 90.0 if kind == "radial" else 0.0  # radial tears cut across the meniscus, the others along it
        place = rng.choice(["posterior", "anterior"], p=[0.8, 0.2])
        centre = m.points[f"{horn}_{place}"]  # mid-height in the body of the horn
        # Orientation in the plateau's frame: a horizontal tear runs parallel to the (sloped, flexed) plateau.
        turn = m.points["leg_axes"] @ rotation((0, 0, 1), spin) @ rotation((1, 0, 0), tilt)
        # A thin fluid disc confined to the meniscus: since it extends beyond it, it reaches the surface.
        slab = Ellipsoid(centre, np.array([9.0, 9.0, 0.55]) * s, turn)
        return Lesion([Paint(slab, None, Signal.FLUID, within=frozenset({structure}))], f"{kind} tear of the {place} horn")
    return lesion


def _collateral(structure: S, key: str, radius: float):
    def lesion(m: AnatomyModel, rng: np.random.Generator) -> Lesion:
        return band_injury(m.points[key], radius * m.points["scale"][0], structure, rng)
    return lesion


def _dislocate(p: KneeParams, rng: np.random.Generator) -> KneeParams:
    return dataclasses.replace(p, patella_shift=float(rng.uniform(6.0, 14.0)), patella_tilt=float(rng.uniform(8, 20)))


def _dislocation_lesion(m: AnatomyModel, rng: np.random.Generator) -> Lesion:
    s = m.points["scale"][0]
    pc = m.points["patella"]
    paints = [
        # Kissing contusions: medial patellar facet and anterolateral lateral femoral condyle.
        marrow_oedema(pc + np.array([-12, 4, -4]) * s, np.array([10, 8, 14]) * s, frozenset({S.PATELLA})),
        marrow_oedema(m.points["lateral_condyle"], np.array([12, 12, 14]) * s, frozenset({S.FEMUR})),
        # Torn medial retinaculum / MPFL: oedema medial to the patella.
        Paint(Ellipsoid(pc + np.array([-28, 6, 0]) * s, np.array([10, 9, 16]) * s), S.OEDEMA, Signal.SOFT_OEDEMA,
              within=frozenset({S.FAT})),
    ]
    # The tendons follow the patella; the normal seat (patella and tendons) is part of the changed region.
    moved = (m.parts["patella_seat"], m.parts["patella"], m.parts["patellar_tendon"], m.parts["quad_tendon"])
    return Lesion(paints, "lateral patellar displacement and tilt with kissing contusions", moved)


def _effuse(p: KneeParams, rng: np.random.Generator) -> KneeParams:
    return dataclasses.replace(p, effusion=float(rng.uniform(6.0, 13.0)))


def _effusion_lesion(m: AnatomyModel, rng: np.random.Generator) -> Lesion:
    return Lesion([], "joint effusion distending the suprapatellar recess",
                  (m.parts["recess"], m.parts["posterior_recess"]))


FINDINGS: dict[str, FindingSpec] = {
    "ACL": FindingSpec("ACL", _cruciate(S.ACL, "acl", 4.0)),
    "PCL": FindingSpec("PCL", _cruciate(S.PCL, "pcl", 5.0)),
    "MM": FindingSpec("MM", _meniscal_tear(S.MEDIAL_MENISCUS, "medial_meniscus")),
    "LM": FindingSpec("LM", _meniscal_tear(S.LATERAL_MENISCUS, "lateral_meniscus")),
    "MCL": FindingSpec("MCL", _collateral(S.MCL, "mcl", 1.6)),
    "LCL": FindingSpec("LCL", _collateral(S.LCL, "lcl", 2.4)),
    "PD": FindingSpec("PD", _dislocation_lesion, _dislocate),
    "EFFU": FindingSpec("EFFU", _effusion_lesion, _effuse),
}
