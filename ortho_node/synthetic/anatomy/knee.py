"""Knee anatomy: the 11 segmented structures plus the soft tissues that make a believable knee MRI.

Canonical frame (mm): +x lateral, +y posterior, +z superior, origin at the centre of the joint line.
The leg segment (tibia, fibula, menisci, calf) is rotated about the posterior condylar axis by the flexion
angle; the patella rides in the trochlear groove on a patellar tendon of fixed length. Bones, cartilage and
menisci: ``knee_bones``; per-seed variability: ``sample_params``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ortho_node.synthetic.anatomy import AnatomyModel
from ortho_node.synthetic.anatomy import knee_bones as kb
from ortho_node.synthetic.scene import Paint, Partition, Septa
from ortho_node.synthetic.shapes import (
    Capsule, Difference, Ellipsoid, HalfSpace, Intersection, LimbTube, Offset, Shape, Shell, Union, rotation,
)
from ortho_node.synthetic.structures import MUSCLES, SOFT_TISSUES as SOFT, Signal, Structure as S

#: Canonical point every field of view is centred near (``protocol.PROTOCOLS``); the scene is cut to a box
#: about it large enough for the widest randomised field of view.
_VIEW_CENTRE = np.array([0.0, -8.0, 8.0])
_VIEW_HALF = np.array([100.0, 100.0, 104.0])


@dataclasses.dataclass(frozen=True)
class KneeParams:
    """Anatomical variability of one knee (lengths in mm before ``scale`` and the axis factors, angles in
    degrees; cartilage thicknesses in mm as they are)."""

    scale: float  # overall size: 0.75 (a child) to 1.15 (a tall adult)
    width: float  # medio-lateral, antero-posterior and cranio-caudal factors (bone proportions)
    depth: float
    length: float
    flexion: float
    tibial_slope: float
    plateau_width: float
    spines: float
    tuberosity: float
    fibula_drop: float
    condyle_width: tuple[float, float]  # medial, lateral
    condyle_radius: tuple[float, float]  # posterior condylar radius (mm), medial, lateral
    notch_width: float
    notch_roof: float  # Blumensaat's line, degrees from the horizontal
    notch_x: float
    trochlea_depth: float
    insall_salvati: float  # patellar tendon length / patellar length
    patella_size: float
    patella_ridge: float  # median ridge offset medially, fraction of the half width (Wiberg types)
    patella_medial_facet: float  # angle of the medial facet (degrees)
    femoral_cartilage: float
    tibial_cartilage: float
    patellar_cartilage: float
    meniscus_size: float
    medial_meniscus_width: tuple[float, float]  # anterior, posterior horn
    lateral_meniscus_width: tuple[float, float]
    medial_meniscus_height: float
    lateral_meniscus_height: float
    medial_meniscus_gap: float  # opening of the C (radians)
    lateral_meniscus_gap: float
    limb_bulk: float
    muscle_reach: float  # mm from a muscle's core within which its compartment fills the limb's fascia
    fat: float
    acl_angle: float
    physes_open: bool
    # Changed by findings (patellar dislocation, effusion).
    patella_shift: float = 0.0
    patella_tilt: float = 0.0
    effusion: float = 1.0


def sample_params(rng: np.random.Generator) -> KneeParams:
    """One knee: children (open physes) to large adults, extension to 30 degrees of flexion, most knees in the
    slight flexion of a knee coil (median 7.5 degrees, 71% under 15: the square of a uniform draw, one draw as
    before, so every other parameter of a seed stays as it was)."""
    child = rng.random() < 0.12
    scale = float(rng.uniform(0.75, 0.9)) if child else float(np.clip(rng.normal(1.0, 0.06), 0.86, 1.15))
    n = lambda sd, lo, hi: float(np.clip(rng.normal(1.0, sd), lo, hi))  # noqa: E731
    return KneeParams(
        scale=scale, width=n(0.03, 0.93, 1.07), depth=n(0.03, 0.93, 1.07), length=n(0.04, 0.9, 1.1),
        flexion=30.0 * float(rng.uniform(0.0, 1.0)) ** 2, tibial_slope=float(rng.uniform(3.0, 10.0)),
        plateau_width=n(0.03, 0.92, 1.08), spines=n(0.1, 0.75, 1.25), tuberosity=n(0.15, 0.7, 1.3),
        fibula_drop=float(rng.uniform(-4.0, 2.0)),
        condyle_width=(n(0.05, 0.88, 1.12), n(0.05, 0.88, 1.12)),
        condyle_radius=(float(rng.uniform(19.0, 23.0)), float(rng.uniform(17.5, 21.5))),
        notch_width=float(rng.uniform(17.0, 23.0)), notch_roof=float(rng.uniform(38.0, 52.0)),
        notch_x=float(rng.normal(0.5, 0.8)), trochlea_depth=n(0.12, 0.7, 1.3),
        insall_salvati=float(np.clip(rng.normal(1.0, 0.13), 0.72, 1.35)), patella_size=n(0.06, 0.85, 1.15),
        patella_ridge=float(rng.uniform(0.05, 0.3)), patella_medial_facet=float(rng.uniform(28.0, 42.0)),
        femoral_cartilage=float(rng.uniform(1.8, 3.0)), tibial_cartilage=float(rng.uniform(1.6, 2.8)),
        patellar_cartilage=float(rng.uniform(2.4, 4.0)), meniscus_size=n(0.05, 0.88, 1.12),
        medial_meniscus_width=(float(rng.uniform(7.0, 10.0)), float(rng.uniform(12.0, 15.0))),
        lateral_meniscus_width=(float(rng.uniform(9.5, 12.0)), float(rng.uniform(10.0, 12.5))),
        medial_meniscus_height=float(rng.uniform(5.0, 7.0)), lateral_meniscus_height=float(rng.uniform(5.0, 7.0)),
        medial_meniscus_gap=float(rng.uniform(1.3, 1.9)), lateral_meniscus_gap=float(rng.uniform(0.45, 0.85)),
        limb_bulk=n(0.08, 0.8, 1.2), fat=float(4.0 + 16.0 * rng.beta(2.0, 3.5)), acl_angle=float(rng.normal(0.0, 3.0)),
        physes_open=bool(child and rng.random() < 0.8), effusion=float(rng.uniform(0.6, 1.4)),
        muscle_reach=float(rng.uniform(15.0, 40.0)),
    )


class _Frame:
    """Scales canonical points; moves leg-segment points and directions with the flexion."""

    def __init__(self, p: KneeParams):
        self.s = p.scale
        self.k = p.scale * np.array([p.width, p.depth, p.length])
        self.femur_base = p.femoral_cartilage + kb.JOINT_GAP
        self.tibia_top = -(p.tibial_cartilage + kb.JOINT_GAP)
        self.condyle_radius = p.condyle_radius
        radius = 0.5 * sum(p.condyle_radius)
        # The leg rolls on the posterior condyles: it turns about their centres.
        self.pivot = self.pt(0, 8.5, 0) + np.array([0.0, 0.0, self.femur_base + radius * self.k[2]])
        self.flex = rotation((1, 0, 0), p.flexion)  # +x axis: the leg swings posteriorly (+y)

    def pt(self, *v: float) -> np.ndarray:
        return np.array(v, dtype=np.float64) * self.k

    def r(self, *v: float) -> np.ndarray:
        return np.array(v, dtype=np.float64) * self.k

    def leg_pt(self, *v: float) -> np.ndarray:
        return self.flex @ (self.pt(*v) - self.pivot) + self.pivot

    def leg_capsule(self, a: tuple[float, ...], b: tuple[float, ...], ra: float, rb: float | None = None) -> Shape:
        return Capsule(self.leg_pt(*a), self.leg_pt(*b), ra * self.s, (rb or ra) * self.s)


def _limb(f: _Frame, p: KneeParams, pat: kb.Patella) -> tuple[Shape, Shape]:
    """Skin outline and the muscle envelope inside the subcutaneous fat: an elliptic tube whose thigh part
    stays put and whose leg part follows the flexion, with the prepatellar bulge."""
    b, fat = p.limb_bulk, p.fat
    # z, anterior y, posterior y, half width of the muscle envelope (bulk 1, before the fat).
    thigh = [(10, -40, 52, 45), (40, -46, 55, 47), (80, -48, 62, 52), (140, -54, 66, 60)]
    # The calf behind the tibia: popliteus, soleus and both gastrocnemius heads, 50-60 mm of muscle behind the
    # tibial cortex of an average adult below the joint line.
    leg = [(-150, -22, 72, 38), (-110, -24, 82, 44), (-60, -24, 80, 46), (-20, -28, 62, 44)]
    knots = []
    cos = np.cos(np.deg2rad(p.flexion))
    for rows, moved in ((leg, True), (thigh, False)):
        for z, a, q, w in rows:
            a, q = a * f.k[1], q * f.k[1] * b
            centre = np.array([0.0, 0.5 * (a + q), z * f.k[2]])
            if moved:
                centre = f.flex @ (centre - f.pivot) + f.pivot
            ry = 0.5 * (q - a) / (cos if moved else 1.0)
            knots.append((centre[2], centre[1], ry, w * f.k[0] * b))
    knots.sort()
    z, cy, ry, rx = (np.array(v) for v in zip(*knots))
    envelope = LimbTube(z, np.zeros_like(z), cy, rx, ry)
    prepatellar = Ellipsoid(pat.centre, pat.half * np.array([1.2, 1.0, 1.15]) + np.array([0, 3.0, 0]) * f.s)
    skin = Union(Offset(envelope, fat + 2.0), Offset(prepatellar, 2.0 + 0.3 * fat), blend=16.0 * f.s)
    return skin, envelope


def _muscles(f: _Frame) -> list[tuple[S, Shape]]:
    lc = f.leg_capsule
    return [
        (S.VASTUS_INTERMEDIUS, Capsule(f.pt(0, -30, 84), f.pt(0, -26, 260), 25 * f.s)),  # and rectus femoris
        (S.VASTUS_MEDIALIS, Ellipsoid(f.pt(-30, -14, 72), f.r(22, 20, 36))),  # obliquus reaches the patella
        (S.VASTUS_LATERALIS, Ellipsoid(f.pt(33, -6, 108), f.r(20, 24, 52))),
        (S.SEMIMEMBRANOSUS, Capsule(f.pt(-31, 33, 26), f.pt(-22, 36, 260), 9 * f.s, 17 * f.s)),
        (S.SEMITENDINOSUS, Capsule(f.pt(-20, 48, 80), f.pt(-16, 50, 260), 9 * f.s)),
        (S.SARTORIUS, Capsule(f.pt(-44, 20, 30), f.pt(-38, 0, 260), 9 * f.s)),
        (S.BICEPS_FEMORIS, Capsule(f.pt(34, 31, 34), f.pt(22, 36, 260), 10 * f.s, 17 * f.s)),
        (S.GASTROCNEMIUS_MEDIAL, Capsule(f.pt(-21, 31, 44), f.leg_pt(-18, 58, -110), 11 * f.s, 24 * f.s)),
        (S.GASTROCNEMIUS_LATERAL, Capsule(f.pt(21, 29, 40), f.leg_pt(16, 55, -110), 10 * f.s, 20 * f.s)),
        (S.SOLEUS, lc((0, 38, -55), (0, 42, -260), 20, 28)),
        (S.TIBIALIS_ANTERIOR, lc((22, -10, -35), (18, -8, -260), 12)),  # and the long extensors
        (S.PERONEALS, lc((40, 14, -45), (34, 16, -260), 9)),
        (S.POPLITEUS, Ellipsoid(f.leg_pt(-3, 27, -32), f.r(24, 6, 11), f.flex @ rotation((0, 1, 0), -28))),
    ]


def _tendons(f: _Frame, p: KneeParams) -> list[Shape]:
    return [
        Capsule(f.pt(-30, 32, 34), f.leg_pt(-30, 22, -14), 3.0 * f.s),  # semimembranosus
        Capsule(f.pt(-38, 26, 30), f.leg_pt(-27, -8, -50), 2.2 * f.s),  # pes anserinus
        Capsule(f.pt(-33, 34, 40), f.leg_pt(-26, -6, -55), 2.0 * f.s),
        Capsule(f.pt(35, 26, 32), f.leg_pt(35, 22, -18), 3.4 * f.s),  # biceps femoris to the fibular head
        Capsule(f.pt(46, 2, 130), f.pt(44, -2, 20), 1.5 * f.s, width_dir=(0, 1, 0), aspect=6.0),  # iliotibial band
        Capsule(f.pt(44, -2, 20), f.leg_pt(31, -14, -14), 1.5 * f.s, width_dir=(0, 1, 0), aspect=5.0),
    ]


def _vessels(f: _Frame) -> list[Paint]:
    ops = []
    for x, y, r, label, signal in ((-2, 34, 3.0, S.VESSEL, None), (3, 40, 4.2, S.VESSEL, None),
                                   (4, 48, 2.4, S.TENDON, Signal.MUSCLE)):  # artery, vein, tibial nerve
        knee = f.pt(x, y, 12)
        path = Union(Capsule(f.pt(x - 4, y - 2, 160), knee, r * f.s), Capsule(knee, f.leg_pt(x, y, -70), r * f.s))
        ops.append(Paint(path, label, signal, within=SOFT))
    return ops


def _ligaments(f: _Frame, p: KneeParams, fem: kb.Femur) -> dict[str, np.ndarray]:
    jz, jt, h = f.femur_base, f.tibia_top, p.notch_width / 2
    z = lambda v: np.array([0.0, 0.0, v])  # noqa: E731
    tz = lambda v: f.flex @ np.array([0.0, 0.0, v])  # noqa: E731
    return {
        # ACL: posterior lateral notch wall -> anterior intercondylar area, along Blumensaat's line.
        "acl": np.array([f.pt(p.notch_x + h - 2.5, 17, 14) + z(jz), f.leg_pt(1 + p.acl_angle * 0.3, -8, 1) + tz(jt)]),
        # PCL: anterior medial notch wall -> back of the tibia below the plateau, bowed.
        "pcl": np.array([f.pt(p.notch_x - h + 3, 2, 17) + z(jz), f.pt(-4, 15, 16) + z(jz),
                         f.leg_pt(-3, 24, 3) + tz(jt), f.leg_pt(-1, 28, -12) + tz(jt)]),
        "mcl": np.array([f.pt(-41, 4, 40), f.pt(-41.5, 2, 6), f.leg_pt(-40.5, 1, -10),
                         f.leg_pt(-33, -2, -40), f.leg_pt(-26, -4, -62)]),
        "lcl": np.array([f.pt(41, 6, 28), f.pt(42, 10, 2), f.leg_pt(36.5 * p.plateau_width, 21, -14 + p.fibula_drop)]),
    }


def build(p: KneeParams) -> AnatomyModel:
    """The knee's paint operations (healthy anatomy, with finding-adjusted geometry) and named parts."""
    f = _Frame(p)
    fem, tib = kb.femur(f, p), kb.tibia(f, p)
    fib = kb.fibula(f, p)
    # The proximal tibiofibular joint: the tibia's posterolateral facet fits the fibular head.
    tib = dataclasses.replace(tib, bone=Difference(tib.bone, Offset(fib, 0.8)))
    pat = kb.patella(f, p, fem, tib)
    # Soft tissues around the patella are shaped on its normal seat, so a dislocation moves only the patella
    # and its tendons.
    seat = pat if p.patella_shift == p.patella_tilt == 0.0 else kb.patella(
        f, dataclasses.replace(p, patella_shift=0.0, patella_tilt=0.0), fem, tib)
    medial_meniscus, lateral_meniscus, meniscus_points = kb.menisci(f, p, tib)
    skin, envelope = _limb(f, p, seat)
    lines = _ligaments(f, p, fem)
    acl = Capsule(*lines["acl"], 4.0 * f.s, 5.0 * f.s)
    pcl = Union(*(Capsule(a, b, 5.0 * f.s) for a, b in zip(lines["pcl"], lines["pcl"][1:])))
    mcl = Union(*(Capsule(a, b, 1.4 * f.s, width_dir=(0, 1, 0), aspect=4.5)
                  for a, b in zip(lines["mcl"], lines["mcl"][1:])))
    lcl = Union(*(Capsule(a, b, 2.4 * f.s) for a, b in zip(lines["lcl"], lines["lcl"][1:])))
    patellar_tendon, quad_tendon = _tendons_of(f, pat, tib)
    # Suprapatellar recess: between the quadriceps tendon and the prefemoral fat; effusion distends it.
    recess_z = seat.base[2] + 12.0 * f.s
    recess_y = float(kb._front_profile(fem.bone, fem.groove_x, np.array([recess_z]))[0]) - 6.0 * f.s
    recess = Ellipsoid((fem.groove_x, recess_y, recess_z), (24 * f.s, p.effusion * f.s, 24 * f.s))
    posterior_recess = Intersection(Shell(fem.condyles, 0.5 * p.effusion * f.s, p.femoral_cartilage),
                                    HalfSpace(f.pt(0, 14, 0), (0, -1, 0)))
    hoffa_centre = 0.5 * (seat.apex + tib.plateau_centre + f.flex @ np.array([0, -18.0, 4.0]) * f.s)
    hoffa = Ellipsoid(hoffa_centre + np.array([0, 3.0, 0]) * f.s, f.r(19, 10, 14))
    # The cortex thickens gradually from the metaphysis (a thin shell) to the diaphysis (about 4 mm).
    shaft_marrow = []
    for a, m, b, r in ((f.pt(0, -9, 80), f.pt(0, -8, 120), f.pt(0, -7, 260), 13.5),
                       (f.leg_pt(0, 7, -75), f.leg_pt(0, 7.5, -115), f.leg_pt(0, 8, -260), 14.0)):
        shaft_marrow += [Paint(Capsule(a, b, r * f.s), None, Signal.CORTEX, within=frozenset({S.FEMUR, S.TIBIA})),
                         Paint(Union(Capsule(a, m, (r + 1.0) * f.s, (r - 4.0) * f.s), Capsule(m, b, (r - 4.0) * f.s)),
                               None, Signal.MARROW, within=frozenset({S.FEMUR, S.TIBIA}))]
    paints = [
        Paint(skin, S.FAT, rim=(2.0, Signal.SKIN, S.SKIN)),
        Partition(envelope, tuple(_muscles(f)), p.muscle_reach * f.s, within=frozenset({S.FAT})),
        Septa(MUSCLES, S.FAT),  # intermuscular fat: on most contrasts the lines that tell muscles from bone
        Paint(Ellipsoid(f.pt(0, 44, 24), f.r(18, 16, 46)), S.FAT, within=MUSCLES),  # popliteal fossa
        Paint(Intersection(Union(*_tendons(f, p)), Offset(skin, -1.0)), S.TENDON, within=SOFT),
        *_vessels(f),
        Paint(hoffa, S.FAT, within=SOFT),
        Paint(fem.bone, S.FEMUR, rim=(1.2, Signal.CORTEX)),
        Paint(tib.bone, S.TIBIA, rim=(1.2, Signal.CORTEX)),
        Paint(fib, S.FIBULA, rim=(1.2, Signal.CORTEX)),
        Paint(pat.bone, S.PATELLA, rim=(1.0, Signal.CORTEX)),
        *shaft_marrow,
        *(_physes(f, p, fem, tib) if p.physes_open else []),
        Paint(Intersection(Shell(fem.bone, p.femoral_cartilage + 2 * kb.JOINT_GAP), fem.articular), S.FLUID,
              within=SOFT),
        Paint(recess, S.FLUID, within=SOFT),
        Paint(posterior_recess, S.FLUID, within=SOFT),
        Paint(fem.cartilage, S.FEMORAL_CARTILAGE, within=SOFT),
        Paint(tib.cartilage, S.TIBIAL_CARTILAGE, within=SOFT),
        Paint(pat.cartilage, S.PATELLAR_CARTILAGE, within=SOFT),
        Paint(medial_meniscus, S.MEDIAL_MENISCUS, within=SOFT),
        Paint(lateral_meniscus, S.LATERAL_MENISCUS, within=SOFT),
        Paint(acl, S.ACL, within=SOFT),
        Paint(pcl, S.PCL, within=SOFT),
        Paint(mcl, S.MCL, within=SOFT),
        Paint(lcl, S.LCL, within=SOFT),
        Paint(patellar_tendon, S.PATELLAR_TENDON, within=SOFT),
        Paint(quad_tendon, S.QUADRICEPS_TENDON, within=SOFT),
    ]
    lo, hi = skin.bounds()
    bounds = (np.maximum(lo - 2.0, _VIEW_CENTRE - _VIEW_HALF), np.minimum(hi + 2.0, _VIEW_CENTRE + _VIEW_HALF))
    parts = {"femur": fem.bone, "tibia": tib.bone, "fibula": fib, "patella": pat.bone, "acl": acl, "pcl": pcl,
             "mcl": mcl, "lcl": lcl, "medial_meniscus": medial_meniscus, "lateral_meniscus": lateral_meniscus,
             "recess": recess, "posterior_recess": posterior_recess, "patellar_tendon": patellar_tendon,
             "quad_tendon": quad_tendon, "femoral_cartilage": fem.cartilage, "tibial_cartilage": tib.cartilage,
             "patellar_cartilage": pat.cartilage, "notch": fem.notch,
             "patella_seat": Union(seat.bone, *_tendons_of(f, seat, tib))}
    points = {**lines, **meniscus_points, "patella": pat.centre, "patella_axes": pat.axes, "patella_half": pat.half,
              "patella_apex": pat.apex, "tuberosity": tib.tuberosity, "plateau_centre": tib.plateau_centre,
              "leg_axes": tib.plateau_axes, "trochlear_groove_x": np.array([fem.groove_x]),
              "lateral_condyle": f.pt(30, -8, 26) + np.array([0, 0, f.femur_base]),
              "lateral_plateau_posterior": tib.plateau_centre + tib.plateau_axes @ (f.r(22, 16, 0) - [0, 0, 9.0]),
              "centre": np.zeros(3), "scale": np.array([f.s] * 3)}
    return AnatomyModel(paints, parts, points, bounds)


