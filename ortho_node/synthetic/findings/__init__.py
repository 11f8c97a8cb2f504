"""Findings with ground truth: one entry per diagnosis label of ``ortho_node.labels.DIAGNOSIS_LABELS``.

A finding may first ``adjust`` the anatomy parameters (a displaced patella, a distended bursa) and then add
``lesion`` paints on the built anatomy (a ligament gap filled with fluid, marrow oedema). Each draws from its
own random stream, so adding or removing one finding never changes the anatomy or another finding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from ortho_node.labels import DIAGNOSIS_LABELS, Joint
from ortho_node.synthetic.anatomy import AnatomyModel
from ortho_node.synthetic.scene import Paint
from ortho_node.synthetic.shapes import Bounds, Shape

Adjust = Callable[[Any, np.random.Generator], Any]
Lesion = Callable[[AnatomyModel, np.random.Generator], tuple[list[Paint], str]]


@dataclasses.dataclass(frozen=True)
class FindingSpec:
    label: str
    lesion: Lesion
    adjust: Adjust | None = None


@dataclasses.dataclass(frozen=True)
class Finding:
    """An injected finding: its label, a short description, and the canonical-frame box it affects."""

    label: str
    description: str
    region: Bounds


def region_of(paints: list[Paint], extra: list[Shape] = ()) -> Bounds:  # type: ignore[assignment]
    """The box covering every paint of a lesion (plus ``extra`` shapes, e.g. a patella's old position)."""
    boxes = [p.shape.bounds() for p in paints] + [s.bounds() for s in extra]
    finite = [(np.maximum(lo, -1e4), np.minimum(hi, 1e4)) for lo, hi in boxes]
    return np.min([b[0] for b in finite], axis=0), np.max([b[1] for b in finite], axis=0)


def registry(joint: Joint) -> dict[str, FindingSpec]:
    """The finding specifications of ``joint``, keyed by diagnosis label in the official order."""
    from ortho_node.synthetic.findings import ankle, knee, shoulder

    specs = {Joint.KNEE: knee.FINDINGS, Joint.ANKLE: ankle.FINDINGS, Joint.SHOULDER: shoulder.FINDINGS}[joint]
    return {label: specs[label] for label in DIAGNOSIS_LABELS[joint]}
