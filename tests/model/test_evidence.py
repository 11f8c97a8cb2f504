"""Issue 6: evidence readouts - statistics that see a fluid cleft inside a structure's mask, regressions that
learn from them and from the head's descriptors, and cards that carry them (or, like the official
configuration, do not)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ortho_node.labels import KNEE_STRUCTURES, Joint, Plane
from ortho_node.model.card import CheckpointError
from ortho_node.model.evidence import (
    REGION_STATISTICS,
    STATISTICS,
    EvidenceReadout,
    plane_statistics,
    readout_inputs,
    readout_uses,
    stack_inputs,
    structure_statistics,
)
from ortho_node.model.system import OrthoModel, SystemCard, load_system, new_card, save_system
from ortho_node.model.unet import UNetConfig

MENISCUS = KNEE_STRUCTURES.index("medial meniscus")
WIDTH = 2 * OrthoModel.feature_channels(UNetConfig.reduced(), "mid_2")  # the reduced head's plane descriptor


def _meniscus(cleft: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, mask): a dark wedge in grey tissue; with ``cleft`` a bright line crosses it and, as a segmentation
    does, the mask leaves the bright line out."""
    image = torch.full((4, 32, 32), 0.2)
    mask = torch.zeros((4, 32, 32), dtype=torch.bool)
    mask[1:3, 12:16, 8:24] = True
    image[mask] = -1.0
    if cleft:
        image[1:3, 12:16, 15] = 1.0
        mask[1:3, 12:16, 15] = False
    return image, mask


def test_a_cleft_the_mask_leaves_out_shows_in_the_closing_and_the_contrast():
    intact, torn = (structure_statistics(*_meniscus(cleft)) for cleft in (False, True))
    assert intact.shape == torn.shape == (STATISTICS,)
    holes = slice(3 * REGION_STATISTICS, 3 * REGION_STATISTICS + 4)  # first closing: size, bright counts, max
    assert (intact[holes] == 0).all()
    assert (torn[holes][:3] > 0).all() and torn[holes][3] > 1.0  # the cleft is far brighter than the meniscus
    assert torn[-3:].sum() > intact[-3:].sum()  # local contrast inside the closed mask


def test_a_plane_not_analysed_adds_nothing_to_the_label():
    image, mask = _meniscus(True)
    statistics = {Plane.SAGITTAL: structure_statistics(image, mask)[None]}
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn((40, 1, readout_inputs(WIDTH, True)), generator=generator)
    module = EvidenceReadout(readout_uses(1, [0], WIDTH))
    module.fit(inputs, (inputs[:, :, 0] > 0).float(), l2=0.1)
    descriptors = {Plane.SAGITTAL: torch.randn(WIDTH, generator=generator)}
    one_plane = stack_inputs(torch.tensor([0.3]), descriptors, WIDTH, statistics)
    absent = one_plane.isnan()
    assert absent.sum() == 2 * WIDTH + 2 * STATISTICS  # coronal and axial
    average = torch.where(absent, module.mean, one_plane)  # the absent planes at the training average
    assert torch.allclose(module(one_plane), module(average)) and module(one_plane).isfinite().all()


def test_each_label_reads_its_own_columns():
    uses = readout_uses(3, [1], WIDTH)
    descriptors, statistics = slice(1, 1 + 3 * WIDTH), slice(1 + 3 * WIDTH, None)
    assert uses[:, 0].all()  # every label reads the head's logit
    assert uses[0, descriptors].all() and not uses[0, statistics].any()
    assert uses[1, statistics].all() and not uses[1, descriptors].any()
    assert readout_uses(2, [], WIDTH).shape == (2, 1 + 3 * WIDTH)  # a joint without structure evidence


def test_plane_statistics_take_each_structure_from_the_arg_max():
    image, mask = _meniscus(True)
    maps = torch.zeros((len(KNEE_STRUCTURES), *image.shape))
    maps[0] = 0.6
    maps[MENISCUS][mask] = 0.9
    rows = plane_statistics(image * 100 + 7, maps, [MENISCUS, 1])  # unscaled slices: scaled to [-1, 1] inside
    assert torch.allclose(rows[0], structure_statistics(image, mask), atol=1e-5)
    assert rows[1][REGION_STATISTICS - 1] == 1.0  # no femur in the maps: its region reads empty


def test_the_regression_learns_from_the_columns_it_uses_and_keeps_its_standardisation():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn((60, 2, 5), generator=generator) * 3 + 10
    targets = torch.stack([(inputs[:, 0, 2] > 10).float(), (inputs[:, 1, 4] < 10).float()], dim=1)
    uses = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 1, 1]], dtype=torch.bool)
    module = EvidenceReadout(uses)
    assert torch.equal(torch.sigmoid(module(inputs)), torch.full((60, 2), 0.5))  # unfitted: undecided
    module.fit(inputs, targets, l2=0.01)
    predicted = torch.sigmoid(module(inputs)) > 0.5
    assert (predicted == targets.bool()).float().mean() > 0.95
    assert torch.allclose(module.mean, inputs.mean(0)) and module.weight[0, 2] > 0 > module.weight[1, 4]
    assert (module.weight[~uses] == 0).all()


def test_a_card_with_evidence_readouts_round_trips_and_loads_its_weights(tmp_path):
    model = OrthoModel(new_card(UNetConfig.reduced(), joints=(Joint.KNEE, Joint.SHOULDER)))
    module = model.add_evidence(Joint.KNEE, {"LM": "lateral meniscus", "MM": "medial meniscus"})
    shoulder = model.add_evidence(Joint.SHOULDER, {})
    assert module.weight.shape == (8, readout_inputs(WIDTH, True)) and shoulder.weight.shape == (8, 1 + 3 * WIDTH)
    # In label order (MM before LM), whatever order the mapping (or the card's JSON) holds them in.
    assert model.card.evidence_structures(Joint.KNEE) == ((2, MENISCUS), (3, MENISCUS + 1))
    with torch.no_grad():
        module.weight.uniform_()
    save_system(tmp_path, model)
    loaded = load_system(tmp_path)
    assert loaded.card.evidence == {Joint.KNEE: {"MM": "medial meniscus", "LM": "lateral meniscus"},
                                    Joint.SHOULDER: {}}
    assert torch.equal(loaded.evidence["knee"].weight, module.weight)
    assert torch.equal(loaded.evidence["knee"].uses, module.uses)  # rebuilt from the card
    assert loaded.card.evidence_structures(Joint.KNEE) == model.card.evidence_structures(Joint.KNEE)


def test_cards_without_evidence_load_as_before():
    card = new_card(UNetConfig.reduced())
    values = card.to_json().replace('"evidence": {},', "")  # a card written before evidence readouts
    assert '"evidence"' not in values
    old = SystemCard.from_json(values)
    assert old.evidence == {} and not OrthoModel(old).evidence and not old.evidence_structures(Joint.KNEE)


@pytest.mark.parametrize("joint, labels, message", [
    (Joint.KNEE, {"MM": "patella tendon"}, "unknown labels or structures"),
    (Joint.KNEE, {"XX": "medial meniscus"}, "unknown labels or structures"),
    (Joint.SHOULDER, {"SSP": "medial meniscus"}, "needs its segmentation"),
])
def test_evidence_naming_what_the_model_cannot_read_is_refused(joint, labels, message):
    card = new_card(UNetConfig.reduced())
    with pytest.raises(CheckpointError, match=message):
        OrthoModel(dataclasses.replace(card, evidence={joint: labels}))
