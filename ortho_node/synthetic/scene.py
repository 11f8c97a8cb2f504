"""The 3D scene: a label volume and an appearance volume on a regular grid, and the painter that fills them.

Anatomy is built in a canonical limb frame (mm; +x lateral, +y posterior, +z superior; origin at the joint)
and placed into the patient's DICOM LPS frame by ``Scene.to_world`` (mirroring for the right side, limb
rotation, table offset), so sampling a series never needs to resample the scene itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from ortho_node.labels import Joint
from ortho_node.synthetic.shapes import Shape, _axis_slices
from ortho_node.synthetic.structures import Signal, Structure, default_signal


@dataclasses.dataclass(frozen=True)
class Grid:
    """A regular canonical-frame grid: voxel (i, j, k) sits at ``origin + spacing * (i, j, k)``."""

    origin: tuple[float, float, float]
    spacing: float
    shape: tuple[int, int, int]

    @classmethod
    def covering(cls, lo: np.ndarray, hi: np.ndarray, spacing: float) -> Grid:
        shape = tuple(int(np.ceil((h - l) / spacing)) + 1 for l, h in zip(lo, hi))
        return cls(tuple(float(v) for v in lo), float(spacing), shape)  # type: ignore[arg-type]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable float32 coordinate vectors of shapes (nx,1,1), (1,ny,1), (1,1,nz)."""
        vecs = [np.float32(o) + np.float32(self.spacing) * np.arange(n, dtype=np.float32)
                for o, n in zip(self.origin, self.shape)]
        return vecs[0][:, None, None], vecs[1][None, :, None], vecs[2][None, None, :]

    def index_to_canonical(self) -> np.ndarray:
        """4x4 affine from voxel indices to canonical mm."""
        affine = np.diag([self.spacing, self.spacing, self.spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine


@dataclasses.dataclass(frozen=True)
class Paint:
    """Fill ``shape`` with ``label`` (None: keep the label) and ``signal`` (None: the label's default).

    ``within`` restricts the fill to voxels currently holding one of those labels (a lesion stays inside
    its tendon; a meniscus fills only the gap the bones leave), ``on_signal`` to voxels of those appearances
    (marrow oedema spares the cortex). ``rim`` paints the outer ``rim[0]`` mm of the
    filled region with ``rim[1]`` (cortical bone) and, when given, the label ``rim[2]`` (skin over fat: one
    evaluation of the limb outline for both).
    """

    shape: Shape
    label: Structure | None
    signal: Signal | None = None
    within: frozenset[Structure] | None = None
    rim: tuple[float, Signal] | tuple[float, Signal, Structure] | None = None
    on_signal: frozenset[Signal] | None = None

    def fill_signal(self) -> Signal | None:
        if self.signal is not None:
            return self.signal
        return None if self.label is None else default_signal(self.label)


@dataclasses.dataclass(frozen=True)
class Partition:
    """Fill ``region`` (where it holds one of ``within``) with the nearest of ``parts``: each voxel takes the
    label of the part whose surface is closest (inside is closest), if that part is within ``reach`` mm, so the
    parts grow until they meet, the way muscles fill the fascia of a limb."""

    region: Shape
    parts: tuple[tuple[Structure, Shape], ...]
    reach: float
    within: frozenset[Structure] | None = None


@dataclasses.dataclass(frozen=True)
class Septa:
    """Thin sheets of ``label`` wherever two different ``structures`` touch (the fat between muscles): both
    voxels of every such pair of neighbours take ``label`` and its default signal (about two voxels thick)."""

    structures: frozenset[Structure]
    label: Structure


@dataclasses.dataclass
class Scene:
    """Label and appearance volumes (uint8, indexed [i, j, k]) with their placement in the patient."""

    joint: Joint
    grid: Grid
    labels: np.ndarray
    signal: np.ndarray
    to_world: np.ndarray  # 4x4, canonical mm -> patient LPS mm

    @classmethod
    def empty(cls, joint: Joint, grid: Grid, to_world: np.ndarray) -> Scene:
        return cls(joint, grid, np.zeros(grid.shape, np.uint8), np.zeros(grid.shape, np.uint8), to_world)

    def index_to_world(self) -> np.ndarray:
        return self.to_world @ self.grid.index_to_canonical()

    def paint(self, op: Paint) -> None:
        """Apply one paint operation in place."""
        axes = self.grid.axes()
        sl = _axis_slices(*axes, op.shape.bounds())
        if sl is None:
            return
        d = op.shape.sdf(axes[0][sl[0]], axes[1][:, sl[1]], axes[2][:, :, sl[2]])
        labels, signal = self.labels[sl], self.signal[sl]
        inside = np.broadcast_to(d < 0, labels.shape)
        for restriction, volume in ((op.within, labels), (op.on_signal, signal)):
            if restriction is not None:
                allowed = np.zeros(256, dtype=bool)
                allowed[[int(v) for v in restriction]] = True
                inside = inside & allowed[volume]
        if op.label is not None:
            labels[inside] = int(op.label)
        fill = op.fill_signal()
        if fill is not None:
            signal[inside] = int(fill)
        if op.rim is not None:
            outer = inside & np.broadcast_to(d > -op.rim[0], labels.shape)
            signal[outer] = int(op.rim[1])
            if len(op.rim) > 2:
                labels[outer] = int(op.rim[2])  # type: ignore[misc]

    def partition(self, op: Partition) -> None:
        """Apply one :class:`Partition` operation in place."""
        axes = self.grid.axes()
        sl = _axis_slices(*axes, op.region.bounds())
        if sl is None:
            return
        x, y, z = axes[0][sl[0]], axes[1][:, sl[1]], axes[2][:, :, sl[2]]
        labels, signal = self.labels[sl], self.signal[sl]
        nearest = np.full(labels.shape, np.float32(op.reach))
        which = np.full(labels.shape, len(op.parts), dtype=np.uint8)  # len(parts): no part within reach
        for index, (_, shape) in enumerate(op.parts):
            lo, hi = shape.bounds()
            near = _axis_slices(x, y, z, (lo - op.reach, hi + op.reach))  # farther voxels cannot be closer
            if near is None:
                continue
            distance = shape.sdf(x[near[0]], y[:, near[1]], z[:, :, near[2]])
            closer = distance < nearest[near]
            nearest[near][closer] = distance[closer]
            which[near][closer] = index
        fill = np.broadcast_to(op.region.sdf(x, y, z) < 0, labels.shape) & (which < len(op.parts))
        if op.within is not None:
            allowed = np.zeros(256, dtype=bool)
            allowed[[int(v) for v in op.within]] = True
            fill &= allowed[labels]
        parts = [structure for structure, _ in op.parts]
        labels[fill] = np.array([int(p) for p in parts], dtype=np.uint8)[which[fill]]
        signal[fill] = np.array([int(default_signal(p)) for p in parts], dtype=np.uint8)[which[fill]]

    def separate(self, op: Septa) -> None:
        """Apply one :class:`Septa` operation in place."""
        allowed = np.zeros(256, dtype=bool)
        allowed[[int(v) for v in op.structures]] = True
        member = allowed[self.labels]
        septum = np.zeros_like(member)
        for axis in range(3):
            low = [slice(None)] * 3
            high = [slice(None)] * 3
            low[axis], high[axis] = slice(None, -1), slice(1, None)
            low_t, high_t = tuple(low), tuple(high)
            edge = member[low_t] & member[high_t] & (self.labels[low_t] != self.labels[high_t])
            septum[low_t] |= edge
            septum[high_t] |= edge
        self.labels[septum] = int(op.label)
        self.signal[septum] = int(default_signal(op.label))

    def paint_all(self, ops: Iterable[Paint | Partition | Septa]) -> None:
        for op in ops:
            if isinstance(op, Septa):
                self.separate(op)
            elif isinstance(op, Partition):
                self.partition(op)
            else:
                self.paint(op)
