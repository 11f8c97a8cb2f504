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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ortho_node.labels import MODEL_PLANES, Plane
from ortho_node.model.checkpoint import (
    ModelCard,
    build_model,
    preprocess_spec_for,
    save_checkpoint,
)
from ortho_node.model.diffusion import DiffusionConfig, GaussianDiffusion
from ortho_node.model.preprocessing import PreprocessSpec, preprocess_volume
from ortho_node.model.runtime import (
    DeviceChoice,
    autocast,
    match_memory_format,
    place_model,
    resolve_device,
)
from ortho_node.model.unet import UNetConfig
from ortho_node.training.flags import add_flags, from_flags, param
from ortho_node.training.unlabelled import find_volumes, read_volume

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
BACKBONE_DIR = "backbone"
EXIT_OK, EXIT_USAGE = 0, 2
#: The UNet size presets (``UNetConfig.named``).
UNET_PRESETS = ("official", "reduced")


class PretrainError(RuntimeError):
    """A problem with the inputs of a pretraining run (no data, a state that does not match)."""


@dataclass(frozen=True)
class PretrainSettings:
    """The hyper-parameters of a pretraining run (each is a ``train pretrain`` flag); defaults are official."""

    steps: int = param(21_500, "total optimiser steps")
    batch_size: int = param(10)
    lr: float = param(1e-4)
    unet: str = param("official", "UNet size preset", choices=UNET_PRESETS)
    ema_decay: float = param(0.995)
    ema_every: int = param(10, "EMA update period in steps")
    ema_start: int = param(2_000, "step from which the EMA averages")
    checkpoint_every: int = param(500)
    seed: int = param(0)


