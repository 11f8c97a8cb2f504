"""Issue 6 golden test: the bundled model on the stored synthetic study reproduces its stored masks
(Dice >= 0.99 per structure present) and probabilities (within 1e-3)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ortho_node.inference.predictor import Predictor
from ortho_node.training.scores import dice_per_structure
from ortho_node.model.system import read_system_card
from tests.inference.conftest import locate
from tests.inference.golden import BUNDLED, REFERENCE_CARD, REFERENCE_FILE, load_study

pytestmark = pytest.mark.skipif(not (BUNDLED / "model_card.json").exists(), reason="no bundled model")


def test_bundled_model_reproduces_the_stored_reference():
    reference = json.loads(REFERENCE_CARD.read_text())
    card = read_system_card(BUNDLED)
    assert card.weights_sha256 == reference["weights_sha256"], (
        "the bundled weights changed: regenerate the reference with `python3 -m tests.inference.golden`")
    prediction = Predictor.from_checkpoint(BUNDLED, "cpu", locate=locate).predict(load_study())
    masks = np.load(REFERENCE_FILE)
    for segmentation in prediction.segmentations:
        stored = masks[f"mask_{segmentation.plane.value}"]
        assert segmentation.mask.shape == stored.shape
        dice = dice_per_structure(segmentation.mask, stored, len(segmentation.structures))
        assert np.all(np.nan_to_num(dice, nan=1.0) >= 0.99), (segmentation.plane, dice)
    for finding in prediction.findings:
        assert finding.probability == pytest.approx(reference["probabilities"][finding.label], abs=1e-3)


def test_bundled_model_card_says_what_it_is():
    card = read_system_card(BUNDLED)
    assert "NOT FOR CLINICAL USE" in card.intended_use and "SYNTHETIC" in card.intended_use
    assert card.training["command"].startswith("ortho-node train bundle") and "data_seed" in card.training
    assert any(key.startswith("knee-seg/test/") for key in card.metrics)
    assert (BUNDLED / card.weights_file).stat().st_size <= 25 * 2**20
