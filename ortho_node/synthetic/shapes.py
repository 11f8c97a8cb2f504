"""Signed-distance primitives (mm) from which the anatomy is built.

Every shape returns an approximate signed distance (negative inside) for broadcastable coordinate arrays.
When the coordinates are the three axis vectors of a grid region, unions evaluate each child only inside
its own bounding box: this is what keeps a 20-million-voxel scene fast to rasterise.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

Bounds = tuple[np.ndarray, np.ndarray]
#: Distance used for "far outside"; finite so that smooth blends stay finite.
FAR = np.float32(1.0e3)


def _vec(v: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float64).reshape(3)


def _is_axis_grid(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> bool:
    return x.shape[1:] == (1, 1) and y.shape[::2] == (1, 1) and z.shape[:2] == (1, 1)


def _axis_slices(x: np.ndarray, y: np.ndarray, z: np.ndarray, bounds: Bounds) -> tuple[slice, ...] | None:
    """Index slices of an axis grid covering ``bounds``, or None when they are empty."""
    lo, hi = bounds
    slices = []
    for axis, a in enumerate((x.ravel(), y.ravel(), z.ravel())):
        start, stop = np.searchsorted(a, lo[axis]), np.searchsorted(a, hi[axis], side="right")
        if stop <= start:
            return None
        slices.append(slice(int(start), int(stop)))
    return tuple(slices)


class Shape(abc.ABC):
    """A solid given by a signed distance function (mm, negative inside)."""

    @abc.abstractmethod
    def bounds(self) -> Bounds:
        """Axis-aligned box (lo, hi) outside which the distance is positive."""

    @abc.abstractmethod
    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance at broadcastable coordinates x, y, z (mm)."""


class Ellipsoid(Shape):
    """An ellipsoid; ``rotation`` columns are its local axes in the parent frame."""

    def __init__(self, center: Sequence[float], radii: Sequence[float], rotation: np.ndarray | None = None):
        self.center, self.radii = _vec(center), _vec(radii)
        self.rotation = None if rotation is None else np.asarray(rotation, dtype=np.float64)

    def bounds(self) -> Bounds:
        if self.rotation is None:
            half = self.radii
        else:
            half = np.sqrt(((self.rotation * self.radii[None, :]) ** 2).sum(axis=1))
        return self.center - half, self.center + half

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        # Python floats keep float32 coordinates float32 (NumPy 2 promotes with float64 scalars).
        c, radii = self.center.tolist(), self.radii.tolist()
        d = (x - c[0], y - c[1], z - c[2])
        if self.rotation is not None:
            r = self.rotation.tolist()
            d = tuple(r[0][i] * d[0] + r[1][i] * d[1] + r[2][i] * d[2] for i in range(3))
        # Quilez's bound: k0 (k0 - 1) / k1 is a close distance estimate for ellipsoids of any aspect.
        k0 = np.sqrt(sum((d[i] / radii[i]) ** 2 for i in range(3)))
        k1 = np.sqrt(sum((d[i] / radii[i] ** 2) ** 2 for i in range(3)))
        # At the very centre the estimate is 0 / 0 (-0.0, "not inside"): there it is the smallest radius.
        return np.where(k1 > 1e-9, k0 * (k0 - 1.0) / np.maximum(k1, 1e-9), -min(radii)).astype(np.float32)


