"""Issue 6: the bundle's backbone pretraining really changes the backbones the heads read; the shipped model
follows the full recipe."""

from __future__ import annotations

import dataclasses
import math

import torch

from ortho_node.config import BUNDLED_MODEL
from ortho_node.labels import Joint
from ortho_node.model.bundle import PROFILES, new_bundle_model, pretrain_backbones
from ortho_node.model.system import OrthoModel, new_card, read_system_card
from ortho_node.model.taskdata import TaskData
from ortho_node.model.unet import UNetConfig


def test_pretraining_updates_every_plane_backbone():
    torch.manual_seed(0)
    model = OrthoModel(new_card(UNetConfig.reduced(), joints=(Joint.KNEE,)))
    before = {k: v.clone() for k, v in model.backbones.state_dict().items()}
    images = torch.rand(3, 3, 1, 16, 64, 64) * 2 - 1
    knee = TaskData(Joint.KNEE, images, torch.ones(3, 3, dtype=torch.bool), None, torch.zeros(3, 8),
                    torch.zeros(3, 8), ("a", "b", "c"))
    profile = dataclasses.replace(PROFILES["quick"], pretrain_steps=4, pretrain_batch=2)
    losses = pretrain_backbones(model, knee, profile, seed=0, device=torch.device("cpu"))
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses.values())
    after = model.backbones.state_dict()
    for plane in ("sagittal", "coronal", "axial"):
        name = f"{plane}.denoise_fn.input_blocks.0.0.weight"
        assert not torch.equal(before[name], after[name]), plane


def test_bundle_profile_sets_the_decoder_widths():
    assert new_bundle_model(PROFILES["quick"]).card.segmentation_widths == ()  # halving per stage
    wide = new_bundle_model(PROFILES["full"])
    assert wide.card.segmentation_widths == (32, 32, 16, 16)
    assert wide.segmentation["sagittal"].widths == (32, 32, 16, 16)


def test_shipped_model_has_the_full_recipes_decoder():
    # The one documented command must rebuild what ships: a recipe change without a retrain fails here.
    assert read_system_card(BUNDLED_MODEL).segmentation_widths == PROFILES["full"].decoder_widths
