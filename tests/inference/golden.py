"""The golden study of the bundled model: a small stored synthetic knee and the bundled model's outputs on it.

Regenerate (after retraining the bundled model) with ``python3 -m tests.inference.golden``; the reference
records the weights' SHA-256, so a stale reference is reported as such rather than as a regression.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ortho_node.assembly.study import AssembledStudy
from ortho_node.labels import MODEL_PLANES

DATA = Path(__file__).resolve().parent / "data"
STUDY_FILE = DATA / "golden_study.npz"
REFERENCE_FILE = DATA / "golden_reference.npz"
REFERENCE_CARD = DATA / "golden_reference.json"
BUNDLED = Path(__file__).resolve().parents[2] / "ortho_node" / "bundled"
SEED = 9001


def write_study() -> None:
    """Generate the stored study: knee seed 9001, fast scene, every plane decimated to 128 x 128 pixels."""
    from ortho_node.training.taskdata import assembled_from_synthetic
    from ortho_node.synthetic import DomainRandomization, generate_study

    generated = generate_study("knee", SEED, scene_spacing=1.0,
                               domain=DomainRandomization(matrices=(256,), pixel_mm=(0.3, 0.7)))
    study = assembled_from_synthetic(generated)
    arrays = {f"pixels_{p.value}": study.planes[p].pixels[:, ::2, ::2].astype(np.uint16) for p in study.planes}
    DATA.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(STUDY_FILE, **arrays)


def load_study() -> AssembledStudy:
    """The stored pixels in an AssembledStudy (geometry rebuilt from the generator's seed)."""
    from ortho_node.training.taskdata import assembled_from_synthetic
    from ortho_node.synthetic import DomainRandomization, generate_study
    from tests.inference.conftest import with_planes

    stored = np.load(STUDY_FILE)
    template = assembled_from_synthetic(generate_study(
        "knee", SEED, scene_spacing=1.0, domain=DomainRandomization(matrices=(256,), pixel_mm=(0.3, 0.7))))
    return with_planes(template, {p: stored[f"pixels_{p.value}"].astype(np.float32) for p in MODEL_PLANES})


def write_reference() -> None:
    from ortho_node.inference.predictor import Predictor
    from tests.inference.conftest import locate

    predictor = Predictor.from_checkpoint(BUNDLED, "cpu", locate=locate)
    prediction = predictor.predict(load_study())
    np.savez_compressed(REFERENCE_FILE, **{f"mask_{s.plane.value}": s.mask for s in prediction.segmentations})
    REFERENCE_CARD.write_text(json.dumps({
        "weights_sha256": predictor.card.weights_sha256, "version": predictor.card.version,
        "probabilities": {f.label: f.probability for f in prediction.findings},
    }, indent=2) + "\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if not STUDY_FILE.exists():
        write_study()
    write_reference()