class SuperEllipsoid(Shape):
    """|u/a|^p + |v/b|^p + |w/c|^p <= 1 in local axes: ``exponent`` 2 is an ellipsoid, larger ones a rounded box
    (the tibial plateau, the patella, the metaphysis). The distance is the first-order estimate
    (F - 1) / |grad F| of F = (sum |u_i / r_i|^p)^(1/p): exact on the surface, good within a few mm of it."""

    def __init__(self, center: Sequence[float], radii: Sequence[float], exponent: float = 2.5,
                 rotation: np.ndarray | None = None):
        self.center, self.radii, self.exponent = _vec(center), _vec(radii), float(exponent)
        self.rotation = None if rotation is None else np.asarray(rotation, dtype=np.float64)

    def bounds(self) -> Bounds:
        half = self.radii if self.rotation is None else np.abs(self.rotation) @ self.radii
        return self.center - half, self.center + half

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        c, radii, p = self.center.tolist(), self.radii.tolist(), self.exponent
        d = (x - c[0], y - c[1], z - c[2])
        if self.rotation is not None:
            r = self.rotation.tolist()
            d = tuple(r[0][i] * d[0] + r[1][i] * d[1] + r[2][i] * d[2] for i in range(3))
        a = [np.abs(d[i]) * np.float32(1.0 / radii[i]) + np.float32(1e-6) for i in range(3)]
        total = sum(v ** p for v in a)
        f = total ** (1.0 / p)
        # |grad F| = F^(1-p) * sqrt(sum (a_i^(p-1) / r_i)^2)
        g = f ** (1.0 - p) * np.sqrt(sum((a[i] ** (p - 1.0) * np.float32(1.0 / radii[i])) ** 2 for i in range(3)))
        return np.clip((f - 1.0) / np.maximum(g, 1e-3), -FAR, FAR).astype(np.float32)


class Capsule(Shape):
    """A segment a-b swept by a radius varying linearly from ``ra`` to ``rb``.

    With ``aspect`` > 1 the cross-section is an ellipse ``aspect`` times wider along ``width_dir``: flat
    bands such as the patellar tendon or the collateral ligaments.
    """

    def __init__(self, a: Sequence[float], b: Sequence[float], ra: float, rb: float | None = None,
                 width_dir: Sequence[float] | None = None, aspect: float = 1.0):
        self.a, self.b = _vec(a), _vec(b)
        self.ra, self.rb = float(ra), float(ra if rb is None else rb)
        self.aspect = float(aspect)
        self.width_dir = None
        if width_dir is not None and aspect != 1.0:
            axis = self.b - self.a
            w = _vec(width_dir) - axis * (_vec(width_dir) @ axis) / (axis @ axis)
            self.width_dir = w / np.linalg.norm(w)

    def bounds(self) -> Bounds:
        r = max(self.ra, self.rb) * max(self.aspect, 1.0)
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        ba, a = (self.b - self.a).tolist(), self.a.tolist()
        px, py, pz = x - a[0], y - a[1], z - a[2]
        t = np.clip((px * ba[0] + py * ba[1] + pz * ba[2]) / sum(v * v for v in ba), 0.0, 1.0)
        dx, dy, dz = px - t * ba[0], py - t * ba[1], pz - t * ba[2]
        radius = self.ra + t * (self.rb - self.ra)
        d2 = dx * dx + dy * dy + dz * dz
        if self.width_dir is not None:
            w = self.width_dir.tolist()
            u = dx * w[0] + dy * w[1] + dz * w[2]
            d2 = d2 - u * u * (1.0 - 1.0 / self.aspect**2)
        return (np.sqrt(d2) - radius).astype(np.float32)


class LimbTube(Shape):
    """A limb-like tube along z: elliptic cross-sections whose centre and radii vary linearly between knots.

    Cheaper than a blend of capsules because the cross-section terms are computed on 2D planes.
    """

    def __init__(self, z: Sequence[float], cx: Sequence[float], cy: Sequence[float],
                 rx: Sequence[float], ry: Sequence[float]):
        self.knots = [np.asarray(v, dtype=np.float64) for v in (z, cx, cy, rx, ry)]

    def bounds(self) -> Bounds:
        z, cx, cy, rx, ry = self.knots
        return (np.array([(cx - rx).min(), (cy - ry).min(), z.min()]),
                np.array([(cx + rx).max(), (cy + ry).max(), z.max()]))

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        kz = self.knots[0]
        cx, cy, rx, ry = (np.interp(z, kz, k).astype(np.float32) for k in self.knots[1:])
        rho = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        return ((rho - 1.0) * np.minimum(rx, ry)).astype(np.float32)


class HalfSpace(Shape):
    """Points p with normal . (p - point) < 0."""

    def __init__(self, point: Sequence[float], normal: Sequence[float]):
        n = _vec(normal)
        self.normal, self.offset = n / np.linalg.norm(n), float(_vec(point) @ (n / np.linalg.norm(n)))

    def bounds(self) -> Bounds:
        return np.full(3, -np.inf), np.full(3, np.inf)

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        n = self.normal.tolist()
        return (x * n[0] + y * n[1] + z * n[2] - self.offset).astype(np.float32)


