"""One card module for both kinds of model: the kind is written, older cards still load, kinds never mix."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import pytest

from ortho_node.labels import Plane
from ortho_node.model.card import CARD_FILE, WEIGHTS_FILE, CardKind, CheckpointError, card_kind
from ortho_node.model.checkpoint import ModelCard, preprocess_spec_for, read_card, save_checkpoint
from ortho_node.model.system import SystemCard, read_system_card


def _backbone_card(model) -> ModelCard:
    unet = model.denoise_fn.config
    return ModelCard(plane=Plane.AXIAL, unet=unet, diffusion=model.config, preprocessing=preprocess_spec_for(unet),
                     version="t", source="test", training_data="-", step=1)


def test_saved_backbone_card_names_its_kind_and_is_readable_by_all(tiny_model, tmp_path):
    save_checkpoint(tmp_path, tiny_model, _backbone_card(tiny_model))
    assert json.loads((tmp_path / CARD_FILE).read_text())["kind"] == "backbone"
    assert stat.S_IMODE((tmp_path / WEIGHTS_FILE).stat().st_mode) == 0o644  # one saver: the same permissions
    assert read_card(tmp_path).step == 1
    with pytest.raises(CheckpointError, match="not a task-model card"):
        read_system_card(tmp_path)


def test_cards_without_kind_load_by_their_keys(tiny_model, old_card_folder):
    text = _backbone_card(tiny_model).to_json()
    older = {k: v for k, v in json.loads(text).items() if k != "kind"}
    assert card_kind(older) is CardKind.BACKBONE and ModelCard.from_json(json.dumps(older)).step == 1
    shipped = json.loads((old_card_folder / CARD_FILE).read_text())
    assert "kind" not in shipped and card_kind(shipped) is CardKind.SYSTEM
    assert isinstance(read_system_card(old_card_folder), SystemCard)
    with pytest.raises(CheckpointError, match="not a backbone card"):
        read_card(old_card_folder)


def test_the_predictor_imports_neither_training_nor_the_generator():
    code = ("import sys, ortho_node.inference.predictor; print(sorted(m for m in sys.modules if m.startswith("
            "('ortho_node.training', 'ortho_node.synthetic', 'nibabel'))))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
