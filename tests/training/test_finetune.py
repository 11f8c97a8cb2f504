"""Issue 6: metrics, data split, class weights, the task model's files and ``train finetune`` end to end."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ortho_node.app.cli.main import main
from ortho_node.labels import DIAGNOSIS_LABELS, MODEL_PLANES, Joint, Plane
from ortho_node.model.card import CheckpointError
from ortho_node.model.checkpoint import save_checkpoint
from ortho_node.training.finetune import class_weight, pos_weight, split
from ortho_node.training.calibration import choose_threshold
from ortho_node.training.scores import dice_per_structure, mean_dice, roc_auc
from ortho_node.model.system import OrthoModel, SystemCard, load_system, new_card, read_system_card, save_system
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


def test_class_weight_favours_rare_structures_within_bounds():
    labels = torch.zeros(10_000, dtype=torch.uint8)
    labels[:2_500] = 1  # 4x rarer than background
    labels[2_500:2_510] = 2  # 1,000x rarer: clamped
    weights = class_weight(labels, 4)
    assert weights.tolist() == pytest.approx([1.0, math.sqrt(7_490 / 2_500), 10.0, 1.0])


def test_class_weights_count_only_the_slices_a_series_has():
    from ortho_node.training.taskdata import SliceStacks

    labels = torch.zeros((1, 2, 6, 4, 4), dtype=torch.uint8)  # one study, two planes, stacks of 6 slices
    labels[0, 0, :2] = 1  # plane 0: 2 slices of structure 1, then 2 background slices, then 2 of padding
    stacks = SliceStacks(torch.zeros(labels.shape), labels, torch.tensor([[4, 0]]))  # plane 1 absent
    real = stacks.series_labels()
    assert real.shape == (4, 4, 4)
    assert class_weight(real, 2).tolist() == pytest.approx([1.0, 1.0])  # 32 voxels each: balanced
    assert class_weight(labels, 2)[1] > 1.5  # counting padding and the absent plane would not be


def test_weighted_cross_entropy_raises_the_cost_of_missing_a_rare_structure():
    from ortho_node.model.heads import segmentation_loss

    target = torch.zeros((1, 2, 8, 8), dtype=torch.long)
    target[0, :, 0, 0] = 1  # two voxels of a thin structure
    logits = torch.zeros((1, 2, 2, 8, 8))
    logits[:, 0] = 4.0  # background everywhere: the thin structure is missed
    plain = segmentation_loss(logits, target)
    weighted = segmentation_loss(logits, target, torch.tensor([1.0, 10.0]))
    assert weighted > plain


def test_task_model_round_trip_and_tamper_check(tmp_path):
    torch.manual_seed(0)
    model = OrthoModel(new_card(UNetConfig.reduced(), version="rt"))
    card = save_system(tmp_path, model)
    loaded = load_system(tmp_path)
    assert loaded.card.diagnosis[Joint.ANKLE].labels == DIAGNOSIS_LABELS[Joint.ANKLE]
    loaded_state = loaded.state_dict()
    assert list(loaded_state) == list(model.state_dict())  # in order: a resumed optimiser's state follows it
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded_state[name]), name
    assert (tmp_path / "model.safetensors").stat().st_size < 25 * 2**20
    assert read_system_card(tmp_path).weights_sha256 == card.weights_sha256
    with (tmp_path / "model.safetensors").open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(CheckpointError, match="sha256"):
        load_system(tmp_path)


def test_reduced_model_decoders_read_encoder_skips_and_the_official_keeps_the_papers_decoder(tmp_path):
    reduced = new_card(UNetConfig.reduced())
    assert reduced.segmentation_skips == ("in_7", "in_5", "in_3", "in_1")
    assert new_card(UNetConfig.official()).segmentation_skips == ()
    assert SystemCard.from_json(reduced.to_json()).segmentation_skips == reduced.segmentation_skips
    model = OrthoModel(reduced)
    x_0 = torch.rand(1, 1, 16, 64, 64) * 2 - 1
    assert model.segment(Plane.CORONAL, x_0, torch.zeros_like(x_0)).shape == (1, 12, 16, 64, 64)
    with pytest.raises(CheckpointError, match="does not match decoder stage"):
        OrthoModel(dataclasses.replace(reduced, segmentation_skips=("in_1", "in_3", "in_5", "in_7")))
    with pytest.raises(CheckpointError, match="not an encoder block"):
        OrthoModel(dataclasses.replace(reduced, segmentation_skips=("in_7", "in_5", "in_3", "mid_2")))


def test_decoder_widths_come_from_the_card():
    """Halving per stage by default (32, 16, 8, 8 reduced); a card may widen the fine stages, and its
    widths survive the card's JSON (an older card without the field keeps the halving)."""
    reduced = new_card(UNetConfig.reduced())
    assert OrthoModel(reduced).segmentation["axial"].widths == (32, 16, 8, 8)
    wide = new_card(UNetConfig.reduced(), segmentation_widths=(32, 16, 16, 16))
    assert SystemCard.from_json(wide.to_json()).segmentation_widths == (32, 16, 16, 16)
    model = OrthoModel(wide)
    assert model.segmentation["axial"].widths == (32, 16, 16, 16)
    x_0 = torch.rand(1, 1, 16, 64, 64) * 2 - 1
    assert model.segment(Plane.AXIAL, x_0, torch.zeros_like(x_0)).shape == (1, 12, 16, 64, 64)
    with pytest.raises(CheckpointError, match="needs 4 stages"):
        OrthoModel(dataclasses.replace(reduced, segmentation_widths=(32, 16)))


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


