"""Pretraining: a reduced backbone learns (overfits a handful of volumes) and the CLI run resumes."""

from __future__ import annotations

import argparse
import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from ortho_node.labels import Plane
from ortho_node.model.checkpoint import build_model, load_checkpoint
from ortho_node.training.pretrain import BACKBONE_DIR, STATE_FILE, PretrainSettings, add_arguments, run, update_ema
from ortho_node.model.unet import UNetConfig


def test_reduced_backbone_overfits_a_handful_of_volumes(smooth_volume):
    """Held-out (t, eps) pairs on the training volumes: the loss must fall at least tenfold in 180 steps (the time
    this takes is a benchmark's figure, not a test's: bench/backbone.py)."""
    torch.manual_seed(0)
    config = dataclasses.replace(UNetConfig.reduced(), image_size=32)
    model = build_model(config)
    volumes = torch.stack([torch.from_numpy(smooth_volume((16, 32, 32), seed=k)) for k in range(4)])[:, None]
    volumes = volumes / volumes.amax(dim=(1, 2, 3, 4), keepdim=True) * 2 - 1
    generator = torch.Generator().manual_seed(1)
    eval_x0 = volumes.repeat(4, 1, 1, 1, 1)
    eval_t = torch.linspace(0, 999, len(eval_x0)).long()
    eval_noise = torch.randn(eval_x0.shape, generator=generator)

    def held_out_loss() -> float:
        with torch.no_grad():
            return model.training_losses(eval_x0, eval_t, eval_noise).item()

    initial = held_out_loss()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(180):
        loss = model.training_losses(volumes)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    final = held_out_loss()
    assert final < initial / 10, (initial, final)


def _args(data, out, steps: int, resume: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--plane", "sagittal", "--data", str(data), "--out", str(out), "--unet", "reduced", "--steps",
            str(steps), "--batch-size", "2", "--lr", "1e-3", "--ema-start", "2", "--ema-every", "1",
            "--checkpoint-every", "2", "--device", "cpu"]  # fmt: skip
    return parser.parse_args(argv + (["--resume"] if resume else []))


def test_pretrain_runs_checkpoints_and_resumes(tmp_path, smooth_volume):
    # the sagittal volumes: their third voxel axis points along x (left-right)
    for k in range(3):
        folder = tmp_path / "data" / f"study{k}"
        folder.mkdir(parents=True)
        affine = np.array([[0, 0, 3.0, 0], [0.4, 0, 0, 0], [0, 0.4, 0, 0], [0, 0, 0, 1]])
        nib.save(nib.Nifti1Image(smooth_volume((64, 64, 18), seed=k), affine), folder / "t2_sag.nii.gz")
    # an axial volume (identity affine: slices along z) must be left out of a sagittal run
    nib.save(nib.Nifti1Image(smooth_volume((64, 64, 18), seed=9), np.eye(4)), tmp_path / "data" / "study0" / "ax.nii")
    out = tmp_path / "out"
    assert run(_args(tmp_path / "data", out, steps=2)) == 0
    first = torch.load(out / STATE_FILE, weights_only=True)
    assert first["step"] == 2 and set(first) >= {"step", "model", "ema", "opt"}

    assert run(_args(tmp_path / "data", out, steps=4)) == 2  # refuses to overwrite without --resume
    assert run(_args(tmp_path / "data", out, steps=4, resume=True)) == 0
    second = torch.load(out / STATE_FILE, weights_only=True)
    assert second["step"] == 4
    changed = [k for k in first["model"] if not torch.equal(first["model"][k], second["model"][k])]
    assert changed, "resumed training did not update the weights"

    model, card = load_checkpoint(out / BACKBONE_DIR)
    assert card.step == 4 and card.plane is Plane.SAGITTAL and card.unet == UNetConfig.reduced()
    assert "3 unlabelled sagittal volumes" in card.training_data and np.isfinite(card.metrics["train_loss"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in second["ema"].items())
    assert json.loads(second["settings"])["unet"] == "reduced"


def test_pretrain_reports_missing_data(tmp_path):
    (tmp_path / "empty").mkdir()
    assert run(_args(tmp_path / "empty", tmp_path / "out", steps=1)) == 2


def test_ema_copies_before_its_start_and_averages_after(tiny_model):
    settings = PretrainSettings(ema_every=10, ema_start=20, ema_decay=0.9)
    ema = build_model(tiny_model.denoise_fn.config)
    weight = lambda m: m.denoise_fn.out[2].bias  # noqa: E731
    with torch.no_grad():
        weight(tiny_model).fill_(1.0)
        weight(ema).fill_(0.0)
    update_ema(ema, tiny_model, 15, settings)  # not a multiple of ema_every: nothing
    assert weight(ema).item() == 0.0
    update_ema(ema, tiny_model, 10, settings)  # before ema_start: copy
    assert weight(ema).item() == 1.0
    with torch.no_grad():
        weight(tiny_model).fill_(2.0)
    update_ema(ema, tiny_model, 20, settings)  # from ema_start: 0.9 * 1 + 0.1 * 2
    assert weight(ema).item() == pytest.approx(1.1)