class Union(Shape):
    """Union of shapes; ``blend`` > 0 rounds the seams over about that many mm (smooth minimum)."""

    def __init__(self, *children: Shape, blend: float = 0.0):
        self.children, self.blend = children, float(blend)

    def bounds(self) -> Bounds:
        los, his = zip(*(c.bounds() for c in self.children))
        pad = self.blend / 4.0
        return np.min(los, axis=0) - pad, np.max(his, axis=0) + pad

    def _combine(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.blend <= 0.0:
            return np.minimum(a, b)
        h = np.maximum(self.blend - np.abs(a - b), 0.0) / self.blend
        return np.minimum(a, b) - h * h * (self.blend / 4.0)

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), FAR, dtype=np.float32)
        axis_grid = _is_axis_grid(x, y, z)
        for child in self.children:
            if not axis_grid:
                out = self._combine(out, child.sdf(x, y, z))
                continue
            lo, hi = child.bounds()
            sl = _axis_slices(x, y, z, (lo - self.blend, hi + self.blend))
            if sl is not None:
                sub = child.sdf(x[sl[0]], y[:, sl[1]], z[:, :, sl[2]])
                out[sl] = self._combine(out[sl], sub)
        return out


class Intersection(Shape):
    def __init__(self, *children: Shape):
        self.children = children

    def bounds(self) -> Bounds:
        los, his = zip(*(c.bounds() for c in self.children))
        return np.max(los, axis=0), np.min(his, axis=0)

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = self.children[0].sdf(x, y, z)
        for child in self.children[1:]:
            out = np.maximum(out, child.sdf(x, y, z))
        return out


class Difference(Shape):
    """``base`` minus ``cut`` (the cut is only evaluated inside its own bounds); ``blend`` > 0 rounds the
    cut's edges over about that many mm (smooth maximum)."""

    def __init__(self, base: Shape, *cuts: Shape, blend: float = 0.0):
        self.base, self.cuts, self.blend = base, Union(*cuts), float(blend)

    def bounds(self) -> Bounds:
        return self.base.bounds()

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        a, b = self.base.sdf(x, y, z), -self.cuts.sdf(x, y, z)
        if self.blend <= 0.0:
            return np.maximum(a, b)
        h = np.maximum(self.blend - np.abs(a - b), 0.0) / self.blend
        return (np.maximum(a, b) + h * h * (self.blend / 4.0)).astype(np.float32)


