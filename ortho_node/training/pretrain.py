"""``ortho-node train pretrain``: self-supervised diffusion pretraining of one plane's backbone.

Official defaults (DESIGN.md section 4): Adam lr 1e-4, batch 10, 21,500 steps, EMA 0.995 every 10 steps after
step 2,000 (before that the EMA copy just follows the weights). ``--out`` receives ``train_state.pt`` (the
official ``{step, model, ema, opt}`` layout plus our RNG state and settings; ``--resume`` continues from it)
and ``backbone/`` (the EMA weights in our safetensors + model card format), both rewritten every
``--checkpoint-every`` steps and at the end.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ortho_node.labels import MODEL_PLANES, Plane
from ortho_node.model.checkpoint import ModelCard, build_model, preprocess_spec_for, save_checkpoint
from ortho_node.training.volumes import find_volumes, read_volume
from ortho_node.model.diffusion import GaussianDiffusion
from ortho_node.model.preprocessing import PreprocessSpec, preprocess_volume
from ortho_node.model.runtime import DeviceChoice, autocast, match_memory_format, place_model, resolve_device
from ortho_node.model.unet import UNetConfig

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
BACKBONE_DIR = "backbone"
EXIT_OK, EXIT_USAGE = 0, 2


class PretrainError(RuntimeError):
    """A problem with the inputs of a pretraining run (no data, a state that does not match)."""


@dataclass(frozen=True)
class PretrainSettings:
    plane: Plane
    data: Path
    out: Path
    steps: int = 21_500
    batch_size: int = 10
    lr: float = 1e-4
    config: str = "official"
    ema_decay: float = 0.995
    ema_every: int = 10
    ema_start: int = 2_000
    checkpoint_every: int = 500
    resume: bool = False
    device: DeviceChoice = DeviceChoice.AUTO
    seed: int = 0

    def to_json(self) -> str:
        values = dataclasses.asdict(self)
        values.update(plane=self.plane.value, data=str(self.data), out=str(self.out), device=self.device.value)
        return json.dumps(values, sort_keys=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train pretrain`` flags; defaults are the official hyper-parameters."""
    d = PretrainSettings(plane=Plane.SAGITTAL, data=Path(), out=Path())
    parser.add_argument("--plane", required=True, choices=[p.value for p in MODEL_PLANES])
    parser.add_argument("--data", required=True, type=Path, help="folder of NIfTI files and/or DICOM series")
    parser.add_argument("--out", required=True, type=Path, help="folder for the training state and backbone")
    parser.add_argument("--steps", type=int, default=d.steps, help="total optimiser steps")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--config", choices=("official", "reduced"), default=d.config, help="UNet size preset")
    parser.add_argument("--ema-decay", type=float, default=d.ema_decay)
    parser.add_argument("--ema-every", type=int, default=d.ema_every, help="EMA update period in steps")
    parser.add_argument("--ema-start", type=int, default=d.ema_start, help="step from which the EMA averages")
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--resume", action="store_true", help=f"continue from --out/{STATE_FILE}")
    parser.add_argument("--device", choices=[c.value for c in DeviceChoice], default=d.device.value)
    parser.add_argument("--seed", type=int, default=d.seed)


