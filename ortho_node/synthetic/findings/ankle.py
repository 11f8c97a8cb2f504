"""Ankle findings: ATFL, CFL, ATR, OLT (DIAGNOSIS_LABELS[Joint.ANKLE])."""

from __future__ import annotations

import numpy as np

from ortho_node.synthetic.anatomy import AnatomyModel
from ortho_node.synthetic.findings import FindingSpec, Lesion
from ortho_node.synthetic.findings.common import along, band_injury, marrow_oedema
from ortho_node.synthetic.scene import Paint
from ortho_node.synthetic.shapes import Capsule, Ellipsoid
from ortho_node.synthetic.structures import Signal, Structure as S


def _ligament(structure: S, key: str, radius: float):
    def lesion(m: AnatomyModel, rng: np.random.Generator) -> Lesion:
        return band_injury(m.points[key], radius * m.points["scale"][0], structure, rng)
    return lesion


def _achilles_rupture(m: AnatomyModel, rng: np.random.Generator) -> Lesion:
    """A fluid/haemorrhage-filled gap 2-6 cm above the insertion, frayed thickened stumps, Kager oedema."""
    s = m.points["scale"][0]
    path = m.points["achilles"]
    centre = along(path, float(rng.uniform(0.55, 0.75)))
    gap = float(rng.uniform(8.0, 20.0)) * s
    axis = path[1] - path[0]
    axis = axis / np.linalg.norm(axis)
    paints = [
        Paint(Capsule(centre - axis * (gap / 2 + 12 * s), centre + axis * (gap / 2 + 12 * s), 6.5 * s), S.ACHILLES,
              Signal.DEGENERATE, within=frozenset({S.ACHILLES, S.FAT})),
        Paint(Capsule(centre - axis * gap / 2, centre + axis * gap / 2, 7.5 * s), S.FLUID,
              within=frozenset({S.ACHILLES, S.FAT})),
        Paint(Ellipsoid(centre + np.array([0, -14, 0]) * s, np.array([12, 8, 18]) * s), S.OEDEMA, Signal.SOFT_OEDEMA,
              within=frozenset({S.FAT})),
    ]
    return Lesion(paints, f"complete Achilles tendon rupture with a {gap:.0f} mm gap")


def _osteochondral(m: AnatomyModel, rng: np.random.Generator) -> Lesion:
    """Talar dome defect: cartilage and subchondral bone replaced by fluid, surrounding marrow oedema."""
    s = m.points["scale"][0]
    side = float(rng.choice([-1.0, 1.0]))  # medial or lateral dome
    centre = m.points["dome"] + np.array([side * 8.0, float(rng.uniform(-6, 6)), -1.0]) * s
    size = float(rng.uniform(4.0, 7.0)) * s
    paints = [
        marrow_oedema(centre - np.array([0, 0, 6]) * s, np.array([8, 9, 7]) * s, frozenset({S.TALUS})),
        Paint(Ellipsoid(centre, [size, size, size * 0.8]), S.FLUID,
              within=frozenset({S.TALUS, S.TALAR_CARTILAGE, S.FLUID})),
        Paint(Ellipsoid(centre - np.array([0, 0, size * 0.9]), [size * 0.8] * 3), None, Signal.DEGENERATE,
              within=frozenset({S.TALUS})),
    ]
    return Lesion(paints, f"{'lateral' if side > 0 else 'medial'} talar dome osteochondral lesion, {2 * size:.0f} mm")


FINDINGS: dict[str, FindingSpec] = {
    "ATFL": FindingSpec("ATFL", _ligament(S.ATFL, "atfl", 1.6)),
    "CFL": FindingSpec("CFL", _ligament(S.CFL, "cfl", 2.2)),
    "ATR": FindingSpec("ATR", _achilles_rupture),
    "OLT": FindingSpec("OLT", _osteochondral),
}
