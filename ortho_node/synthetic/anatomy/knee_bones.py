"""Knee bones, articular cartilage and menisci as signed-distance shapes (the frame and parameters: ``knee``).

Canonical frame (mm): +x lateral, +y posterior, +z superior, origin at the centre of the joint line (where the
femoral and tibial cartilage surfaces meet). The femur is fixed; the leg (tibia, fibula, menisci, tibial
cartilage) is rotated by the flexion about the axis through the posterior femoral condyles, so the plateau
rolls on them; the patella slides in the trochlear groove, held by a patellar tendon of fixed length.
Typical adult sizes at scale 1: bicondylar width ~80 mm, lateral condyle AP ~62 mm, tibial plateau ~76 mm wide,
patella ~42 x 44 x 22 mm (height x width x thickness), menisci 5-7 mm tall at the rim.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from ortho_node.synthetic.shapes import (
    Capsule, CWedge, Difference, Ellipsoid, HalfSpace, Intersection, Offset, Shape, Shell, SuperEllipsoid,
    Transformed, Union, rotation,
)

if TYPE_CHECKING:
    from ortho_node.synthetic.anatomy.knee import KneeParams, _Frame

#: Gap (mm) between the facing cartilage surfaces of a joint: a film of joint fluid.
JOINT_GAP = 0.3


@dataclasses.dataclass(frozen=True)
class Femur:
    bone: Shape
    condyles: Shape  # the two posterior condyle "wheels" (posterior recess, flexion axis)
    notch: Shape
    cartilage: Shape
    articular: Shape  # where cartilage covers the bone (joint fluid film follows it)
    groove_x: float  # x (mm) of the trochlear sulcus


def _z(f: _Frame, v: float) -> np.ndarray:
    return np.array([0.0, 0.0, v])


def femur(f: _Frame, p: KneeParams) -> Femur:
    jz = f.femur_base  # bone bottom: cartilage + half the joint gap above the joint line
    wm, wl = 14.0 * p.condyle_width[0], 15.0 * p.condyle_width[1]
    xm, xl = -(p.notch_width / 2 + wm), p.notch_width / 2 + wl  # condyle centres: the notch between them
    rm, rl = f.condyle_radius
    cond = []
    for cx, w, r, yc in ((xm, wm, rm, 9.0), (xl, wl, rl, 8.0)):
        wheel = Ellipsoid(f.pt(cx, yc, 0) + _z(f, jz + r * f.k[2]), f.r(w, r, r))
        distal = Ellipsoid(f.pt(cx, -6, 0) + _z(f, jz + 19 * f.k[2]), f.r(w + 0.5, 24, 19))
        # The posterior condyle climbs to the metaphysis (the popliteal surface) above the rolling circle.
        upper = Ellipsoid(f.pt(cx * 0.9, yc - 3, 0) + _z(f, jz + (r + 14) * f.k[2]), f.r(w, 0.8 * r, 18))
        cond.append((wheel, distal, upper))
    t = p.trochlea_depth
    facets = [Ellipsoid(f.pt(15, -12, 31) + _z(f, jz), f.r(17, 17 * t, 28)),  # lateral facet: higher, longer
              Ellipsoid(f.pt(-9, -10, 28) + _z(f, jz), f.r(16, 14.5 * t, 25))]
    epicondyles = [Ellipsoid(f.pt(xm - wm + 3, 4, 27) + _z(f, jz), f.r(7, 12, 13)),
                   Ellipsoid(f.pt(xl + wl - 3, 5, 25) + _z(f, jz), f.r(6, 11, 12))]
    metaphysis = SuperEllipsoid(f.pt(0, -3, 44) + _z(f, jz), f.r(32, 21, 34), 2.4)
    shaft = Capsule(f.pt(0, -9, 70), f.pt(0, -7, 260), 13.5 * f.s)
    body = Union(shaft, metaphysis, *(s for pair in cond for s in pair), *facets, *epicondyles, blend=6 * f.s)
    # Intercondylar notch: a box-like tunnel open posteriorly and distally, its roof Blumensaat's line.
    a = np.deg2rad(p.notch_roof)
    roof = HalfSpace(f.pt(0, -9, 0) + _z(f, jz), (0.0, -np.sin(a) * f.k[2], np.cos(a) * f.k[1]))
    notch = Intersection(SuperEllipsoid(f.pt(p.notch_x, 16, 4) + _z(f, jz), f.r(p.notch_width / 2, 28, 30), 2.8),
                         roof)
    bone = Difference(body, notch, blend=1.5 * f.s)
    zone = Difference(Union(Ellipsoid(f.pt(xm, 0, 22) + _z(f, jz), f.r(wm - 1, 33, 29)),
                            Ellipsoid(f.pt(xl, 0, 22) + _z(f, jz), f.r(wl - 1, 32, 29)),
                            Ellipsoid(f.pt(3, -16, 32) + _z(f, jz), f.r(25, 16, 24))),
                      Offset(notch, 1.0))
    taper = (f.pt(0, -3, 22) + _z(f, jz), f.r(45, 45, 40), 0.5)
    cartilage = Intersection(Shell(bone, p.femoral_cartilage, taper=taper), zone)
    return Femur(bone, Union(cond[0][0], cond[1][0]), notch, cartilage, zone, 2.0 * f.k[0])


@dataclasses.dataclass(frozen=True)
class Tibia:
    bone: Shape
    cartilage: Shape
    plateau_axes: np.ndarray  # columns: the plateau's x, y and normal in the canonical frame
    plateau_centre: np.ndarray
    tuberosity: np.ndarray  # patellar tendon insertion


def tibia(f: _Frame, p: KneeParams) -> Tibia:
    jt = f.tibia_top
    tilt = rotation((1, 0, 0), -p.tibial_slope)  # posterior slope: the plateau normal leans posteriorly
    axes = f.flex @ tilt
    top = f.leg_pt(0, 0, 0) + f.flex @ _z(f, jt)
    plateau = HalfSpace(top, axes[:, 2])
    pw = p.plateau_width

    def leg(x: float, y: float, z: float) -> np.ndarray:  # leg points given relative to the plateau top
        return f.leg_pt(x * pw, y, z) + f.flex @ _z(f, jt)

    block = SuperEllipsoid(leg(0, 3, -4), f.r(38 * pw, 24, 22), 2.5, f.flex)
    metaphysis = Capsule(leg(0, 5, -14), leg(0, 7, -85), 27 * f.s, 14.5 * f.s)
    shaft = Capsule(leg(0, 7, -85), leg(0, 8, -260), 14.5 * f.s, 12 * f.s)
    tuberosity = Ellipsoid(leg(5, -19, -30), f.r(11, 8 * p.tuberosity, 15), f.flex)
    body = Union(block, metaphysis, shaft, tuberosity, blend=6 * f.s)
    # The posterior intercondylar area is a notch in the back of the plateau (PCL facet).
    body = Intersection(Difference(body, Ellipsoid(leg(0, 29, -6), f.r(9, 7, 14), f.flex), blend=2 * f.s), plateau)
    spines = [Ellipsoid(leg(-4.5, 3, 0), f.r(4.2, 8, 7.5) * p.spines, axes),
              Ellipsoid(leg(4.5, 1, 0), f.r(4.2, 8, 6.5) * p.spines, axes)]
    bone = Union(body, *spines, blend=4.0 * f.s)
    tc = p.tibial_cartilage
    parts = []
    for x, y, r, thick in ((-21, 3, (12.5, 16.5), tc), (21, 2, (12, 14), min(1.15 * tc, 3.6))):
        zone = Ellipsoid(leg(x, y, 0), (r[0] * f.k[0] * pw, r[1] * f.k[1], 4.0 + thick), axes)
        taper = (leg(x, y, 0), (r[0] * f.k[0] * pw, r[1] * f.k[1], 8.0), 0.45)
        parts.append(Intersection(Shell(bone, thick, taper=taper), zone))
    return Tibia(bone, Union(*parts), axes, top, leg(5, -25, -27))


def fibula(f: _Frame, p: KneeParams) -> Shape:
    jt = f.tibia_top

    def leg(x: float, y: float, z: float) -> np.ndarray:
        return f.leg_pt(x * p.plateau_width, y, z) + f.flex @ _z(f, jt + p.fibula_drop)

    return Union(Ellipsoid(leg(32, 20, -20), f.r(9.5, 9.5, 11), f.flex),
                 Ellipsoid(leg(34, 23, -14), f.r(4, 4, 5), f.flex),  # styloid (LCL and biceps insertion)
                 Capsule(leg(32, 21, -30), leg(34, 23, -260), 7.5 * f.s, 6.5 * f.s), blend=4 * f.s)


def menisci(f: _Frame, p: KneeParams, t: Tibia) -> tuple[Shape, Shape, dict[str, np.ndarray]]:
    """Medial (open C, wider posterior horn) and lateral (nearly circular, even width) menisci: wedges
    standing on the plateau rim, ``height`` tall at the capsule and thinning to the free edge."""
    base = 0.3  # mm above the plateau bone
    pw, points = p.plateau_width, {}
    shapes = []
    for side, cx, cy, radii, widths, height, gap, gap_dir in (
            ("medial", -22.0, 3.0, (14.5, 22.0), p.medial_meniscus_width, p.medial_meniscus_height,
             p.medial_meniscus_gap, 0.0),
            ("lateral", 22.0, 2.0, (15.0, 16.5), p.lateral_meniscus_width, p.lateral_meniscus_height,
             p.lateral_meniscus_gap, np.pi)):
        rx, ry = radii[0] * f.k[0] * pw * p.meniscus_size, radii[1] * f.k[1] * p.meniscus_size
        w = (widths[0] * f.s, widths[1] * f.s)
        h = height * f.s
        c = (cx * f.k[0] * pw, cy * f.k[1])
        wedge = CWedge(c, (rx, ry), base, h, w, gap, gap_dir)
        shapes.append(Transformed(wedge, t.plateau_axes, np.zeros(3), t.plateau_centre))
        mean_r = 0.5 * (rx + ry)
        for horn, sign, width in (("anterior", -1.0, w[0]), ("posterior", 1.0, w[1])):
            local = np.array([c[0], c[1] + sign * ry * (1.0 - width / (2.0 * mean_r)), base + 0.25 * h])
            points[f"{side}_meniscus_{horn}"] = t.plateau_centre + t.plateau_axes @ local
    return shapes[0], shapes[1], points


@dataclasses.dataclass(frozen=True)
class Patella:
    bone: Shape
    cartilage: Shape
    centre: np.ndarray
    axes: np.ndarray  # columns: lateral, posterior (towards the trochlea), superior (long axis)
    half: np.ndarray  # half width, thickness, height (mm)
    apex: np.ndarray  # inferior pole: patellar tendon origin
    base: np.ndarray  # superior pole, anterior: quadriceps tendon insertion


def _patella_local(c: np.ndarray, half: np.ndarray, p: KneeParams) -> tuple[Shape, Shape]:
    """Patella in its own axes about ``c``: a rounded shield, its back two facets (the lateral one wider and
    shallower) meeting at the median ridge, the inferior pole narrowed; cartilage on the facets."""
    pw, pt, ph = half
    body = SuperEllipsoid(c, half, 2.3)
    ridge = c + np.array([-p.patella_ridge * pw, 0.8 * pt, 0.0])
    al, am = np.deg2rad(26.0), np.deg2rad(p.patella_medial_facet)
    bone = Intersection(body, HalfSpace(ridge, (np.sin(al), np.cos(al), 0.0)),
                        HalfSpace(ridge, (-np.sin(am), np.cos(am), 0.0)),
                        HalfSpace(c + np.array([0.55 * pw, 0, -0.45 * ph]), (0.8, 0.0, -0.6)),
                        HalfSpace(c + np.array([-0.55 * pw, 0, -0.45 * ph]), (-0.8, 0.0, -0.6)))
    taper = (ridge + np.array([0.2 * pw, 0, 0.1 * ph]), np.array([pw, 2.0 * pt, 0.9 * ph]), 0.45)
    cartilage = Intersection(Shell(bone, p.patellar_cartilage, taper=taper),
                             HalfSpace(c + np.array([0, 0.15 * pt, 0]), (0.0, -1.0, 0.0)),
                             HalfSpace(c + np.array([0, 0, -0.6 * ph]), (0.0, 0.0, -1.0)))
    return bone, cartilage


def _front_profile(femur_bone: Shape, x: float, z: np.ndarray) -> np.ndarray:
    """y (mm) of the femur's anterior surface along the line x = ``x`` at heights ``z`` (nan: no bone)."""
    y = np.arange(-90.0, 30.0, 0.5, dtype=np.float32)
    d = femur_bone.sdf(np.full((1, 1, 1), x, np.float32), y[None, :, None], z.astype(np.float32)[None, None, :])[0]
    inside = d < 0
    first = np.argmax(inside, axis=0)
    front = np.where(inside.any(axis=0), y[first], np.nan)
    # Sub-voxel: interpolate the zero crossing just before the first inside sample.
    prev = np.clip(first - 1, 0, len(y) - 1)
    d0, d1 = d[prev, np.arange(len(z))], d[first, np.arange(len(z))]
    frac = np.where(d0 > d1, d0 / np.maximum(d0 - d1, 1e-6), 0.0)
    return front - 0.5 + 0.5 * np.clip(frac, 0.0, 1.0)


