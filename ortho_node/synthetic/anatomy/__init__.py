"""Parametric anatomy per joint: sampled parameters -> named shapes -> paint operations.

Each joint module offers ``sample_params(rng)`` (seeded anatomical variability) and ``build(params)``
returning an :class:`AnatomyModel`; findings adjust the parameters before ``build`` (e.g. a displaced
patella) and add lesion paints after it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ortho_node.synthetic.scene import Paint, Partition, Septa
from ortho_node.synthetic.shapes import Bounds, Shape


@dataclasses.dataclass(frozen=True)
class AnatomyModel:
    """The built anatomy: paint operations in order, plus the named parts and points findings refer to."""

    paints: list[Paint | Partition | Septa]
    parts: dict[str, Shape]
    points: dict[str, np.ndarray]
    bounds: Bounds  # canonical box the scene grid must cover