def _official_file(path, unet: UNetConfig, seed: int):
    """A file in the official layout ({step, model, ema, opt}, DDP-prefixed EMA keys) for ``unet``."""
    from ortho_node.model.checkpoint import build_model

    torch.manual_seed(seed)
    ema = build_model(unet).state_dict()
    ddp = {k.replace("denoise_fn.", "denoise_fn.module.", 1): v for k, v in ema.items()}
    torch.save({"step": 100, "model": ema, "ema": ddp, "opt": {}}, path)
    return ema


def test_finetune_starts_from_an_official_checkpoint_file_per_plane(tmp_path):
    ema = _official_file(tmp_path / "sagittal.pt", UNetConfig.reduced(), seed=4)
    out = tmp_path / "model"
    assert main(["train", "finetune", "--task", "ankle-dx", "--synthetic", "3", "--epochs", "1", "--out", str(out),
                 "--backbone", f"sagittal={tmp_path / 'sagittal.pt'}", "--unet", "reduced",
                 "--backbone-lr-factor", "0", "--device", "cpu"]) == 0
    loaded = load_system(out).backbones["sagittal"].state_dict()
    assert loaded and all(torch.equal(v, ema[k]) for k, v in loaded.items())  # frozen: the file's EMA weights
    assert f"--backbone sagittal={tmp_path / 'sagittal.pt'}" in read_system_card(out).training["ankle-dx"]
    # An official file read in another configuration: every misfit named, nothing trained.
    assert main(["train", "finetune", "--task", "ankle-dx", "--synthetic", "3", "--epochs", "1",
                 "--out", str(tmp_path / "other"), "--backbone", f"axial={tmp_path / 'sagittal.pt'}",
                 "--device", "cpu"]) == 2
    assert not (tmp_path / "other").exists()


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


def test_finetune_cli_continues_a_stopped_run_from_its_checkpoint_as_if_never_stopped(tmp_path, monkeypatch, caplog):
    from ortho_node.training import finetune

    def command(name: str) -> list[str]:
        return ["train", "finetune", "--task", "ankle-dx", "--synthetic", "4", "--data-seed", "7", "--epochs", "2",
                "--out", str(tmp_path / name), "--checkpoint", str(tmp_path / f"{name}.epochs.pt"), "--device", "cpu"]

    torch.manual_seed(0)
    assert main(command("whole")) == 0
    assert not (tmp_path / "whole.epochs.pt").exists()  # gone once the model is written

    class Stopped(Exception):
        pass

    save = finetune.EpochCheckpoint.save

    def save_then_stop(self, *args):
        save(self, *args)
        raise Stopped  # the machine went down after the first epoch was kept

    monkeypatch.setattr(finetune.EpochCheckpoint, "save", save_then_stop)
    torch.manual_seed(0)
    with pytest.raises(Stopped):
        main(command("stopped"))
    monkeypatch.setattr(finetune.EpochCheckpoint, "save", save)
    torch.manual_seed(1)  # another start: the weights come from the checkpoint
    with caplog.at_level("INFO", logger="ortho_node.training.finetune"):
        assert main(command("stopped")) == 0
    assert "after epoch 1" in caplog.text
    whole, resumed = load_system(tmp_path / "whole").state_dict(), load_system(tmp_path / "stopped").state_dict()
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    assert read_system_card(tmp_path / "stopped").diagnosis[Joint.ANKLE].thresholds == \
        read_system_card(tmp_path / "whole").diagnosis[Joint.ANKLE].thresholds

    torch.save({"identity": "ortho-node train finetune --task knee-dx", "epoch": 1}, tmp_path / "other.epochs.pt")
    caplog.clear()
    assert main(command("other")) == 2  # another run's file is refused, not continued
    assert "holds another run (ortho-node train finetune --task knee-dx)" in caplog.text


def test_task_data_is_the_same_from_worker_processes_and_survives_save_and_load(tmp_path):
    from ortho_node.training.taskdata import TaskData, generate_task_data

    spec = new_card(UNetConfig.reduced()).preprocessing
    serial = generate_task_data(Joint.KNEE, [3, 4], spec)
    parallel = generate_task_data(Joint.KNEE, [3, 4], spec, workers=2)
    serial.save(tmp_path / "knee.pt")
    loaded = TaskData.load(tmp_path / "knee.pt")
    for other in (parallel, loaded):
        assert other.study_uids == serial.study_uids
        for name in ("images", "present", "segmentation", "diagnosis", "clinical"):
            assert torch.equal(getattr(other, name), getattr(serial, name)), name
        for name in ("images", "labels", "lengths"):
            assert torch.equal(getattr(other.stacks, name), getattr(serial.stacks, name)), name


