"""Ankle anatomy: distal tibia and fibula, talus with dome cartilage, calcaneus, ATFL, CFL, Achilles tendon.

Canonical frame (mm): +x lateral, +y posterior, +z superior, origin at the top of the talar dome.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ortho_node.synthetic.anatomy import AnatomyModel
from ortho_node.synthetic.scene import Paint
from ortho_node.synthetic.shapes import (
    Capsule, Difference, Ellipsoid, HalfSpace, Intersection, LimbTube, Offset, Shell, Union, rotation,
)
from ortho_node.synthetic.structures import SOFT_TISSUES as SOFT, Signal, Structure as S



@dataclasses.dataclass(frozen=True)
class AnkleParams:
    scale: float
    plantar_flexion: float  # degrees, foot relative to the leg
    calcaneal_pitch: float
    limb_radius: float
    fat: float
    cartilage: float
    achilles_gap: float = 0.0  # mm of rupture gap (finding ATR)


def sample_params(rng: np.random.Generator) -> AnkleParams:
    return AnkleParams(
        scale=float(np.clip(rng.normal(1.0, 0.06), 0.86, 1.14)), plantar_flexion=float(rng.uniform(-5.0, 15.0)),
        calcaneal_pitch=float(rng.uniform(15.0, 25.0)), limb_radius=float(rng.uniform(34.0, 42.0)),
        fat=float(rng.uniform(3.0, 9.0)), cartilage=float(rng.uniform(1.4, 2.0)),
    )


def build(p: AnkleParams) -> AnatomyModel:
    s = p.scale

    def pt(*v: float) -> np.ndarray:
        return np.array(v, dtype=np.float64) * s

    pivot = pt(0, 2, -12)  # talar dome centre: the foot rotates about it in plantar flexion
    flex = rotation((1, 0, 0), p.plantar_flexion)

    def foot(*v: float) -> np.ndarray:
        return (pt(*v) - pivot) @ flex.T + pivot

    pitch = rotation((1, 0, 0), -p.calcaneal_pitch) @ flex.T.T
    leg = LimbTube(np.array([-10.0, 60.0, 120.0]) * s, [0, 0, 0], np.array([14, 14, 20]) * s,
                   p.limb_radius * s * np.array([1.0, 1.0, 1.2]), p.limb_radius * s * np.array([1.2, 1.15, 1.3]))
    foot_body = Union(Capsule(foot(0, 40, -42), foot(0, -110, -42), 30 * s),
                      Ellipsoid(foot(0, 10, -30), pt(42, 58, 36), flex), blend=20 * s)
    limb = Union(leg, foot_body, blend=25 * s)
    tibia = Intersection(Union(Capsule(pt(0, 0, 30), pt(0, 2, 200), 15 * s, 14 * s),
                               Ellipsoid(pt(-3, 0, 14), pt(24, 21, 16)),
                               Capsule(pt(-20, 2, 8), pt(-19, 3, -12), 7 * s, 5 * s), blend=6 * s),
                         Difference(HalfSpace(pt(0, 0, -20), (0, 0, -1)), Ellipsoid(pivot, pt(17, 26, 15))))
    fibula = Union(Capsule(pt(24, 10, 150), pt(22, 8, 0), 6.5 * s), Ellipsoid(pt(23, 7, -10), pt(7, 10, 16)), blend=4 * s)
    talus = Union(Ellipsoid(pivot, pt(16, 24, 13)), Ellipsoid(foot(2, -26, -18), pt(12, 14, 11), flex),
                  Ellipsoid(foot(3, 8, -24), pt(15, 18, 8), flex), blend=6 * s)
    dome = Intersection(Shell(talus, p.cartilage * s), HalfSpace(pt(0, 0, -12), (0, 0, -1)),
                        Ellipsoid(pivot, pt(15, 22, 20)))
    calcaneus = Ellipsoid(foot(4, 26, -44), pt(17, 40, 16), pitch)
    tarsals = Union(Ellipsoid(foot(0, -42, -22), pt(16, 8, 13), flex), Ellipsoid(foot(14, -40, -42), pt(12, 14, 10), flex),
                    Ellipsoid(foot(-4, -60, -26), pt(16, 12, 12), flex))
    atfl = Capsule(pt(24, -2, -14), foot(14, -20, -17), 1.2 * s, width_dir=(0, 0, 1), aspect=3.5)
    cfl = Capsule(pt(24, 9, -25), foot(22, 22, -40), 2.2 * s)
    achilles_top, achilles_bottom = pt(0, 48, 110), foot(2, 60, -32)
    achilles = Union(Capsule(achilles_top, pt(0, 52, 20), 3.2 * s, width_dir=(1, 0, 0), aspect=2.6),
                     Capsule(pt(0, 52, 20), achilles_bottom, 3.2 * s, 3.5 * s, width_dir=(1, 0, 0), aspect=2.4))
    tendons = [
        Union(Capsule(pt(27, 18, 120), pt(28, 16, -20), 2.6 * s), Capsule(pt(28, 16, -20), foot(24, -10, -45), 2.6 * s)),
        Union(Capsule(pt(24, 20, 120), pt(25, 19, -22), 2.6 * s), Capsule(pt(25, 19, -22), foot(18, -30, -52), 2.6 * s)),
        Union(Capsule(pt(-16, 14, 120), pt(-24, 12, -14), 3.0 * s), Capsule(pt(-24, 12, -14), foot(-16, -40, -30), 3.0 * s)),
        Union(Capsule(pt(-12, 18, 120), pt(-22, 16, -18), 2.2 * s), Capsule(pt(-22, 16, -18), foot(-12, -20, -52), 2.2 * s)),
        Union(Capsule(pt(-6, -22, 120), pt(-8, -24, -10), 3.0 * s), Capsule(pt(-8, -24, -10), foot(-10, -60, -20), 3.0 * s)),
    ]
    paints = [
        Paint(limb, S.SKIN),
        Paint(Offset(limb, -2.0 * s), S.FAT),
        Paint(Intersection(Union(Capsule(pt(0, 28, 40), pt(0, 30, 200), 26 * s), Capsule(pt(-18, 14, 30), pt(-14, 10, 200), 10 * s),
                                 Capsule(pt(18, 0, 45), pt(16, -14, 200), 12 * s),
                                 Capsule(foot(0, 20, -62), foot(0, -110, -58), 14 * s)),
                           Offset(limb, -(p.fat + 2.0) * s)), S.MUSCLE),
        Paint(Ellipsoid(pt(0, 32, 10), pt(16, 12, 28)), S.FAT, within=frozenset({S.MUSCLE})),  # Kager's fat pad
        Paint(tibia, S.TIBIA, rim=(1.2, Signal.CORTEX)),
        Paint(fibula, S.FIBULA, rim=(1.2, Signal.CORTEX)),
        Paint(talus, S.TALUS, rim=(1.0, Signal.CORTEX)),
        Paint(calcaneus, S.CALCANEUS, rim=(1.0, Signal.CORTEX)),
        Paint(tarsals, S.TARSAL, rim=(1.0, Signal.CORTEX), within=SOFT),
        Paint(Intersection(Shell(talus, 0.6 * s, p.cartilage * s), HalfSpace(pivot, (0, 0, -1))), S.FLUID,
              within=SOFT),  # thin physiological joint fluid over the dome
        Paint(dome, S.TALAR_CARTILAGE, within=SOFT),
        Paint(Union(*tendons), S.TENDON, within=SOFT),
        Paint(atfl, S.ATFL, within=SOFT),
        Paint(cfl, S.CFL, within=SOFT),
        Paint(achilles, S.ACHILLES, within=SOFT),
        Paint(Capsule(pt(-14, 20, 120), pt(-20, 18, -30), 2.5 * s), S.VESSEL, within=SOFT),
    ]
    lo, hi = limb.bounds()
    # Only what the largest field of view around the talus can see.
    bounds = (np.array([lo[0] - 2, -95 * s, -95 * s]), np.array([hi[0] + 2, min(hi[1] + 2, 105 * s), 80 * s]))
    parts = {"talus": talus, "dome": dome, "achilles": achilles}
    points = {"atfl": np.array([pt(24, -2, -14), foot(14, -20, -17)]), "cfl": np.array([pt(24, 9, -25), foot(22, 22, -40)]),
              "achilles": np.array([achilles_top, pt(0, 52, 20), achilles_bottom]), "dome": pt(0, 2, 1), "scale": np.full(3, s)}
    return AnatomyModel(paints, parts, points, bounds)