@dataclass(frozen=True)
class PretrainRun:
    """What a ``train pretrain`` run reads and writes, where it runs, and its hyper-parameters."""

    plane: Plane
    data: Path
    out: Path
    settings: PretrainSettings = field(default_factory=PretrainSettings)
    resume: bool = False
    device: DeviceChoice = DeviceChoice.AUTO

    def to_json(self) -> str:
        """The run as recorded in the training state (compared on ``--resume``)."""
        values = dataclasses.asdict(self.settings)
        values.update(plane=self.plane.value, data=str(self.data), out=str(self.out), resume=self.resume,
                      device=self.device.value)
        return json.dumps(values, sort_keys=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train pretrain`` flags: the run's inputs and place, then one per hyper-parameter."""
    parser.add_argument("--plane", required=True, choices=[p.value for p in MODEL_PLANES])
    parser.add_argument("--data", required=True, type=Path, help="folder of NIfTI files and/or DICOM series")
    parser.add_argument("--out", required=True, type=Path, help="folder for the training state and backbone")
    add_flags(parser, PretrainSettings)
    parser.add_argument("--resume", action="store_true", help=f"continue from --out/{STATE_FILE}")
    parser.add_argument("--device", choices=[c.value for c in DeviceChoice], default=DeviceChoice.AUTO.value)


def run_from_args(args: argparse.Namespace) -> PretrainRun:
    return PretrainRun(plane=Plane(args.plane), data=args.data, out=args.out,
                       settings=from_flags(PretrainSettings, args), resume=args.resume,
                       device=DeviceChoice(args.device))


def run(args: argparse.Namespace) -> int:
    """Entry point for the CLI: returns 0 on success, 2 when the inputs cannot be used."""
    try:
        pretrain(run_from_args(args))
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


def _save_state(path: Path, step: int, backbone: Backbone, rng: torch.Generator, spec: PretrainRun) -> None:
    tmp = path.with_suffix(".tmp")
    state = {"step": step, "model": backbone.model.state_dict(), "ema": backbone.ema.state_dict(),
             "opt": backbone.opt.state_dict()}
    torch.save({**state, "rng": rng.get_state(), "settings": spec.to_json()}, tmp)
    tmp.replace(path)


def _restore_state(path: Path, backbone: Backbone, rng: torch.Generator, spec: PretrainRun) -> int:
    data = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(data.get("settings", "{}"))
    saved.setdefault("unet", saved.get("config"))  # states written before the option was called --unet
    for key, value in (("plane", spec.plane.value), ("unet", spec.settings.unet)):
        if saved.get(key) != value:
            raise PretrainError(f"{path} was trained with {key}={saved.get(key)!r}, not {value!r}")
    backbone.model.load_state_dict(data["model"])
    backbone.ema.load_state_dict(data["ema"])
    backbone.opt.load_state_dict(data["opt"])
    rng.set_state(data["rng"])
    logger.info("resumed from %s at step %d", path, data["step"])
    return int(data["step"])


def _card(spec: PretrainRun, model: GaussianDiffusion, step: int, loss: float, n: int) -> ModelCard:
    unet = model.denoise_fn.config
    return ModelCard(
        plane=spec.plane,
        unet=unet,
        diffusion=model.config,
        preprocessing=preprocess_spec_for(unet),
        version=f"pretrain-{spec.plane.value}-{spec.settings.unet}-step{step}",
        source="ortho-node train pretrain",
        training_data=f"{n} unlabelled {spec.plane.value} volumes from {spec.data}",
        step=step,
        metrics={"train_loss": loss},
    )


@dataclass
class Backbone:
    """A backbone in training: its weights, their EMA copy and the optimiser."""

    model: GaussianDiffusion
    ema: GaussianDiffusion
    opt: torch.optim.Optimizer

    @classmethod
    def new(cls, unet: UNetConfig, diffusion: DiffusionConfig | None, lr: float, device: torch.device) -> Backbone:
        """A freshly initialised backbone on ``device`` (from torch's global generator), its EMA copy and Adam."""
        model = place_model(build_model(unet, diffusion), device)
        return cls(model, copy.deepcopy(model).requires_grad_(False), torch.optim.Adam(model.parameters(), lr=lr))


def train_backbone(backbone: Backbone, volumes: torch.Tensor, settings: PretrainSettings, rng: torch.Generator,
                   device: torch.device, *, step: int = 0, label: str = "pretrain",
                   after_step: Callable[[int, float], None] | None = None) -> None:
    """The pretraining loop: Adam steps on random batches of ``volumes`` [N, 1, D, S, S] from ``step`` to
    ``settings.steps``, the EMA updated after each; ``after_step(step, loss)`` sees every step's loss."""
    with tqdm(total=settings.steps, initial=step, desc=label, unit="step") as bar:
        while step < settings.steps:
            loss = _train_step(backbone.model, backbone.opt, volumes, settings.batch_size, rng, device)
            step += 1
            update_ema(backbone.ema, backbone.model, step, settings)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if after_step is not None:
                after_step(step, loss)


def pretrain(spec: PretrainRun) -> float:
    """Train (or continue training) one plane's backbone; returns the mean loss of the last period."""
    settings = spec.settings
    state_path = spec.out / STATE_FILE
    if state_path.exists() and not spec.resume:
        raise PretrainError(f"{state_path} exists: pass --resume, or choose another --out")
    device = resolve_device(spec.device)
    torch.manual_seed(settings.seed)
    unet_config = UNetConfig.named(settings.unet)
    volumes = load_training_set(spec.data, spec.plane, preprocess_spec_for(unet_config))
    backbone = Backbone.new(unet_config, None, settings.lr, device)
    rng = torch.Generator().manual_seed(settings.seed)
    step = 0
    if spec.resume and state_path.exists():
        step = _restore_state(state_path, backbone, rng, spec)
    elif spec.resume:
        logger.warning("--resume: no %s yet, starting from scratch", state_path)
    spec.out.mkdir(parents=True, exist_ok=True)
    period_losses: list[float] = []
    mean_loss = math.nan

    def checkpoint(step: int, loss: float) -> None:
        nonlocal mean_loss
        period_losses.append(loss)
        if step % settings.checkpoint_every and step != settings.steps:
            return
        mean_loss = sum(period_losses) / len(period_losses)
        period_losses.clear()
        _save_state(state_path, step, backbone, rng, spec)
        save_checkpoint(spec.out / BACKBONE_DIR, backbone.ema, _card(spec, backbone.ema, step, mean_loss, len(volumes)))
        logger.info("step %d: mean loss %.5f, checkpoint written to %s", step, mean_loss, spec.out)

    train_backbone(backbone, volumes, settings, rng, device, step=step, label=f"pretrain {spec.plane.value}",
                   after_step=checkpoint)
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
