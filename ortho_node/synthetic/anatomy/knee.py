"""Knee anatomy: the 11 segmented structures plus the soft tissues that make a believable knee MRI.

Canonical frame (mm): +x lateral, +y posterior, +z superior, origin at the centre of the joint line.
The leg segment (tibia, fibula, menisci, calf) is rotated about the condylar axis by the flexion angle.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ortho_node.synthetic.anatomy import AnatomyModel
from ortho_node.synthetic.scene import Paint
from ortho_node.synthetic.shapes import (
    Capsule, CWedge, Difference, Ellipsoid, HalfSpace, Intersection, LimbTube, Offset, Shape, Shell, Transformed,
    Union,
    rotation,
)
from ortho_node.synthetic.structures import SOFT_TISSUES as SOFT, Signal, Structure as S



@dataclasses.dataclass(frozen=True)
class KneeParams:
    """Anatomical variability of one knee (lengths in mm before ``scale``, angles in degrees)."""

    scale: float
    flexion: float
    tibial_slope: float
    condyle_jitter: tuple[float, float, float]
    patella_height: float
    cartilage: float
    meniscus_height: float
    limb_radius: float
    fat: float
    acl_angle: float
    # Changed by findings (patellar dislocation, effusion).
    patella_shift: float = 0.0
    patella_tilt: float = 0.0
    effusion: float = 1.0


def sample_params(rng: np.random.Generator) -> KneeParams:
    return KneeParams(
        scale=float(np.clip(rng.normal(1.0, 0.06), 0.86, 1.14)),
        flexion=float(rng.uniform(0.0, 15.0)),
        tibial_slope=float(rng.uniform(3.0, 9.0)),
        condyle_jitter=tuple(float(v) for v in rng.normal(1.0, 0.05, 3)),  # type: ignore[arg-type]
        patella_height=float(rng.normal(0.0, 4.0)),
        cartilage=float(rng.uniform(2.0, 3.0)),
        meniscus_height=float(rng.uniform(5.0, 7.0)),
        limb_radius=float(rng.uniform(50.0, 62.0)),
        fat=float(rng.uniform(4.0, 16.0)),
        acl_angle=float(rng.normal(0.0, 3.0)),
        effusion=float(rng.uniform(0.6, 1.4)),
    )


class _Frame:
    """Scales canonical points and moves leg-segment points and shapes with the flexion."""

    def __init__(self, p: KneeParams):
        self.s = p.scale
        self.pivot = np.array([0.0, 5.0, 24.0]) * p.scale
        self.flex = rotation((1, 0, 0), -p.flexion)  # flexion swings the leg posteriorly

    def pt(self, *v: float) -> np.ndarray:
        return np.array(v, dtype=np.float64) * self.s

    def leg_pt(self, *v: float) -> np.ndarray:
        return (self.pt(*v) - self.pivot) @ self.flex.T + self.pivot

    def leg(self, shape: Shape) -> Shape:
        """Any shape moved with the leg (costly: use the leaf helpers below where possible)."""
        return Transformed(shape, self.flex, self.pivot)

    def leg_capsule(self, a: tuple[float, ...], b: tuple[float, ...], ra: float, rb: float | None = None) -> Shape:
        return Capsule(self.leg_pt(*a), self.leg_pt(*b), ra * self.s, (rb or ra) * self.s)

    def leg_ellipsoid(self, c: tuple[float, ...], r: tuple[float, ...]) -> Shape:
        return Ellipsoid(self.leg_pt(*c), self.pt(*r), self.flex)


def _femur(f: _Frame, p: KneeParams) -> tuple[Shape, Shape, Shape]:
    jx, jy, jz = p.condyle_jitter
    condyles = Union(
        Ellipsoid(f.pt(-21, 6, 24), f.pt(14 * jx, 28 * jy, 22 * jz)),
        Ellipsoid(f.pt(21, 4, 24), f.pt(15 * jx, 26 * jy, 22 * jz)),
    )
    body = Union(
        Capsule(f.pt(0, 2, 45), f.pt(0, -2, 260), 14 * f.s, 13 * f.s),
        Ellipsoid(f.pt(0, 3, 38), f.pt(34, 24, 26)),
        condyles, blend=8 * f.s,
    )
    notch = Ellipsoid(f.pt(0, 18, 12), f.pt(9, 22, 16))
    groove = Capsule(f.pt(0, -25, 18), f.pt(0, -27, 62), 6 * f.s)
    femur = Difference(body, notch, groove)
    zone = Difference(
        Union(Ellipsoid(f.pt(-21, 6, 24), f.pt(11, 34, 28)), Ellipsoid(f.pt(21, 4, 24), f.pt(12, 32, 28)),
              Ellipsoid(f.pt(0, -20, 38), f.pt(26, 9, 22))),
        Ellipsoid(f.pt(0, 18, 14), f.pt(7, 24, 14)),
    )
    return femur, condyles, Intersection(Shell(femur, p.cartilage * f.s), zone)


def _tibia(f: _Frame, p: KneeParams) -> tuple[Shape, Shape]:
    slope = np.tan(np.deg2rad(p.tibial_slope))
    plateau = Intersection(f.leg_ellipsoid((0, 3, -30), (41, 25, 42)),
                           HalfSpace(f.leg_pt(0, 0, -3), f.flex @ np.array([0.0, slope, 1.0])))
    tibia = Union(
        plateau,
        f.leg_capsule((0, 2, -40), (0, 6, -100), 20, 15),
        f.leg_capsule((0, 6, -100), (0, 8, -260), 15, 13),
        f.leg_ellipsoid((-5, 2, -3), (4, 7, 5)), f.leg_ellipsoid((5, 0, -3), (4, 7, 5)),
        f.leg_ellipsoid((0, -20, -38), (13, 9, 16)), blend=8 * f.s,
    )
    zone = Union(f.leg_ellipsoid((-20, 2, -3), (15, 20, 6)), f.leg_ellipsoid((20, 2, -3), (14, 18, 6)))
    return tibia, Intersection(Shell(tibia, 0.8 * p.cartilage * f.s), zone)


def _menisci(f: _Frame, p: KneeParams) -> tuple[Shape, Shape]:
    tilt = rotation((1, 0, 0), p.tibial_slope)
    base = -3.0 * f.s + 0.8 * p.cartilage * f.s
    h = p.meniscus_height * f.s

    def place(wedge: Shape) -> Shape:
        return f.leg(Transformed(wedge, tilt, f.pt(0, 0, -3)))

    medial = CWedge(f.pt(-21, 3, 0)[:2], f.pt(16, 21, 0)[:2], base, h, (8 * f.s, 13 * f.s), 0.9, 0.0)
    lateral = CWedge(f.pt(21, 2, 0)[:2], f.pt(15, 16, 0)[:2], base, h * 0.95, (9 * f.s, 10 * f.s), 0.5, np.pi)
    return place(medial), place(lateral)


def _soft_tissue(f: _Frame, p: KneeParams) -> tuple[Shape, list[Paint]]:
    r = p.limb_radius * f.s
    # Flexion is ignored for the outline: the limb is wide and smooth, and a vertical tube is cheap.
    z = np.array([-100.0, -50.0, 0.0, 50.0, 100.0]) * f.s
    limb = LimbTube(z, [0, 0, 0, 0, 0], np.array([16, 12, 6, 6, 6]) * f.s,
                    r * np.array([0.92, 0.98, 1.0, 1.08, 1.16]), r * np.array([1.1, 1.05, 0.92, 1.0, 1.08]))
    inner = Offset(limb, -(p.fat + 2.0) * f.s)
    muscles = [
        Capsule(f.pt(0, -22, 75), f.pt(0, -18, 260), 38 * f.s),
        Ellipsoid(f.pt(-36, -4, 62), f.pt(22, 28, 38)),
        Capsule(f.pt(-30, 30, 40), f.pt(-20, 30, 260), 16 * f.s),
        Capsule(f.pt(32, 28, 32), f.pt(20, 30, 260), 15 * f.s),
        Capsule(f.pt(0, 38, 95), f.pt(0, 30, 260), 30 * f.s),
        f.leg_capsule((-20, 33, 22), (-14, 48, -120), 10, 22),
        f.leg_capsule((20, 31, 22), (14, 46, -120), 9, 19),
        f.leg_capsule((0, 30, -55), (0, 36, -260), 18, 28),
        f.leg_capsule((26, -10, -40), (22, -8, -260), 13),
        f.leg_ellipsoid((0, 27, -32), (28, 7, 13)),
    ]
    paints = [
        Paint(limb, S.SKIN),
        Paint(Offset(limb, -2.0 * f.s), S.FAT),
        Paint(Intersection(Union(*muscles), inner), S.MUSCLE),
        Paint(Capsule(f.pt(-3, 40, 260), f.pt(0, 36, -20), 3.2 * f.s), S.VESSEL),
        Paint(f.leg_capsule((0, 36, -20), (2, 30, -260), 3.0), S.VESSEL),
        Paint(Capsule(f.pt(5, 44, 260), f.pt(3, 40, -20), 4.0 * f.s), S.VESSEL),
    ]
    return limb, paints


def build(p: KneeParams) -> AnatomyModel:
    """The knee's paint operations (healthy anatomy, with finding-adjusted geometry) and named parts."""
    f = _Frame(p)
    limb, paints = _soft_tissue(f, p)
    femur, condyles, femoral_cartilage = _femur(f, p)
    tibia, tibial_cartilage = _tibia(f, p)
    fibula = Union(f.leg_ellipsoid((34, 17, -30), (10, 10, 12)), f.leg_capsule((35, 18, -35), (36, 20, -260), 8, 7),
                   blend=4 * f.s)
    pc = f.pt(2, -38, 42 + p.patella_height) + np.array([p.patella_shift, 0.0, 0.0]) * f.s
    patella = Ellipsoid(pc, f.pt(21, 10, 23), rotation((0, 0, 1), p.patella_tilt))
    patellar_cartilage = Intersection(Shell(patella, 3.0 * f.s), HalfSpace(pc + f.pt(0, 2, 0), (0, -1, 0)))
    medial_meniscus, lateral_meniscus = _menisci(f, p)
    acl_femur = f.pt(7, 19, 14)
    acl_tibia = f.leg_pt(1 + p.acl_angle * 0.3, -8, -2)
    acl = Capsule(acl_femur, acl_tibia, 4.0 * f.s, 5.0 * f.s)
    pcl_points = [f.pt(-7, 2, 18), f.pt(-5, 14, 17), f.leg_pt(-3, 22, 4), f.leg_pt(-1, 26, -12)]
    pcl = Union(*(Capsule(a, b, 5.0 * f.s) for a, b in zip(pcl_points, pcl_points[1:])))
    mcl_points = [f.pt(-41, 4, 40), f.pt(-41, 2, 0), f.leg_pt(-33, 0, -30), f.leg_pt(-25, -2, -62)]
    mcl = Union(*(Capsule(a, b, 1.4 * f.s, width_dir=(0, 1, 0), aspect=4.5)
                  for a, b in zip(mcl_points, mcl_points[1:])))
    lcl = Union(Capsule(f.pt(39, 6, 30), f.pt(40, 10, 0), 2.4 * f.s),
                Capsule(f.pt(40, 10, 0), f.leg_pt(40, 16, -22), 2.4 * f.s))
    patellar_tendon = Capsule(pc + f.pt(0, -1, -19), f.leg_pt(1, -28, -38), 2.3 * f.s, 2.6 * f.s, (1, 0, 0), 5.0)
    quad_tendon = Capsule(pc + f.pt(-1, 0, 18), f.pt(0, -30, 130), 3.0 * f.s, 4.5 * f.s, (1, 0, 0), 5.0)
    recess = Ellipsoid(f.pt(0, -27, 64), (24 * f.s, p.effusion * f.s, 26 * f.s))
    posterior_recess = Intersection(Shell(condyles, 0.5 * p.effusion * f.s, p.cartilage * f.s),
                                    HalfSpace(f.pt(0, 14, 0), (0, -1, 0)))
    paints += [
        Paint(Ellipsoid(f.pt(0, -22, 2), f.pt(20, 10, 16)), S.FAT, within=SOFT),  # Hoffa's fat pad
        Paint(Ellipsoid(f.pt(0, 34, 22), f.pt(22, 18, 40)), S.FAT, within=frozenset({S.MUSCLE})),
        Paint(femur, S.FEMUR, rim=(1.2, Signal.CORTEX)),
        Paint(tibia, S.TIBIA, rim=(1.2, Signal.CORTEX)),
        Paint(fibula, S.FIBULA, rim=(1.2, Signal.CORTEX)),
        Paint(patella, S.PATELLA, rim=(1.0, Signal.CORTEX)),
        # Diaphyseal cortex is several mm thick, unlike the thin epiphyseal shell.
        Paint(Union(Capsule(f.pt(0, 2, 85), f.pt(0, -2, 260), 5 * f.s), f.leg_capsule((0, 6, -80), (0, 8, -260), 5)),
              None, Signal.MARROW, within=frozenset({S.FEMUR, S.TIBIA})),
        Paint(recess, S.FLUID, within=SOFT),
        Paint(posterior_recess, S.FLUID, within=SOFT),
        Paint(femoral_cartilage, S.FEMORAL_CARTILAGE, within=SOFT),
        Paint(tibial_cartilage, S.TIBIAL_CARTILAGE, within=SOFT),
        Paint(patellar_cartilage, S.PATELLAR_CARTILAGE, within=SOFT),
        Paint(medial_meniscus, S.MEDIAL_MENISCUS, within=SOFT),
        Paint(lateral_meniscus, S.LATERAL_MENISCUS, within=SOFT),
        Paint(acl, S.ACL, within=SOFT),
        Paint(pcl, S.PCL, within=SOFT),
        Paint(mcl, S.MCL, within=SOFT),
        Paint(lcl, S.LCL, within=SOFT),
        Paint(patellar_tendon, S.PATELLAR_TENDON, within=SOFT),
        Paint(quad_tendon, S.QUADRICEPS_TENDON, within=SOFT),
    ]
    lo, hi = limb.bounds()
    bounds = (lo - 2.0, hi + 2.0)
    parts = {"femur": femur, "tibia": tibia, "patella": patella, "acl": acl, "pcl": pcl, "mcl": mcl, "lcl": lcl,
             "medial_meniscus": medial_meniscus, "lateral_meniscus": lateral_meniscus, "recess": recess,
             "posterior_recess": posterior_recess, "patellar_tendon": patellar_tendon, "quad_tendon": quad_tendon}
    points = {"acl": np.array([acl_femur, acl_tibia]), "patella": pc, "pcl": np.array(pcl_points),
              "mcl": np.array(mcl_points), "lcl": np.array([f.pt(39, 6, 30), f.pt(40, 10, 0), f.leg_pt(40, 16, -22)]),
              "medial_meniscus_posterior": f.leg_pt(-21, 19, 0), "lateral_meniscus_posterior": f.leg_pt(21, 13, 0),
              "medial_meniscus_anterior": f.leg_pt(-21, -13, 0), "lateral_meniscus_anterior": f.leg_pt(21, -10, 0),
              "lateral_condyle": f.pt(30, -8, 30), "centre": f.pt(0, 0, 0), "scale": np.array([f.s] * 3)}
    return AnatomyModel(paints, parts, points, bounds)
