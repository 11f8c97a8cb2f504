"""Issue 6: the structure scales and noise draws of the masks: chosen for Dice on validation masks, carried by
the card, refused when they cannot apply."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from ortho_node.model.card import CheckpointError
from ortho_node.training.scores import choose_scales, dice_per_structure, scaled_overlaps
from ortho_node.model.system import SystemCard, new_card
from ortho_node.model.unet import UNetConfig

SCALES = (0.5, 1.0, 2.0, 4.0)


def _maps(rng: np.random.Generator, classes: int = 3, shape=(4, 8, 8)) -> torch.Tensor:
    return torch.softmax(torch.from_numpy(rng.normal(size=(classes, *shape))).float(), dim=0)


def test_scaled_overlaps_count_the_mask_the_scaled_arg_max_gives():
    rng = np.random.default_rng(0)
    maps, target = _maps(rng), torch.from_numpy(rng.integers(0, 3, (4, 8, 8)))
    counts = scaled_overlaps(maps, target, SCALES)
    assert counts.shape == (3, len(SCALES), 3)
    for k in range(3):
        for i, scale in enumerate(SCALES):
            factor = torch.ones(3, 1, 1, 1)
            factor[k] = scale
            labels = (maps * factor).argmax(0)
            mask, truth = labels == k, target == k
            assert counts[k, i].tolist() == [int((mask & truth).sum()), int(mask.sum()), int(truth.sum())]
    unit = counts[:, SCALES.index(1.0)]  # scale 1: the plain arg-max's Dice
    dice = 2 * unit[1:, 0] / (unit[1:, 1] + unit[1:, 2])
    assert np.allclose(dice, dice_per_structure(maps.argmax(0).numpy(), target.numpy(), 3))


def test_choose_scales_takes_each_structures_best_mean_dice_and_keeps_1_on_a_tie_or_without_data():
    # Structure 1 is under-segmented: its true region is where its probability is a little below the rival's.
    maps = torch.zeros(4, 1, 4, 4)
    maps[0], maps[1, 0, :2], maps[0, 0, :2] = 0.5, 0.4, 0.45
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    scales, dice = choose_scales([scaled_overlaps(maps, target, SCALES)], SCALES)
    assert scales[0] == 1.0 and scales[1] == 2.0  # 0.4 * 2 beats 0.45; 4 gives the same Dice, 2 comes first
    assert dice[0, SCALES.index(1.0)] == 0.0 and dice[0, SCALES.index(2.0)] == 1.0
    assert scales[2] == 1.0 and np.isnan(dice[1]).all()  # no volume holds structure 2: it keeps 1
    assert scales[3] == 1.0  # nor 3


def test_cards_carry_draws_and_scales_and_older_cards_read_as_one_draw_unscaled():
    card = new_card(UNetConfig.reduced())
    scaled = dataclasses.replace(card, segmentation_draws=4, structure_scales=(1.0,) * 11 + (1.7,))
    loaded = SystemCard.from_json(scaled.to_json())
    assert loaded.segmentation_draws == 4 and loaded.structure_scales == scaled.structure_scales
    older = json.loads(card.to_json())
    del older["segmentation_draws"], older["structure_scales"]
    old = SystemCard.from_json(json.dumps(older))
    assert old.segmentation_draws == 1 and old.structure_scales == ()


@pytest.mark.parametrize("changes, message", [
    ({"segmentation_draws": 0}, "segmentation_draws must be at least 1"),
    ({"structure_scales": (1.0, 2.0)}, "one positive factor per structure"),
    ({"structure_scales": (1.0,) * 11 + (0.0,)}, "one positive factor per structure"),
    ({"structure_scales": (1.0,) * 11 + (math.nan,)}, "one positive factor per structure"),
    ({"structure_scales": (1.0,) * 11 + (math.inf,)}, "one positive factor per structure"),
])
def test_cards_with_unusable_draws_or_scales_are_refused(changes, message):
    with pytest.raises(CheckpointError, match=message):
        dataclasses.replace(new_card(UNetConfig.reduced()), **changes)
