"""Issue 6: the bundle's backbone pretraining really changes the backbones the heads read; its calibration
chooses the structure scales and fits every joint's evidence readout; the one command runs every phase; the
shipped model follows the full recipe."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from ortho_node.config import BUNDLED_MODEL
from ortho_node.inference.predictor import Predictor
from ortho_node.labels import DIAGNOSIS_LABELS, Joint
from ortho_node.training import bundle
from ortho_node.training.bundle import (
    PROFILES, READOUT_STRUCTURES, STRUCTURE_SCALES, main, new_bundle_model, pretrain_backbones, recalibrate,
)
from ortho_node.model.system import OrthoModel, load_system, new_card, read_system_card, save_system
from ortho_node.training.augmentation import WindowAugmentation
from ortho_node.training.taskdata import TaskData, assembled_from_synthetic
from ortho_node.model.unet import UNetConfig
from ortho_node.synthetic import RandomizedAppearance, generate_study


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


def test_shipped_model_follows_the_full_recipe():
    # The one documented command must rebuild what ships: a recipe change without a retrain fails here.
    card = read_system_card(BUNDLED_MODEL)
    full = PROFILES["full"]
    assert card.training["randomized_ratio"] == full.randomized_ratio
    assert card.preprocessing.normalisation == full.normalisation and card.preprocessing.crop_mm == full.crop_mm
    assert card.segmentation_widths == PROFILES["full"].decoder_widths
    assert card.evidence == READOUT_STRUCTURES
    assert card.segmentation_draws == PROFILES["full"].segmentation_draws
    assert len(card.structure_scales) == len(card.structures) and set(card.structure_scales) <= set(STRUCTURE_SCALES)


def test_calibrate_only_chooses_scales_fits_every_joints_readout_and_records_it(tmp_path, monkeypatch):
    # The bundle's calibration phases on a saved model, as `ortho-node train bundle --calibrate-only` runs them:
    # structure scales from the knee validation studies, readouts on fresh studies, thresholds from the
    # validation split, figures and the command in the card.
    tiny = dataclasses.replace(PROFILES["quick"], knee=5, ankle=5, shoulder=5, test=2, evidence=4)
    monkeypatch.setitem(PROFILES, "tiny", tiny)
    torch.manual_seed(0)
    save_system(tmp_path, new_bundle_model(tiny))
    recalibrate(tmp_path, "tiny", 0, 0, torch.device("cpu"), "ortho-node train bundle --calibrate-only", 1)
    card = read_system_card(tmp_path)
    assert card.evidence == READOUT_STRUCTURES
    assert card.training["calibration_command"] == "ortho-node train bundle --calibrate-only"
    assert card.segmentation_draws == tiny.segmentation_draws
    assert len(card.structure_scales) == len(card.structures) and card.structure_scales[0] == 1.0
    assert set(card.structure_scales) <= set(STRUCTURE_SCALES)
    for name, scale in zip(card.structures[1:], card.structure_scales[1:]):
        unscaled = card.metrics[f"knee-seg/val/source_dice/{name}"]
        scaled = card.metrics[f"knee-seg/val/source_dice_scaled/{name}"]
        # A scale other than 1 is kept only when it scored higher (NaN: no validation series holds it).
        assert scaled > unscaled if scale != 1.0 else (scaled == unscaled or math.isnan(unscaled))
    for joint in READOUT_STRUCTURES:
        task = f"{joint.value}-dx"
        for label in DIAGNOSIS_LABELS[joint]:
            assert f"{task}/test/auc/{label}" in card.metrics and f"{task}/test/head_auc/{label}" in card.metrics
            assert card.threshold(joint, label) == card.metrics[f"{task}/val/threshold/{label}"]
    fitted = load_system(tmp_path).evidence
    assert all(fitted[j.value].weight.abs().sum() > 0 for j in READOUT_STRUCTURES)
    assert card.metrics["seconds/evidence_readout"] > 0 and card.metrics["seconds/structure_scales"] > 0


@pytest.mark.timeout(1200)  # two tiny builds
def test_the_one_command_runs_every_phase_into_a_model_the_predictor_loads_and_resumes_a_stopped_run(
        tmp_path, monkeypatch):
    # `ortho-node train bundle` end to end on a tiny profile: every phase's seconds and figures in the card, the
    # calibration's draws, scales and readouts, and a model folder that predicts.
    tiny = dataclasses.replace(PROFILES["quick"], knee=5, ankle=3, shoulder=3, test=2, pretrain_steps=2, epochs=1,
                               evidence=3, augment_windows=True)
    monkeypatch.setitem(PROFILES, "tiny", tiny)
    flags = ["--profile", "tiny", "--workers", "1", "--threads", "2"]
    assert main([*flags, "--out", str(tmp_path)]) == 0
    card = read_system_card(tmp_path)
    assert card.training["command"].startswith("ortho-node train bundle --out") and "--profile tiny" in \
        card.training["command"]
    assert card.training["randomized_ratio"] == tiny.randomized_ratio  # the mix's recipe (issue 21)
    assert RandomizedAppearance.from_dict(card.training["randomized_appearance"]) == tiny.appearance
    assert WindowAugmentation.from_dict(card.training["window_augmentation"]) == WindowAugmentation()
    # Which code made each phase: this checkout's commit (a card must say which generator and trainer made it).
    assert card.training["code_commits"].keys() == set(bundle.PHASES)
    assert set(card.training["code_commits"].values()) == {bundle.source_commit()} != {"unknown"}
    for phase in ("generate", "pretrain", "finetune", "refine_segmentation", "structure_scales", "evidence_readout"):
        assert card.metrics[f"seconds/{phase}"] > 0, phase
    assert card.metrics["seconds/total"] >= sum(card.metrics[f"seconds/{p}"] for p in ("pretrain", "finetune"))
    assert card.segmentation_draws == tiny.segmentation_draws and len(card.structure_scales) == len(card.structures)
    assert card.evidence == READOUT_STRUCTURES and all(f"{t}/test/score" in card.metrics for t in
                                                       ("knee-seg", "knee-dx", "ankle-dx", "shoulder-dx"))
    predictor = Predictor.from_checkpoint(tmp_path, "cpu", locate=lambda uid: Path(uid))
    study = assembled_from_synthetic(generate_study(Joint.KNEE, 7, scene_spacing=1.0))
    prediction = predictor.predict(study)
    assert len(prediction.findings) == len(DIAGNOSIS_LABELS[Joint.KNEE])
    assert {s.plane for s in prediction.segmentations} == set(study.planes)
    assert not (tmp_path.parent / f"{tmp_path.name}.state").exists()  # the run's state goes with success

    # Stopped during calibration, the run continues there with --resume (no phase before it runs again) into
    # the model the unbroken run wrote.
    calibrate = bundle.calibrate
    monkeypatch.setattr(bundle, "calibrate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    out = tmp_path / "pieces"
    with pytest.raises(KeyboardInterrupt):
        main([*flags, "--out", str(out)])
    state = tmp_path / "pieces.state"
    assert json.loads((state / "run.json").read_text())["phases"].keys() == {
        "generate", "pretrain", "finetune", "refine_segmentation"}
    assert main([*flags, "--out", str(out)]) == 2  # a stopped run is never overwritten without --resume
    assert main([*flags, "--out", str(out), "--resume", "--seed", "1"]) == 2  # nor continued as another run
    monkeypatch.setattr(bundle, "calibrate", calibrate)
    for phase in ("pretrain_backbones", "train_joint", "refine_segmentation", "_data"):
        monkeypatch.setattr(bundle, phase, lambda *a, **k: pytest.fail("a finished phase ran again"))
    assert main([*flags, "--out", str(out), "--resume"]) == 0
    assert not state.exists()
    whole, pieces = load_system(tmp_path), load_system(out)
    assert all(torch.equal(v, pieces.state_dict()[k]) for k, v in whole.state_dict().items())
    for name, value in whole.card.metrics.items():  # the same figures; only the seconds differ
        assert name.startswith("seconds/") or pieces.card.metrics[name] == pytest.approx(value, nan_ok=True), name
