"""Lesion building blocks shared by the joints: ligament/tendon sprains and tears, marrow oedema."""

from __future__ import annotations

import numpy as np

from ortho_node.synthetic.findings import Lesion
from ortho_node.synthetic.scene import Paint
from ortho_node.synthetic.shapes import Capsule, Ellipsoid, Union
from ortho_node.synthetic.structures import MUSCLES, SOFT_TISSUES, Signal, Structure as S

SOFT = SOFT_TISSUES


def along(points: np.ndarray, t: float) -> np.ndarray:
    """The point at fraction ``t`` of a polyline's length."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    target = t * seg.sum()
    i = int(np.searchsorted(np.cumsum(seg), target))
    i = min(i, len(seg) - 1)
    local = (target - np.concatenate([[0.0], np.cumsum(seg)])[i]) / seg[i]
    return points[i] + local * (points[i + 1] - points[i])


def band_injury(points: np.ndarray, radius: float, structure: S, rng: np.random.Generator,
                scale: float = 1.0) -> Lesion:
    """Sprain or tear of a ligament/tendon running along ``points``: thickening with intermediate signal,
    periligamentous oedema, and for a tear a fluid-filled gap across the fibres."""
    grade = int(rng.integers(1, 4))
    path = Union(*(Capsule(a, b, radius * 2.6 * scale) for a, b in zip(points, points[1:])))
    thick = Union(*(Capsule(a, b, radius * 1.6 * scale) for a, b in zip(points, points[1:])))
    paints = [
        Paint(path, S.OEDEMA, Signal.SOFT_OEDEMA, within=MUSCLES | {S.FAT}),
        Paint(thick, structure, Signal.DEGENERATE, within=SOFT | {S.OEDEMA, structure}),
    ]
    description = {1: "sprain with periligamentous oedema", 2: "partial tear, thickened with high signal",
                   3: "complete tear with fluid-filled gap"}[grade]
    if grade == 3:
        gap = along(points, float(rng.uniform(0.3, 0.7)))
        paints.append(Paint(Ellipsoid(gap, [radius * 2.2 * scale] * 3), S.FLUID,
                            within=frozenset({structure, S.OEDEMA})))
    return Lesion(paints, description)


def marrow_oedema(centre: np.ndarray, radii: np.ndarray | list[float], bones: frozenset[S]) -> Paint:
    """Bone bruise / marrow oedema: bright on fluid-sensitive images, dark on T1; the cortex is kept."""
    return Paint(Ellipsoid(centre, radii), None, Signal.MARROW_OEDEMA, within=bones,
                 on_signal=frozenset({Signal.MARROW}))