class Shell(Shape):
    """The layer 0 < d(base) - offset < thickness outside ``base`` (cartilage on bone, a bursa on a tendon).

    ``taper`` = (centre, radii, edge) makes the thickness vary: full at ``centre``, falling smoothly to
    ``edge`` times it at the ellipsoid (centre, radii) and beyond (cartilage thickest where it bears load).
    """

    def __init__(self, base: Shape, thickness: float, offset: float = 0.0,
                 taper: tuple[Sequence[float], Sequence[float], float] | None = None):
        self.base, self.thickness, self.offset = base, float(thickness), float(offset)
        self.taper = None if taper is None else (_vec(taper[0]), _vec(taper[1]), float(taper[2]))

    def bounds(self) -> Bounds:
        lo, hi = self.base.bounds()
        pad = self.offset + self.thickness
        return lo - pad, hi + pad

    def local_thickness(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray | float:
        if self.taper is None:
            return self.thickness
        (c, r, edge) = self.taper
        q2 = sum(((v - np.float32(ci)) * np.float32(1.0 / ri)) ** 2 for v, ci, ri in zip((x, y, z), c, r))
        return np.float32(self.thickness) * (np.float32(edge) + np.float32(1.0 - edge) * np.clip(1.0 - q2, 0.0, 1.0))

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        if self.taper is None:
            half = self.thickness / 2.0
            return (np.abs(self.base.sdf(x, y, z) - self.offset - half) - half).astype(np.float32)
        d = self.base.sdf(x, y, z) - np.float32(self.offset)
        return np.maximum(-d, d - self.local_thickness(x, y, z)).astype(np.float32)


class Offset(Shape):
    """``child`` grown outwards by ``distance`` mm (negative: shrunk), e.g. the fat layer under the skin."""

    def __init__(self, child: Shape, distance: float):
        self.child, self.distance = child, float(distance)

    def bounds(self) -> Bounds:
        lo, hi = self.child.bounds()
        return lo - max(self.distance, 0.0), hi + max(self.distance, 0.0)

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return self.child.sdf(x, y, z) - np.float32(self.distance)


class Transformed(Shape):
    """``child`` rotated by ``rotation`` about ``pivot``, then moved by ``translation`` (e.g. the leg segment in
    knee flexion; a meniscus built on a plane and laid on the tilted tibial plateau)."""

    def __init__(self, child: Shape, rotation: np.ndarray, pivot: Sequence[float],
                 translation: Sequence[float] = (0.0, 0.0, 0.0)):
        self.child, self.rotation, self.pivot = child, np.asarray(rotation, dtype=np.float64), _vec(pivot)
        self.translation = _vec(translation)

    def bounds(self) -> Bounds:
        lo, hi = self.child.bounds()
        corners = np.array([[(lo, hi)[(i >> a) & 1][a] for a in range(3)] for i in range(8)])
        moved = (corners - self.pivot) @ self.rotation.T + self.pivot + self.translation
        return moved.min(axis=0), moved.max(axis=0)

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        r, p, t = self.rotation.tolist(), self.pivot.tolist(), self.translation.tolist()
        d = (x - (p[0] + t[0]), y - (p[1] + t[1]), z - (p[2] + t[2]))
        # Inverse rotation (R^T) brings the query point into the child's unrotated frame.
        q = [r[0][i] * d[0] + r[1][i] * d[1] + r[2][i] * d[2] + p[i] for i in range(3)]
        q = np.broadcast_arrays(*q)
        return self.child.sdf(*q)


class CWedge(Shape):
    """A C-shaped ring of triangular cross-section lying on a plane z = ``base_z``: a meniscus or labrum.

    The ring's outer rim is the ellipse ``radii`` about ``center`` (x, y); its width runs from
    ``width[0]`` (anterior horn, -y) to ``width[1]`` (posterior horn, +y); it is ``height`` tall at the rim
    and thins to nothing at the free edge. ``gap`` (radians) opens the C towards direction ``gap_dir``.
    """

    def __init__(self, center: Sequence[float], radii: Sequence[float], base_z: float, height: float,
                 width: tuple[float, float], gap: float, gap_dir: float):
        self.cx, self.cy = float(center[0]), float(center[1])
        self.rx, self.ry = float(radii[0]), float(radii[1])
        self.base_z, self.height, self.width = float(base_z), float(height), width
        self.gap, self.gap_dir = float(gap), float(gap_dir)

    def bounds(self) -> Bounds:
        return (np.array([self.cx - self.rx, self.cy - self.ry, self.base_z]),
                np.array([self.cx + self.rx, self.cy + self.ry, self.base_z + self.height]))

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        ex, ey = (x - self.cx) / self.rx, (y - self.cy) / self.ry
        rho = np.sqrt(ex * ex + ey * ey)
        mean_r = 0.5 * (self.rx + self.ry)
        inset = (1.0 - rho) * mean_r  # mm in from the outer rim
        width = self.width[0] + (self.width[1] - self.width[0]) * (0.5 + 0.5 * np.clip(ey / np.maximum(rho, 1e-6), -1, 1))
        angle = np.abs(np.angle(np.exp(1j * (np.arctan2(ey, ex) - self.gap_dir))))
        top = self.base_z + self.height * (1.0 - inset / width)
        d = np.maximum(np.maximum(-inset, inset - width), np.maximum(self.base_z - z, z - top))
        return np.maximum(d, (self.gap / 2.0 - angle) * mean_r).astype(np.float32)


def rotation(axis: Sequence[float], degrees: float) -> np.ndarray:
    """Rotation matrix about ``axis`` by ``degrees`` (right-handed)."""
    a = _vec(axis) / np.linalg.norm(_vec(axis))
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)