def _tendons_of(f: _Frame, pat: kb.Patella, tib: kb.Tibia) -> tuple[Shape, Shape]:
    """Patellar tendon (inferior pole to tuberosity) and quadriceps tendon (superior pole upwards): flat bands."""
    patellar = Capsule(pat.apex, tib.tuberosity, 2.4 * f.s, 2.8 * f.s, (1, 0, 0), 5.0)
    path = [pat.base, pat.base + np.array([0.0, 4.0, 30.0]) * f.s, f.pt(0, -34, 160)]
    quad = Union(*(Capsule(a, b, 3.0 * f.s, 4.0 * f.s, (1, 0, 0), 5.0) for a, b in zip(path, path[1:])))
    return patellar, quad


def _physes(f: _Frame, p: KneeParams, fem: kb.Femur, tib: kb.Tibia) -> list[Paint]:
    """Open growth plates of a child: thin cartilage-signal discs across the distal femur, the proximal tibia
    (parallel to the plateau) and the fibular head; the bone keeps its label."""
    femoral_z = f.femur_base + 24.0 * f.k[2]
    dome = Ellipsoid((0.0, 0.0, femoral_z - 300.0), (300.0, 300.0, 300.0))
    ops = [Paint(Intersection(Shell(dome, 1.6 * f.s), Ellipsoid((0.0, 0.0, femoral_z), f.r(60, 60, 20))), None,
                 Signal.CARTILAGE, within=frozenset({S.FEMUR}))]
    n = tib.plateau_axes[:, 2]
    for depth, bone in ((17.0, S.TIBIA), (27.0 - p.fibula_drop, S.FIBULA)):
        c = tib.plateau_centre - n * depth * f.k[2]
        slab = Intersection(HalfSpace(c, n), HalfSpace(c - n * 1.6 * f.s, -n), Ellipsoid(c, f.r(60, 60, 20)))
        ops.append(Paint(slab, None, Signal.CARTILAGE, within=frozenset({bone})))
    return ops
