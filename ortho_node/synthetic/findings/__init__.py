"""Findings with ground truth: one entry per diagnosis label of ``ortho_node.labels.DIAGNOSIS_LABELS``.

A finding may first ``adjust`` the anatomy parameters (a displaced patella, a distended bursa) and then add
``lesion`` paints on the built anatomy (a ligament gap filled with fluid, marrow oedema). Each draws from its
own random stream, so adding or removing one finding never changes the anatomy or another finding.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ortho_node.labels import DIAGNOSIS_LABELS, Joint
from ortho_node.synthetic.anatomy import AnatomyModel
from ortho_node.synthetic.scene import Paint
from ortho_node.synthetic.shapes import Bounds, Shape



@dataclasses.dataclass(frozen=True)
class Lesion:
    """What a finding paints on the built anatomy, in words, and any further shape it moved or changed."""

    paints: list[Paint]
    description: str
    extent: tuple[Shape, ...] = ()

    def region(self) -> Bounds:
        """The canonical box covering every paint and extra shape of the lesion."""
        boxes = [p.shape.bounds() for p in self.paints] + [s.bounds() for s in self.extent]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)


Adjust = Callable[[Any, np.random.Generator], Any]
MakeLesion = Callable[[AnatomyModel, np.random.Generator], Lesion]


@dataclasses.dataclass(frozen=True)
class FindingSpec:
    label: str
    lesion: MakeLesion
    adjust: Adjust | None = None


@dataclasses.dataclass(frozen=True)
class Finding:
    """An injected finding: its label, a short description, and the canonical-frame box it affects."""

    label: str
    description: str
    region: Bounds


def registry(joint: Joint) -> dict[str, FindingSpec]:
    """The finding specifications of ``joint``, keyed by diagnosis label in the official order."""
    # Imported here: the joint modules import this one for FindingSpec and Lesion.
    specs = importlib.import_module(f"ortho_node.synthetic.findings.{Joint(joint).value}").FINDINGS
    return {label: specs[label] for label in DIAGNOSIS_LABELS[joint]}