def test_segmentation_trains_on_windows_anywhere_in_the_series_scaled_as_inference_scales_them():
    from ortho_node.model.preprocessing import labels_to_model_grid, preprocess_volume
    from ortho_node.training.taskdata import assembled_from_synthetic, generate_task_data
    from ortho_node.synthetic import generate_study

    spec = new_card(UNetConfig.reduced()).preprocessing
    data = generate_task_data(Joint.KNEE, [5], spec)
    study = generate_study(Joint.KNEE, 5, findings="random", scene_spacing=1.0)  # as generate_task_data
    assembled = assembled_from_synthetic(study)
    generator = torch.Generator().manual_seed(0)
    seen: dict[int, set[int]] = {i: set() for i in range(len(MODEL_PLANES))}
    for _ in range(40):
        images, labels = data.segmentation_batch(torch.tensor([0]), generator)
        for i, plane in enumerate(MODEL_PLANES):
            pixels, truth = assembled.planes[plane].pixels, study.series_for(plane).labels
            assert int(data.stacks.lengths[0, i]) == len(pixels)
            # Which source window is it? The one whose preprocessing it equals, labels included.
            starts = [s for s in range(len(pixels) - spec.depth + 1)
                      if torch.allclose(preprocess_volume(pixels[s : s + spec.depth], spec)[0], images[0, i], atol=1e-6)]
            assert len(starts) == 1, plane
            expected = labels_to_model_grid(truth[starts[0] : starts[0] + spec.depth], spec)
            assert torch.equal(labels[0, i].long(), expected)
            seen[i].add(starts[0])
    for i, plane in enumerate(MODEL_PLANES):  # every window of the series is drawn, not only the centre one
        assert seen[i] == set(range(len(assembled.planes[plane].pixels) - spec.depth + 1)), plane
    # Evaluation (no generator) keeps the official centre window.
    images, labels = data.segmentation_batch(torch.tensor([0]), None)
    assert torch.equal(images, data.images[:1]) and torch.equal(labels, data.segmentation[:1])


def _random_task_data(joint: Joint, n: int, seed: int, segmentation: bool):
    from ortho_node.training.taskdata import TaskData

    g = torch.Generator().manual_seed(seed)
    labels = len(DIAGNOSIS_LABELS[joint])
    diagnosis = (torch.arange(n)[:, None] + torch.arange(labels)[None]) % 2  # every label has both classes
    return TaskData(joint, torch.rand((n, 3, 1, 16, 64, 64), generator=g) * 2 - 1, torch.ones((n, 3), dtype=torch.bool),
                    torch.randint(0, 12, (n, 3, 16, 64, 64), generator=g, dtype=torch.uint8) if segmentation else None,
                    diagnosis.float(), torch.zeros((n, 8)), tuple(f"1.2.{seed}.{i}" for i in range(n)))


def test_joint_fine_tuning_trains_every_head_and_the_shared_backbones_and_keeps_thresholds():
    from ortho_node.training.finetune import FinetuneSettings, Task, train_joint
    from ortho_node.model.runtime import DeviceChoice

    torch.manual_seed(0)
    model = OrthoModel(new_card(UNetConfig.reduced()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    splits = {task: (_random_task_data(task.joint, 2, 1, task.segmentation),
                     _random_task_data(task.joint, 2, 2, task.segmentation)) for task in Task}
    results = train_joint(model, splits, FinetuneSettings(epochs=1, device=DeviceChoice.CPU))
    assert set(results) == set(Task)
    assert results[Task.ANKLE_DX].thresholds.keys() == set(DIAGNOSIS_LABELS[Joint.ANKLE])
    assert "dice/femur" in results[Task.KNEE_SEG].metrics
    after = model.state_dict()
    for prefix in ("backbones.sagittal.denoise_fn.input_blocks.1", "segmentation.axial", "diagnosis.knee",
                   "diagnosis.ankle", "diagnosis.shoulder"):
        names = [k for k in after if k.startswith(prefix) and after[k].is_floating_point()]
        assert names and any(not torch.equal(before[k], after[k]) for k in names), prefix


def test_segmentation_refinement_trains_only_the_decoders():
    from ortho_node.training.bundle import PROFILES, refine_segmentation
    from ortho_node.training.finetune import FinetuneSettings
    from ortho_node.model.runtime import DeviceChoice

    torch.manual_seed(0)
    model = OrthoModel(new_card(UNetConfig.reduced()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, val = _random_task_data(Joint.KNEE, 2, 1, True), _random_task_data(Joint.KNEE, 2, 2, True)
    joint = FinetuneSettings(epochs=1, device=DeviceChoice.CPU)
    result = refine_segmentation(model, train, val, joint, PROFILES["quick"])
    assert "dice/femur" in result.metrics
    after = model.state_dict()
    changed = {k for k in after if after[k].is_floating_point() and not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("segmentation.") for k in changed)
    assert all(p.requires_grad for p in model.parameters())  # the frozen backbones are released again