def settings_from_args(args: argparse.Namespace) -> PretrainSettings:
    return PretrainSettings(
        plane=Plane(args.plane),
        data=args.data,
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        config=args.config,
        ema_decay=args.ema_decay,
        ema_every=args.ema_every,
        ema_start=args.ema_start,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        device=DeviceChoice(args.device),
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    """Entry point for the CLI: returns 0 on success, 2 when the inputs cannot be used."""
    try:
        pretrain(settings_from_args(args))
    except PretrainError as error:
        logger.error("pretraining not started: %s", error)
        return EXIT_USAGE
    return EXIT_OK


def load_training_set(data: Path, plane: Plane, spec: PreprocessSpec) -> torch.Tensor:
    """Every readable volume of ``plane`` under ``data``, preprocessed: [N, 1, D, S, S] float32 (CPU).

    Kept in memory (4 MiB per volume at the official size) so steps never wait on disk.
    """
    volumes = []
    for source in find_volumes(data):
        if source.plane is not plane:
            logger.debug("skipping %s: %s plane", source.path, source.plane.value)
            continue
        try:
            volumes.append(preprocess_volume(read_volume(source), spec)[0])
        except ValueError as error:  # includes ConstantVolumeError
            logger.warning("skipping %s: %s", source.path, error)
    if not volumes:
        raise PretrainError(f"no usable {plane.value} volumes under {data}")
    logger.info("loaded %d %s volumes from %s", len(volumes), plane.value, data)
    return torch.stack(volumes)


@torch.no_grad()
def update_ema(ema: GaussianDiffusion, model: GaussianDiffusion, step: int, settings: PretrainSettings) -> None:
    """Every ``ema_every`` steps: copy the weights before ``ema_start``, average them after (official)."""
    if step % settings.ema_every:
        return
    if step < settings.ema_start:
        ema.load_state_dict(model.state_dict())
        return
    for averaged, current in zip(ema.parameters(), model.parameters()):
        averaged.lerp_(current, 1.0 - settings.ema_decay)


def _save_state(path: Path, step: int, model, ema, opt, rng: torch.Generator, settings: PretrainSettings) -> None:
    tmp = path.with_suffix(".tmp")
    state = {"step": step, "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict()}
    torch.save({**state, "rng": rng.get_state(), "settings": settings.to_json()}, tmp)
    tmp.replace(path)


def _restore_state(path: Path, model, ema, opt, rng: torch.Generator, settings: PretrainSettings) -> int:
    data = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(data.get("settings", "{}"))
    for key in ("plane", "config"):
        if saved.get(key) != json.loads(settings.to_json())[key]:
            raise PretrainError(f"{path} was trained with {key}={saved.get(key)!r}, not {getattr(settings, key)!r}")
    model.load_state_dict(data["model"])
    ema.load_state_dict(data["ema"])
    opt.load_state_dict(data["opt"])
    rng.set_state(data["rng"])
    logger.info("resumed from %s at step %d", path, data["step"])
    return int(data["step"])


def _card(settings: PretrainSettings, model: GaussianDiffusion, step: int, loss: float, n: int) -> ModelCard:
    unet = model.denoise_fn.config
    return ModelCard(
        plane=settings.plane,
        unet=unet,
        diffusion=model.config,
        preprocessing=preprocess_spec_for(unet),
        version=f"pretrain-{settings.plane.value}-{settings.config}-step{step}",
        source="ortho-node train pretrain",
        training_data=f"{n} unlabelled {settings.plane.value} volumes from {settings.data}",
        step=step,
        metrics={"train_loss": loss},
    )


def pretrain(settings: PretrainSettings) -> float:
    """Train (or continue training) one plane's backbone; returns the mean loss of the last period."""
    state_path = settings.out / STATE_FILE
    if state_path.exists() and not settings.resume:
        raise PretrainError(f"{state_path} exists: pass --resume, or choose another --out")
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    unet_config = UNetConfig.named(settings.config)
    volumes = load_training_set(settings.data, settings.plane, preprocess_spec_for(unet_config))
    model = place_model(build_model(unet_config), device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    rng = torch.Generator().manual_seed(settings.seed)
    step = 0
    if settings.resume and state_path.exists():
        step = _restore_state(state_path, model, ema, opt, rng, settings)
    elif settings.resume:
        logger.warning("--resume: no %s yet, starting from scratch", state_path)
    settings.out.mkdir(parents=True, exist_ok=True)
    period_losses: list[float] = []
    mean_loss = math.nan
    with tqdm(total=settings.steps, initial=step, desc=f"pretrain {settings.plane.value}", unit="step") as bar:
        while step < settings.steps:
            loss = _train_step(model, opt, volumes, settings.batch_size, rng, device)
            step += 1
            update_ema(ema, model, step, settings)
            period_losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if step % settings.checkpoint_every == 0 or step == settings.steps:
                mean_loss = sum(period_losses) / len(period_losses)
                period_losses.clear()
                _save_state(state_path, step, model, ema, opt, rng, settings)
                save_checkpoint(settings.out / BACKBONE_DIR, ema, _card(settings, ema, step, mean_loss, len(volumes)))
                logger.info("step %d: mean loss %.5f, checkpoint written to %s", step, mean_loss, settings.out)
    return mean_loss


def _train_step(
    model: GaussianDiffusion,
    opt: torch.optim.Optimizer,
    volumes: torch.Tensor,
    batch: int,
    rng: torch.Generator,
    device: torch.device,
) -> float:
    """One Adam step on a random batch; t, eps and the batch come from ``rng`` so runs are reproducible."""
    index = torch.randint(len(volumes), (batch,), generator=rng)
    x_0 = match_memory_format(volumes[index].to(device, non_blocking=True), model)
    t = torch.randint(model.num_timesteps, (batch,), generator=rng).to(device)
    noise = match_memory_format(torch.randn(x_0.shape, generator=rng).to(device), model)
    with autocast(device):
        loss = model.training_losses(x_0, t, noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())
