"""Shoulder anatomy: humeral head, glenoid and labrum, acromion, clavicle and AC joint, rotator cuff tendons,
long head of biceps with its sheath, subacromial-subdeltoid bursa, deltoid, chest wall.

Canonical frame (mm): the scapular plane: +x lateral (the glenoid faces +x), +y posterior, +z superior,
origin at the centre of the humeral head. The patient placement turns this frame by the scapular
anteversion, so coronal and sagittal series come out coronal/sagittal oblique as in practice.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ortho_node.synthetic.anatomy import AnatomyModel
from ortho_node.synthetic.scene import Paint
from ortho_node.synthetic.shapes import (
    Capsule, Difference, Ellipsoid, HalfSpace, Intersection, LimbTube, Offset, Shape, Shell, Union,
)
from ortho_node.synthetic.structures import SOFT_TISSUES as SOFT, Signal, Structure as S

CUFF_THICKNESS = 5.0


@dataclasses.dataclass(frozen=True)
class ShoulderParams:
    scale: float
    head_radius: float
    acromion_tilt: float  # mm drop of the acromion's lateral edge (acromial shape)
    limb_radius: float
    fat: float
    # Fluid layers, mm; findings (SASD, BTSE, GHJ, AC) distend them.
    bursa: float = 0.4
    sheath: float = 0.5
    joint_fluid: float = 0.6
    ac_gap: float = 2.5


def sample_params(rng: np.random.Generator) -> ShoulderParams:
    return ShoulderParams(
        scale=float(np.clip(rng.normal(1.0, 0.06), 0.86, 1.14)), head_radius=float(rng.uniform(22.0, 26.0)),
        acromion_tilt=float(rng.uniform(-2.0, 5.0)), limb_radius=float(rng.uniform(44.0, 54.0)),
        fat=float(rng.uniform(3.0, 12.0)),
    )


def _sector(base: Shape, *cuts: tuple[tuple[float, ...], tuple[float, ...]]) -> Shape:
    """``base`` limited by half-spaces given as (point, outward normal)."""
    return Intersection(base, *(HalfSpace(p, n) for p, n in cuts))


def build(p: ShoulderParams) -> AnatomyModel:
    s = p.scale

    def pt(*v: float) -> np.ndarray:
        return np.array(v, dtype=np.float64) * s

    r = p.head_radius * s
    head = Ellipsoid(pt(0, 0, 0), [r, r, r])
    humerus = Difference(Union(head, Ellipsoid(pt(16, -2, 10), pt(9, 13, 12)), Ellipsoid(pt(6, -18, -2), pt(7, 7, 9)),
                               Capsule(pt(6, 2, -14), pt(10, 4, -200), 15 * s, 12 * s), blend=6 * s),
                         Capsule(pt(15, -21, 12), pt(15, -19, -70), 3.5 * s))
    joint_r = r + 2.0 * s  # head + cartilage + joint space: the glenoid's concavity
    glenoid = Difference(Union(Ellipsoid(pt(-36, 0, 0), pt(11, 14, 20)), Capsule(pt(-40, 2, 0), pt(-58, 6, -4), 10 * s),
                               Ellipsoid(pt(-85, 8, -25), pt(42, 5, 60)), Capsule(pt(-100, 26, 35), pt(-18, 22, 38), 6 * s),
                               Capsule(pt(-34, -8, 18), pt(-16, -32, 12), 6 * s), blend=5 * s),
                         Ellipsoid(pt(0, 0, 0), [joint_r + 1.5 * s] * 3))
    glenoid_cartilage = Intersection(Shell(Ellipsoid(pt(0, 0, 0), [joint_r] * 3), 1.5 * s),
                                     Ellipsoid(pt(-30, 0, 0), pt(8, 14, 20)))
    rim = [pt(-27, 15 * np.cos(t), 21 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 17)]
    labrum = Union(*(Capsule(a, b, 2.6 * s) for a, b in zip(rim, rim[1:])))
    acromion = Capsule(pt(-16, 12, 36 + r / s - 24), pt(22, 2, 33 + r / s - 24 - p.acromion_tilt), 4.5 * s,
                       width_dir=(0, 1, 0), aspect=3.5)
    # The clavicle does not move with the AC gap: a widened joint (finding AC) eats into its lateral end.
    clavicle = Capsule(pt(-26.5, -8, 40), pt(-150, -25, 34), 8 * s, 9 * s)
    ac_joint = Ellipsoid(pt(-16 - p.ac_gap / 2, -2, 39), [p.ac_gap * s / 2 + 0.5, 8 * s, 7 * s])
    cuff = Shell(head, CUFF_THICKNESS * s, 1.3 * s)
    ssp = _sector(cuff, ((0, 0, 6 * s), (0, 0, -1)), ((0, -12 * s, 0), (0, -1, 0)), ((0, 10 * s, 0), (0, 1, 0)),
                  ((-12 * s, 0, 0), (-1, 0, 0)))
    isp = _sector(cuff, ((0, 10 * s, 0), (0, -1, 0)), ((0, 0, -14 * s), (0, 0, -1)), ((-8 * s, 0, 0), (-1, 0, 0)))
    ssc = _sector(cuff, ((0, -12 * s, 0), (0, 1, 0)), ((0, 0, -18 * s), (0, 0, -1)), ((0, 0, 14 * s), (0, 0, 1)),
                  ((-10 * s, 0, 0), (-1, 0, 0)))
    cuff_outer = r + (1.3 + CUFF_THICKNESS) * s
    bursa = _sector(Shell(head, p.bursa * s, cuff_outer - r), ((0, 0, -8 * s), (0, 0, -1)), ((-10 * s, 0, 0), (-1, 0, 0)))
    biceps_points = [pt(-25, -2, 20), pt(-8, -14, 27), pt(9, -21, 19), pt(15, -21, 4), pt(15, -19, -70)]
    biceps = Union(*(Capsule(a, b, 2.3 * s) for a, b in zip(biceps_points, biceps_points[1:])))
    sheath = Union(*(Capsule(a, b, (2.3 + p.sheath) * s) for a, b in zip(biceps_points[2:], biceps_points[3:])))
    limb = Union(LimbTube(np.array([-110.0, -20.0, 40.0]) * s, [8, 6, 0], [2, 0, 0], p.limb_radius * s * np.array([0.9, 1.0, 1.2]),
                          p.limb_radius * s * np.array([0.9, 1.0, 1.1])),
                 Ellipsoid(pt(-150, 8, -30), pt(120, 95, 170)), Ellipsoid(pt(-2, 2, 8), pt(58, 58, 52)), blend=25 * s)
    inner = Offset(limb, -(p.fat + 2.0) * s)
    deltoid = _sector(Shell(Ellipsoid(pt(6, 0, -8), pt(38, 40, 50)), 14 * s), ((-18 * s, 0, 0), (-1, 0, 0)),
                      ((0, 0, 42 * s), (0, 0, 1)))
    muscles = Union(deltoid, Ellipsoid(pt(-135, 10, -20), pt(95, 60, 140)), Capsule(pt(6, 2, -45), pt(10, 4, -200), 34 * s),
                    Capsule(pt(-20, 2, 32), pt(-100, 14, 48), 8 * s, 16 * s), Capsule(pt(-18, 28, 0), pt(-100, 24, -20), 7 * s, 18 * s),
                    Capsule(pt(-18, -26, -2), pt(-100, -8, -20), 7 * s, 18 * s))
    fluid = Union(_sector(Shell(head, p.joint_fluid * s, 1.3 * s), ((-4 * s, 0, 0), (1, 0, 0))),
                  Ellipsoid(pt(-6, 2, -r / s - 4), [12 * s, 14 * s, (2 + 2 * p.joint_fluid) * s]))
    paints = [
        Paint(limb, S.SKIN), Paint(Offset(limb, -2.0 * s), S.FAT), Paint(Intersection(muscles, inner), S.MUSCLE),
        Paint(Ellipsoid(pt(-165, 20, -95), pt(60, 55, 80)), S.LUNG, within=frozenset({S.MUSCLE, S.FAT})),
        Paint(humerus, S.HUMERUS, rim=(1.2, Signal.CORTEX)),
        Paint(glenoid, S.SCAPULA, rim=(1.2, Signal.CORTEX)),
        Paint(acromion, S.ACROMION, rim=(1.2, Signal.CORTEX)),
        Paint(clavicle, S.CLAVICLE, rim=(1.2, Signal.CORTEX)),
        Paint(ac_joint, S.AC_JOINT, within=SOFT | {S.CLAVICLE}),
        Paint(Intersection(Shell(head, 1.3 * s), Ellipsoid(pt(-14, 0, 8), [26 * s] * 3)), S.HUMERAL_CARTILAGE, within=SOFT),
        Paint(glenoid_cartilage, S.GLENOID_CARTILAGE, within=SOFT),
        Paint(labrum, S.LABRUM, within=SOFT),
        Paint(fluid, S.FLUID, within=SOFT),
        Paint(ssp, S.SUPRASPINATUS, within=SOFT), Paint(isp, S.INFRASPINATUS, within=SOFT),
        Paint(ssc, S.SUBSCAPULARIS, within=SOFT),
        Paint(Capsule(pt(-16, 2, 31), pt(-60, 10, 40), 3.5 * s, 6 * s), S.TENDON, within=frozenset({S.MUSCLE})),
        Paint(bursa, S.SASD_BURSA, within=SOFT),
        Paint(sheath, S.BICEPS_SHEATH, within=SOFT | {S.SUBSCAPULARIS}),
        Paint(biceps, S.BICEPS_LONG_HEAD, within=SOFT | {S.SUPRASPINATUS, S.SUBSCAPULARIS, S.BICEPS_SHEATH, S.FLUID}),
    ]
    bounds = (pt(-100, -90, -100), pt(90, 90, 90))
    parts = {"head": head, "ssp": ssp, "isp": isp, "ssc": ssc, "bursa": bursa, "sheath": sheath, "ac_joint": ac_joint,
             "labrum": labrum, "fluid": fluid}
    points = {"biceps": np.array(biceps_points[2:]), "ac_joint": pt(-16 - p.ac_gap / 2, -2, 39), "scale": np.full(3, s),
              "cuff_mid": np.full(1, r + (1.3 + CUFF_THICKNESS / 2) * s), "labrum": np.array(rim)}
    return AnatomyModel(paints, parts, points, bounds)