def patella(f: _Frame, p: KneeParams, fem: Femur, tib: Tibia) -> Patella:
    """The patella in the trochlear groove at the height where its tendon (inferior pole to tuberosity) is
    Insall-Salvati x patellar length long: it rides high (alta) or low (baja) and follows the flexion."""
    half = np.array([22.0 * f.k[0], 12.0 * f.k[1], 21.0 * f.k[2]]) * p.patella_size
    clearance = p.femoral_cartilage + p.patellar_cartilage + 2 * JOINT_GAP
    x = fem.groove_x + p.patella_shift * f.s
    z = np.arange(f.femur_base - 10.0, f.femur_base + 120.0, 1.0)
    front = _front_profile(fem.bone, x, z)
    # Below the groove's lower end (the notch outlet) the pole hangs over Hoffa's fat at the groove's depth.
    valid = np.flatnonzero(~np.isnan(front))
    if valid.size:
        front[: valid[0]] = front[valid[0]]
    tendon = p.insall_salvati * 2.0 * half[2]
    best = None
    for i in range(len(z)):
        span = (z >= z[i] - 0.8 * half[2]) & (z <= z[i] + 0.8 * half[2])
        if np.isnan(front[i]) or np.isnan(front[span]).any():
            continue
        lo, hi = np.searchsorted(z, [z[i] - 0.5 * half[2], z[i] + 0.5 * half[2]])
        hi = min(hi, len(z) - 1)
        slope = (front[hi] - front[lo]) / (z[hi] - z[lo])
        angle = np.arctan2(-slope, 1.0)
        axes = rotation((1, 0, 0), np.rad2deg(angle)) @ rotation((0, 0, 1), p.patella_tilt)
        # The ridge, along the whole patella, stays ``clearance`` in front of the trochlea.
        s = np.linspace(-0.8, 0.8, 9) * half[2]
        ridge = axes @ np.stack([np.zeros_like(s), np.full_like(s, 0.8 * half[1]), s])
        zs = z[i] + ridge[2]
        need = np.interp(zs, z, front) - clearance - ridge[1]
        centre = np.array([x, float(need.min()), z[i]])
        apex = centre + axes @ np.array([0.0, 0.3 * half[1], -0.95 * half[2]])
        error = abs(np.linalg.norm(apex - tib.tuberosity) - tendon)
        if best is None or error < best[0]:
            best = (error, centre, axes)
    if best is None:
        raise ValueError("no trochlear groove found for the patella")
    _, centre, axes = best
    bone, cartilage = _patella_local(centre, half, p)
    # Any remaining contact with the femur (the facets, not just the ridge) pushes the patella forwards.
    grid = [np.linspace(-1, 1, 12) * h for h in half]
    local = np.stack(np.meshgrid(*grid, indexing="ij")).reshape(3, -1)
    keep = bone.sdf(*(centre[:, None] + local)) > -2.0
    keep &= bone.sdf(*(centre[:, None] + local)) < 0.0
    pts = centre[:, None] + axes @ local[:, keep]
    deficit = clearance - float(fem.bone.sdf(*pts).min()) if pts.size else 0.0
    if deficit > 0:
        centre = centre - np.array([0.0, deficit, 0.0])
        bone, cartilage = _patella_local(centre, half, p)
    placed = [Transformed(s, axes, centre) for s in (bone, cartilage)]
    apex = centre + axes @ np.array([0.0, 0.3 * half[1], -0.95 * half[2]])
    base = centre + axes @ np.array([0.0, -0.3 * half[1], 0.92 * half[2]])
    return Patella(placed[0], placed[1], centre, axes, half, apex, base)
