"""Issue 6: metrics, data split, class weights, the task model's files and ``train finetune`` end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ortho_node.cli import main
from ortho_node.labels import DIAGNOSIS_LABELS, Joint, Plane
from ortho_node.model.checkpoint import CheckpointError, save_checkpoint
from ortho_node.model.finetune import pos_weight, split
from ortho_node.model.metrics import choose_threshold, dice_per_structure, mean_dice, roc_auc
from ortho_node.model.system import OrthoModel, load_system, new_card, read_system_card, save_system
from ortho_node.model.unet import UNetConfig


def test_auc_and_threshold_on_known_scores():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(scores, labels) == pytest.approx(0.75)
    assert math.isnan(roc_auc(scores, np.ones(4)))
    point = choose_threshold(np.array([0.1, 0.2, 0.7, 0.9]), np.array([0, 0, 1, 1]))
    assert 0.2 < point.threshold <= 0.7 and (point.sensitivity, point.specificity) == (1.0, 1.0)
    assert choose_threshold(scores, np.zeros(4)).threshold == 0.5


def test_dice_per_structure():
    target = np.zeros((2, 4, 4), np.uint8)
    target[0, :2] = 1
    prediction = target.copy()
    prediction[0, 0] = 0
    dice = dice_per_structure(prediction, target, 3)
    assert dice[0] == pytest.approx(2 * 4 / (4 + 8)) and math.isnan(dice[1])
    assert mean_dice([(target, target)], 3)[0] == 1.0


def test_split_is_deterministic_and_label_fraction_subsamples_training_only():
    train, val = split(100, 0.2, 1.0, seed=3)
    assert len(val) == 20 and len(train) == 80 and not set(train) & set(val)
    few, val_again = split(100, 0.2, 0.1, seed=3)
    assert np.array_equal(val, val_again) and len(few) == 8 and set(few) <= set(train)


def test_pos_weight_balances_rare_labels():
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert pos_weight(y).tolist() == [3.0, 1.0, 1.0]


def test_task_model_round_trip_and_tamper_check(tmp_path):
    torch.manual_seed(0)
    model = OrthoModel(new_card(UNetConfig.reduced(), version="rt"))
    card = save_system(tmp_path, model)
    loaded = load_system(tmp_path)
    assert loaded.card.diagnosis[Joint.ANKLE].labels == DIAGNOSIS_LABELS[Joint.ANKLE]
    loaded_state = loaded.state_dict()
    assert set(loaded_state) == set(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded_state[name]), name
    assert (tmp_path / "model.safetensors").stat().st_size < 25 * 2**20
    assert read_system_card(tmp_path).weights_sha256 == card.weights_sha256
    with (tmp_path / "model.safetensors").open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(CheckpointError, match="sha256"):
        load_system(tmp_path)


def test_pretrained_backbone_loads_into_the_task_model(tmp_path):
    from ortho_node.model.checkpoint import ModelCard, build_model, preprocess_spec_for

    torch.manual_seed(1)
    unet = UNetConfig.reduced()
    backbone = build_model(unet)
    card = ModelCard(Plane.CORONAL, unet, backbone.config, preprocess_spec_for(unet), "t", "test", "none", 1)
    save_checkpoint(tmp_path / "coronal", backbone, card)
    model = OrthoModel(new_card(unet))
    model.load_backbones({Plane.CORONAL: tmp_path / "coronal"})
    loaded = model.backbones["coronal"].state_dict()
    source = backbone.state_dict()
    assert loaded and all(torch.equal(v, source[k]) for k, v in loaded.items())


def test_finetune_cli_trains_a_diagnosis_head_and_stores_thresholds(tmp_path):
    out = tmp_path / "model"
    code = main(["train", "finetune", "--task", "ankle-dx", "--synthetic", "4", "--data-seed", "7", "--epochs", "1",
                 "--out", str(out), "--label-fraction", "0.5", "--device", "cpu"])
    assert code == 0
    card = read_system_card(out)
    assert set(card.diagnosis[Joint.ANKLE].thresholds) == set(DIAGNOSIS_LABELS[Joint.ANKLE])
    assert card.metrics["ankle-dx/train_studies"] == 2 and card.metrics["ankle-dx/val_studies"] == 1
    assert "--task ankle-dx" in card.training["ankle-dx"] and "--label-fraction 0.5" in card.training["ankle-dx"]
    assert load_system(out).card.version == card.version
