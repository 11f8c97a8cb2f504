"""Official ``.pt`` files and our safetensors + model card format: load, convert, round trip, refuse."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from ortho_node.labels import Plane
from ortho_node.model.card import CARD_FILE, WEIGHTS_FILE, CheckpointError
from ortho_node.model.checkpoint import (
    ModelCard,
    convert_official,
    load_checkpoint,
    load_official,
    preprocess_spec_for,
    read_card,
    save_checkpoint,
)
from ortho_node.model.unet import UNetConfig


def _perturbed(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Distinct, non-trivial values for every UNet tensor (buffers stay the schedule)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        k: v + torch.randn(v.shape, generator=generator) * 0.01 if k.startswith("denoise_fn.") else v.clone()
        for k, v in state.items()
    }


@pytest.fixture(scope="module")
def official_file(tmp_path_factory, official_model) -> tuple[Path, dict[str, torch.Tensor]]:
    """A file with the official layout: {step, model, ema, opt}, keys saved from a DDP-wrapped UNet."""
    ema = _perturbed(official_model.state_dict(), seed=1)
    ddp = {k.replace("denoise_fn.", "denoise_fn.module.", 1): v for k, v in ema.items()}
    raw = _perturbed(official_model.state_dict(), seed=2)
    opt = {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 1]}]}
    path = tmp_path_factory.mktemp("official") / "model-43.pt"
    torch.save({"step": 21499, "model": raw, "ema": ddp, "opt": opt}, path)
    return path, ema


def test_official_file_loads_its_ema_weights(official_file):
    path, ema = official_file
    model, step = load_official(path)
    assert step == 21499
    loaded = model.state_dict()
    assert loaded.keys() == ema.keys()
    assert all(torch.equal(loaded[k], ema[k]) for k in ema)


def test_conversion_round_trips_bit_exactly(official_file, tmp_path):
    path, ema = official_file
    card = convert_official(path, tmp_path / "sagittal", Plane.SAGITTAL, version="official-1.0")
    assert (tmp_path / "sagittal" / WEIGHTS_FILE).is_file()
    assert card == read_card(tmp_path / "sagittal")
    assert card.plane is Plane.SAGITTAL and card.step == 21499 and card.unet == UNetConfig.official()
    assert card.preprocessing.depth == 16 and card.preprocessing.size == 256
    assert len(card.weights_sha256) == 64
    model, reread = load_checkpoint(tmp_path / "sagittal")
    assert reread == card
    state = model.state_dict()
    assert state.keys() == ema.keys()
    for key, value in ema.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


def test_model_card_is_readable_json(official_file, tmp_path):
    convert_official(official_file[0], tmp_path, Plane.AXIAL, version="v", training_data="knee archive 2024")
    card = json.loads((tmp_path / CARD_FILE).read_text())
    assert card["plane"] == "axial" and card["training_data"] == "knee archive 2024"
    assert card["unet"]["channel_mult"] == [1, 1, 2, 2, 4] and card["diffusion"]["schedule"] == "cosine"
    assert ModelCard.from_json(json.dumps(card)).unet == UNetConfig.official()


def _official_with(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "bad.pt"
    torch.save({"step": 1, "model": state, "ema": state, "opt": {}}, path)
    return path


def test_unknown_missing_and_mismatched_tensors_are_listed(official_model, tmp_path):
    state = dict(official_model.state_dict())
    del state["denoise_fn.out.2.bias"]
    state["denoise_fn.extra_head.weight"] = torch.zeros(3)
    state["denoise_fn.input_blocks.0.0.weight"] = torch.zeros(32, 1, 3, 3, 3)
    with pytest.raises(CheckpointError) as error:
        load_official(_official_with(tmp_path, state))
    message = str(error.value)
    assert "missing (1): denoise_fn.out.2.bias" in message
    assert "unknown (1): denoise_fn.extra_head.weight" in message
    assert "denoise_fn.input_blocks.0.0.weight: checkpoint (32, 1, 3, 3, 3) != model (64, 1, 3, 3, 3)" in message


def test_files_that_are_not_official_checkpoints_are_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="expected an official checkpoint"):
        load_official(tmp_path / "other.pt")
    # Arbitrary pickled objects never execute: weights_only refuses them.
    torch.save({"ema": {}, "step": 0, "hook": argparse.Namespace(run="rm -rf /")}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported"):
        load_official(tmp_path / "evil.pt")


def test_tampered_weights_fail_the_hash_check(tiny_model, tmp_path):
    unet = tiny_model.denoise_fn.config
    card = ModelCard(plane=Plane.CORONAL, unet=unet, diffusion=tiny_model.config,
                     preprocessing=preprocess_spec_for(unet), version="t", source="test", training_data="-", step=3)
    save_checkpoint(tmp_path, tiny_model, card)
    weights = tmp_path / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path)
