"""``ortho-node train finetune``: train one task's heads (and fine-tune the backbones) on labelled studies.

Official recipe (DESIGN.md section 4): Adam, head lr 5e-4, encoder + middle block at 0.05x, 5 epochs;
segmentation loss 0.2 x CE + soft Dice, diagnosis BCE (here with ``pos_weight`` = negatives / positives per
label against class imbalance). Validation after every epoch: Dice per structure (segmentation) or AUC,
sensitivity and specificity per label at the operating point of :mod:`~ortho_node.training.calibration`
(diagnosis); the best epoch is kept, training stops after ``--patience`` epochs without improvement, and the
chosen thresholds and their operating points go into the model card.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import enum
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from ortho_node.labels import DIAGNOSIS_LABELS, MODEL_PLANES, UNLABELLED, Joint, Plane
from ortho_node.model.heads import diagnosis_loss, segmentation_loss
from ortho_node.model.runtime import DeviceChoice, autocast, place_model, resolve_device
from ortho_node.model.system import OrthoModel, load_system, new_card, save_system
from ortho_node.model.unet import UNetConfig
from ortho_node.prediction import OperatingPoint
from ortho_node.training import archive, calibration
from ortho_node.training import scores as metrics
from ortho_node.training.augmentation import WindowAugmentation
from ortho_node.training.flags import add_flags, from_flags, param
from ortho_node.training.pretrain import UNET_PRESETS
from ortho_node.training.taskdata import TaskData, generate_task_data, read_synth_folder

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_USAGE = 0, 2
BACKBONE_LR_FACTOR = 0.05
MAX_POS_WEIGHT = 20.0
MAX_CLASS_WEIGHT = 10.0
EVAL_NOISE_SEED = 0
#: What one epoch of a fit loop returns besides its score (a task's result, or every task's).
Result = TypeVar("Result")


class Task(str, enum.Enum):
    KNEE_SEG = "knee-seg"
    KNEE_DX = "knee-dx"
    ANKLE_DX = "ankle-dx"
    SHOULDER_DX = "shoulder-dx"

    @property
    def joint(self) -> Joint:
        return Joint(self.value.split("-")[0])

    @property
    def segmentation(self) -> bool:
        return self is Task.KNEE_SEG


@dataclass(frozen=True)
class FinetuneSettings:
    """The hyper-parameters of fine-tuning (each is a ``train finetune`` flag), and the device it runs on."""

    epochs: int = param(5)
    batch_size: int = param(2)
    lr: float = param(5e-4, "head learning rate")
    backbone_lr_factor: float = param(BACKBONE_LR_FACTOR, "encoder + middle block learning rate as a fraction "
                                                          "of --lr (0 freezes them)")
    label_fraction: float = param(1.0)
    val_fraction: float = param(0.2)
    patience: int = param(3, "epochs without improvement to stop")
    plane_dropout: float = param(0.2, "diagnosis: chance of hiding each plane of a training study")
    balance_classes: bool = param(False, "knee-seg: weigh the cross-entropy by structure rarity (thin structures)")
    augment_windows: bool = param(False, "knee-seg: a new pose and look of every training window (in-plane affine, "
                                         "intensity transfer curve, gamma, bias, blur, noise; "
                                         "training.augmentation.WindowAugmentation's ranges)")
    seed: int = param(0)
    device: DeviceChoice = param(DeviceChoice.AUTO)


@dataclass(frozen=True)
class TaskResult:
    """Validation figures of the kept epoch (flat names, as stored in the model card)."""

    epoch: int
    score: float
    metrics: dict[str, float]
    thresholds: dict[str, float]
    #: How each threshold was chosen and what it does on the validation studies (the card's record).
    operating_points: dict[str, OperatingPoint] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, epoch: int, score: float, metrics: dict[str, float],
           chosen: Mapping[str, calibration.Calibrated]) -> TaskResult:
        return cls(epoch, score, metrics, {label: c.threshold for label, c in chosen.items()},
                   {label: c.point for label, c in chosen.items()})


class FinetuneError(RuntimeError):
    """Inputs of a fine-tuning run that cannot be used."""


def split(n: int, val_fraction: float, label_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train / validation indices; ``label_fraction`` keeps that share of the training part."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction))) if n > 1 else 0
    val, train = order[:n_val], order[n_val:]
    keep = max(1, int(round(len(train) * label_fraction)))
    return np.sort(train[:keep]), np.sort(val)


def pos_weight(diagnosis: torch.Tensor) -> torch.Tensor:
    """[K] negatives / positives per label, clamped to [1, 20] (1 where a label has no positives)."""
    known = ~torch.isnan(diagnosis)
    positives = torch.nan_to_num(diagnosis).sum(0)
    negatives = known.sum(0) - positives  # unknown findings (NaN) count on neither side
    return torch.where(positives > 0, negatives / positives.clamp(min=1), torch.ones_like(positives)).clamp(
        1.0, MAX_POS_WEIGHT)


def class_weight(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """[classes] cross-entropy weights sqrt(most frequent / own frequency), clamped to [1, 10] (1 where absent).

    A thin structure a few voxels across in one plane (the fibula on axial slices) otherwise loses every
    voxel to its large neighbour: the plain loss never lets the decoder start predicting it.
    """
    counts = torch.bincount(labels.flatten().long(), minlength=classes)[:classes].double()
    ratio = torch.where(counts > 0, counts.max() / counts.clamp(min=1), torch.ones_like(counts))
    return ratio.sqrt().clamp(1.0, MAX_CLASS_WEIGHT).float()


def _drop_planes(present: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Randomly hide planes (keeping at least one) so fusion learns to work with one or two planes."""
    if p <= 0:
        return present
    keep = present & (torch.rand(present.shape, generator=generator) >= p)
    empty = ~keep.any(dim=1)
    keep[empty] = present[empty]
    return keep


def _noise(x_0: torch.Tensor, noise_seed: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """Fresh eps per volume when training; one seeded eps shared by every volume when evaluating."""
    if noise_seed is not None:
        noise = torch.randn(x_0.shape[1:], generator=torch.Generator().manual_seed(noise_seed)).expand_as(x_0)
    else:
        noise = torch.randn(x_0.shape, generator=generator)
    return noise.to(x_0.device)


def _plane_features(model: OrthoModel, images: torch.Tensor, present: torch.Tensor, noise_seed: int | None,
                    generator: torch.Generator | None) -> list[torch.Tensor | None]:
    features: list[torch.Tensor | None] = []
    for i, plane in enumerate(MODEL_PLANES):
        if not present[:, i].any():
            features.append(None)
            continue
        x_0 = images[:, i]
        features.append(model.features(plane, x_0, _noise(x_0, noise_seed, generator)))
    return features


def _plane_segmentations(model: OrthoModel, images: torch.Tensor, present: torch.Tensor, noise_seed: int | None,
                         generator: torch.Generator | None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(plane index, rows with that plane, class logits of those rows) for each plane present in the batch."""
    for i, plane in enumerate(MODEL_PLANES):
        rows = present[:, i]
        if not rows.any():
            continue
        x_0 = images[rows.to(images.device), i]
        yield i, rows, model.segment(plane, x_0, _noise(x_0, noise_seed, generator))


def _batch_loss(model: OrthoModel, task: Task, data: TaskData, index: torch.Tensor, settings: FinetuneSettings,
                weights: torch.Tensor | None, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    present = data.present[index]
    if task.segmentation:
        augmentation = WindowAugmentation() if settings.augment_windows else None
        images, labels = data.segmentation_batch(index, generator, model.card.preprocessing, augmentation)
        images = images.to(device)
        with autocast(device):
            losses = [segmentation_loss(logits, labels[rows, i].long().to(device), weights)
                      for i, rows, logits in _plane_segmentations(model, images, present, None, generator)]
            return torch.stack(losses).mean()
    images = data.images[index].to(device)
    present = _drop_planes(present, settings.plane_dropout, generator)
    with autocast(device):
        features = _plane_features(model, images, present, None, generator)
        out = model.diagnosis[task.joint.value](features, data.clinical[index].to(device), present.to(device))
        return diagnosis_loss(out.logits, data.diagnosis[index].to(device), weights)


@torch.inference_mode()
def evaluate(model: OrthoModel, task: Task, data: TaskData, device: torch.device,
             batch_size: int = 2) -> tuple[float, dict[str, float], dict[str, float]]:
    """(score, metrics, thresholds) on ``data``: mean Dice over structures, or macro AUC."""
    model.eval()
    seg_pairs: list[tuple[np.ndarray, np.ndarray]] = []
    probabilities = []
    for start in range(0, len(data), batch_size):
        index = torch.arange(start, min(start + batch_size, len(data)))
        images, present = data.images[index].to(device), data.present[index]
        with autocast(device):
            if task.segmentation:
                if data.segmentation is None:
                    raise FinetuneError(f"{task.value} validation data carries no segmentation labels")
                for i, rows, logits in _plane_segmentations(model, images, present, EVAL_NOISE_SEED, None):
                    truth = data.segmentation[index][rows, i].numpy()
                    # Voxels nobody labelled (sparse masks) count for neither side of the Dice.
                    predicted = np.where(truth == UNLABELLED, UNLABELLED, logits.argmax(1).cpu().numpy())
                    seg_pairs += list(zip(predicted, truth))
            else:
                features = _plane_features(model, images, present, EVAL_NOISE_SEED, None)
                out = model.diagnosis[task.joint.value](features, data.clinical[index].to(device), present.to(device))
                probabilities.append(torch.sigmoid(out.logits.float()).cpu())
    if task.segmentation:
        names = model.card.structures
        dice = metrics.mean_dice(seg_pairs, len(names))
        values = {f"dice/{name}": float(d) for name, d in zip(names[1:], dice)}
        return metrics.nanmean(dice), values, {}
    scores, labels = torch.cat(probabilities).numpy(), DIAGNOSIS_LABELS[task.joint]
    chosen = calibration.calibrate_labels(scores, data.diagnosis.numpy(), labels)
    values = {}
    for k, label in enumerate(labels):
        point = chosen[label]
        known = ~np.isnan(data.diagnosis[:, k].numpy())
        values.update({f"auc/{label}": metrics.roc_auc(scores[known, k], data.diagnosis[known, k].numpy()),
                       f"sensitivity/{label}": point.sensitivity, f"specificity/{label}": point.specificity,
                       f"threshold/{label}": point.threshold})
    auc = metrics.nanmean(v for k, v in values.items() if k.startswith("auc/"))
    values["macro_auc"] = auc
    return auc, values, chosen


def _loss_weights(model: OrthoModel, task: Task, train: TaskData, settings: FinetuneSettings,
                  device: torch.device) -> torch.Tensor | None:
    """Positive weights of a diagnosis task; class weights of segmentation when ``balance_classes``."""
    if not task.segmentation:
        return pos_weight(train.diagnosis).to(device)
    if not settings.balance_classes:
        return None
    # Only real slices: counting padding and absent planes as background would inflate every other weight.
    labels = train.stacks.series_labels() if train.stacks is not None else train.segmentation[train.present]
    return class_weight(labels, len(model.card.structures)).to(device)


def _optimizer(model: OrthoModel, task: Task, settings: FinetuneSettings) -> torch.optim.Optimizer:
    head = model.segmentation if task.segmentation else model.diagnosis[task.joint.value]
    groups = [{"params": list(head.parameters()), "lr": settings.lr}]
    if settings.backbone_lr_factor > 0:
        groups.append({"params": model.backbone_parameters(), "lr": settings.lr * settings.backbone_lr_factor})
    else:
        for p in model.backbone_parameters():
            p.requires_grad_(False)
    return torch.optim.Adam(groups)


@dataclass(frozen=True)
class EpochCheckpoint:
    """Where :func:`fit` keeps its loop after every epoch, so that a stopped run continues at the next epoch
    with the same weights, optimiser, schedule and random streams (the bundle's pieces of about two hours).

    ``stateful``: the loop's other state besides the model (optimiser, schedule: ``state_dict`` objects); the
    generator and torch's global stream are kept too. The file is written whole (temporary file, rename).
    ``snapshots``: a folder that also gets each epoch's model as a model folder of its own
    (``<phase>-epoch-NNN``, for the benches' ``--model``), to watch a long run on real images as it learns.
    """

    path: Path
    stateful: tuple = ()
    generator: torch.Generator | None = None
    identity: str = ""  # what the run was (its command): a file another run wrote is refused, not continued
    snapshots: Path | None = None

    def save(self, model: torch.nn.Module, epoch: int, best: tuple | None, best_state: dict | None,
             stale: int, seconds: float) -> None:
        state = {"identity": self.identity, "epoch": epoch, "model": model.state_dict(), "best": best,
                 "best_state": best_state, "stale": stale, "seconds": seconds,
                 "stateful": [item.state_dict() for item in self.stateful],
                 "torch_rng": torch.get_rng_state(),
                 "generator": None if self.generator is None else self.generator.get_state()}
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)
        if self.snapshots is not None:
            save_system(self.snapshots / f"{self.path.name.split('.')[0]}-epoch-{epoch:03d}", model)

    def restore(self, model: torch.nn.Module) -> tuple[int, tuple | None, dict | None, int, float]:
        """(last finished epoch, best, best weights, stale epochs, seconds the finished epochs took);
        (0, None, None, 0, 0.0) without a file."""
        if not self.path.exists():
            return 0, None, None, 0, 0.0
        # Our own file, written by save(): the best epoch's result objects need the full unpickler.
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("identity", "") != self.identity:
            raise FinetuneError(f"{self.path} holds another run ({state.get('identity') or 'unnamed'}); give that "
                                "run's flags to continue it, or remove the file to start again")
        model.load_state_dict(state["model"])
        for item, saved in zip(self.stateful, state["stateful"], strict=True):
            item.load_state_dict(saved)
        torch.set_rng_state(state["torch_rng"])
        if self.generator is not None:
            self.generator.set_state(state["generator"])
        logger.info("resumed from %s after epoch %d", self.path, state["epoch"])
        return state["epoch"], state["best"], state["best_state"], state["stale"], state.get("seconds", 0.0)


def trained_seconds(path: Path) -> float:
    """The seconds the epochs kept in an :class:`EpochCheckpoint` file took, summed over every process that
    trained them: a stopped and resumed run's pause is not part of what the training cost."""
    return float(torch.load(path, map_location="cpu", weights_only=False).get("seconds", 0.0))


def fit(model: OrthoModel, settings: FinetuneSettings, name: str, epoch: Callable[[int], tuple[float, Result]],
        checkpoint: EpochCheckpoint | None = None) -> Result:
    """The fit loop of every fine-tuning task: ``epoch(n)`` trains epoch n and returns (validation score, its
    result); the best-scoring epoch's weights are restored (a NaN score never beats a number) and training
    stops after ``settings.patience`` epochs without improvement. Returns the kept epoch's result. With a
    ``checkpoint`` the loop is saved after every epoch and continues from the saved one."""
    done, best, best_state, stale, seconds = (0, None, None, 0, 0.0) if checkpoint is None \
        else checkpoint.restore(model)
    for n in range(done + 1, settings.epochs + 1):
        if best is not None and stale >= settings.patience:
            break
        mark = time.perf_counter()
        score, result = epoch(n)
        seconds += time.perf_counter() - mark
        if best is None or (not math.isnan(score) and (math.isnan(best[0]) or score > best[0])):
            best, best_state, stale = (score, n, result), copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= settings.patience:
                logger.info("%s: early stop after epoch %d (best epoch %d)", name, n, best[1])
        if checkpoint is not None:
            checkpoint.save(model, n, best, best_state, stale, seconds)
    if best is None or best_state is None:
        raise FinetuneError(f"{name}: no epoch trained (epochs {settings.epochs})")
    model.load_state_dict(best_state)
    return best[2]


def train_task(model: OrthoModel, task: Task, train: TaskData, val: TaskData, settings: FinetuneSettings,
               checkpoint: Path | None = None, identity: str = "", snapshots: Path | None = None) -> TaskResult:
    """Train ``task`` in place on ``model`` (its best validation epoch is restored); returns its figures.
    ``checkpoint``: the file the loop is kept in after every epoch and resumed from (:class:`EpochCheckpoint`),
    ``identity`` the run it belongs to, ``snapshots`` where each epoch's model is also kept (with a checkpoint)."""
    if task.segmentation and train.segmentation is None:
        raise FinetuneError("knee-seg needs segmentation labels")
    device = resolve_device(settings.device)
    place_model(model, device)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = _optimizer(model, task, settings)
    weights = _loss_weights(model, task, train, settings, device)

    def epoch(n: int) -> tuple[float, TaskResult]:
        model.train()
        order = torch.randperm(len(train), generator=generator)
        losses = []
        for start in range(0, len(train), settings.batch_size):
            loss = _batch_loss(model, task, train, order[start : start + settings.batch_size], settings, weights,
                               generator, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        score, values, chosen = evaluate(model, task, val, device, settings.batch_size)
        logger.info("%s epoch %d: train loss %.4f, validation score %.4f", task.value, n, np.mean(losses), score)
        return score, TaskResult.of(n, score, {**values, "train_loss": float(np.mean(losses))}, chosen)

    kept = None if checkpoint is None else EpochCheckpoint(checkpoint, (optimizer,), generator, identity, snapshots)
    best = fit(model, settings, task.value, epoch, kept)
    for p in model.parameters():
        p.requires_grad_(True)
    return best


def train_joint(model: OrthoModel, splits: Mapping[Task, tuple[TaskData, TaskData]],
                settings: FinetuneSettings, checkpoint: Path | None = None, snapshots: Path | None = None
                ) -> dict[Task, TaskResult]:
    """Every task at once on shared backbones: each step sums one batch of every task (smaller training sets
    cycle), heads at ``settings.lr`` and backbones at ``backbone_lr_factor`` of it. One model serves all
    joints, and a backbone tuned for one task alone serves the others poorly (frozen features do not separate
    the findings), so the backbones learn from every task together. Both rates decay on a cosine over the
    planned epochs. Segmentation trains on windows anywhere in each series (``TaskData.segmentation_batch``).
    The epoch with the best mean validation score is kept; each task's figures and thresholds come from it.
    ``checkpoint`` and ``snapshots``: as :func:`train_task`'s."""
    device = resolve_device(settings.device)
    place_model(model, device)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    groups = [{"params": model.head_parameters(), "lr": settings.lr},
              {"params": model.backbone_parameters(), "lr": settings.lr * settings.backbone_lr_factor}]
    optimizer = torch.optim.Adam(groups)
    weights = {task: None if task.segmentation else pos_weight(train.diagnosis).to(device)
               for task, (train, _) in splits.items()}
    steps = max(math.ceil(len(train) / settings.batch_size) for train, _ in splits.values())
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs * steps)

    def epoch(n: int) -> tuple[float, dict[Task, TaskResult]]:
        model.train()
        orders = {task: torch.randperm(len(train), generator=generator) for task, (train, _) in splits.items()}
        losses: list[float] = []
        for step in range(steps):
            loss = torch.zeros((), device=device)
            for task, (train, _) in splits.items():
                order = orders[task]
                index = order[(torch.arange(settings.batch_size) + step * settings.batch_size) % len(order)]
                loss = loss + _batch_loss(model, task, train, index, settings, weights[task], generator, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        results = {}
        for task, (_, val) in splits.items():
            score, values, chosen = evaluate(model, task, val, device, settings.batch_size)
            results[task] = TaskResult.of(n, score, {**values, "train_loss": float(np.mean(losses))}, chosen)
        score = metrics.nanmean(r.score for r in results.values())
        logger.info("joint epoch %d: train loss %.4f, validation %s -> mean %.4f", n, np.mean(losses),
                    ", ".join(f"{t.value} {r.score:.3f}" for t, r in results.items()), score)
        return score, results

    kept = None if checkpoint is None else EpochCheckpoint(checkpoint, (optimizer, schedule), generator,
                                                           snapshots=snapshots)
    return fit(model, settings, "joint", epoch, kept)


def apply_result(model: OrthoModel, task: Task, result: TaskResult, n_train: int, n_val: int) -> None:
    """Record a task's thresholds and validation figures in the model's card."""
    card = model.card
    diagnosis = dict(card.diagnosis)
    if result.thresholds:
        diagnosis[task.joint] = dataclasses.replace(diagnosis[task.joint], thresholds=dict(result.thresholds),
                                                    operating_points=dict(result.operating_points))
    figures = {f"{task.value}/val/{k}": v for k, v in result.metrics.items()}
    figures.update({f"{task.value}/best_epoch": result.epoch, f"{task.value}/train_studies": n_train,
                    f"{task.value}/val_studies": n_val})
    model.card = dataclasses.replace(card, diagnosis=diagnosis, metrics={**card.metrics, **figures})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train finetune`` flags: task, output, data and starting model, then one per hyper-parameter."""
    parser.add_argument("--task", required=True, choices=[t.value for t in Task])
    parser.add_argument("--out", required=True, type=Path, help="folder for the task model (weights + card)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="folder written by `ortho-node synth` (NIfTI + findings.json), "
                                                  "or with --labels a folder of DICOM studies")
    source.add_argument("--synthetic", type=int, metavar="N", help="generate N synthetic studies instead")
    archive.add_arguments(parser, source)
    parser.add_argument("--data-seed", type=int, default=0, help="first seed of --synthetic studies")
    parser.add_argument("--labels", type=Path, help="findings CSV for the DICOM studies of --data (StudyInstanceUID "
                                                    "or AccessionNumber, one column per label, 0/1/blank)")
    parser.add_argument("--masks", type=Path, help="DICOM-SEG files or <SeriesInstanceUID>.nii.gz masks (--labels)")
    parser.add_argument("--folds", type=int, help="patient-level folds (--labels): validate on --fold of them")
    parser.add_argument("--fold", type=int, default=0, help="the validation fold of --folds (0-based)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--init", type=Path, help="start from this task model (e.g. the output of another task)")
    start.add_argument("--backbone", action="append", default=[], metavar="PLANE=PATH",
                       help="pretrained backbone per plane: a folder (`train pretrain` --out/backbone) or an "
                            "official checkpoint file (.pt, its EMA weights)")
    parser.add_argument("--checkpoint", type=Path, metavar="FILE",
                        help="keep the training loop in FILE after every epoch; the same command run again "
                             "continues after the last finished epoch (FILE is removed once the model is written)")
    parser.add_argument("--unet", choices=UNET_PRESETS,
                        help="UNet size when --init and backbone folders do not give it (default: official with "
                             "official checkpoint files, else reduced)")
    add_flags(parser, FinetuneSettings)


def _initial_model(args: argparse.Namespace) -> OrthoModel:
    if args.init:
        return load_system(args.init)
    backbones = {}
    for item in args.backbone:
        plane, _, path = item.partition("=")
        if plane not in {p.value for p in MODEL_PLANES} or not path:
            raise FinetuneError(f"--backbone expects PLANE=PATH with PLANE one of sagittal/coronal/axial, got {item!r}")
        if not Path(path).exists():
            raise FinetuneError(f"--backbone {item}: no such folder or file")
        backbones[Plane(plane)] = Path(path)
    model = OrthoModel(new_card(_unet(args, backbones)))
    model.load_backbones(backbones)
    return model


def _unet(args: argparse.Namespace, backbones: Mapping[Plane, Path]) -> UNetConfig:
    """The task model's UNet: a backbone folder's card says it; an official file holds no card, so
    ``--unet`` (default official: the file's own configuration) says it; without backbones ``--unet``
    (default reduced)."""
    from ortho_node.model.checkpoint import read_card

    folders = [path for path in backbones.values() if path.is_dir()]
    if folders:
        return read_card(folders[0]).unet
    return UNetConfig.named(args.unet or ("official" if backbones else "reduced"))


def _labelled_data(args: argparse.Namespace, task: Task, spec, settings: FinetuneSettings):
    """A department's DICOM studies, findings CSV and masks (:mod:`~ortho_node.training.labelled`), split by
    patient: (data, (train, validation) indices, how it was split)."""
    from ortho_node.training.labelled import patient_split, read_labelled, task_data

    if args.data is None and args.archive is None:
        raise FinetuneError("--labels needs --data (a folder of DICOM studies) or --archive (studies of the node)")
    if task.segmentation and args.masks is None:
        raise FinetuneError(f"{task.value} needs --masks")
    source = args.data if args.archive is None else archive.archive_files(args)
    studies = read_labelled(source, args.labels, task.joint, masks=args.masks)
    if task.segmentation:
        studies = [s for s in studies if s.masks]
    train, val = patient_split(studies, settings.val_fraction, settings.seed,
                               fold=args.fold if args.folds else None, folds=args.folds)
    keep = max(1, int(round(len(train) * settings.label_fraction)))
    train = np.sort(np.random.default_rng(settings.seed).permutation(train)[:keep])
    patients = len({studies[i].patient_key for i in train}), len({studies[i].patient_key for i in val})
    note = (f"patient-level{f', fold {args.fold} of {args.folds}' if args.folds else ''}, seed {settings.seed}: "
            f"{len(train)} studies of {patients[0]} patients / {len(val)} of {patients[1]}")
    logger.info("%s split %s", task.value, note)
    return task_data(studies, task.joint, spec, segmentation=task.segmentation), (train, val), note


def command_line(args: argparse.Namespace) -> str:
    """The ``train finetune`` invocation that reproduces this run (recorded in the model card)."""
    parts = ["ortho-node train finetune"]
    for key, value in sorted(vars(args).items()):
        if key in ("handler", "argument_module", "command", "train_command", "config_file") or value in (None, False, []):
            continue
        flag = "--" + key.replace("_", "-")
        values = value if isinstance(value, list) else [value]
        parts += [f"{flag} {v}" if v is not True else flag for v in values]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    task = Task(args.task)
    settings = from_flags(FinetuneSettings, args)
    split_note = "study-level"
    try:
        model = _initial_model(args)
        spec = model.card.preprocessing
        if args.archive is not None and args.labels is None:
            raise FinetuneError("--archive needs --labels, the findings CSV of the listed studies")
        if args.labels is not None:
            data, (train_index, val_index), split_note = _labelled_data(args, task, spec, settings)
        elif args.data is not None:
            data = read_synth_folder(args.data, task.joint, spec, segmentation=task.segmentation)
        else:
            seeds = range(args.data_seed, args.data_seed + args.synthetic)
            data = generate_task_data(task.joint, seeds, spec, segmentation=task.segmentation)
    except (FinetuneError, ValueError, OSError) as error:
        logger.error("fine-tuning not started: %s", error)
        return EXIT_USAGE
    if args.labels is None:
        train_index, val_index = split(len(data), settings.val_fraction, settings.label_fraction, settings.seed)
    command = command_line(args)
    try:
        result = train_task(model, task, data.subset(train_index), data.subset(val_index), settings,
                            checkpoint=args.checkpoint, identity=command)
    except FinetuneError as error:
        logger.error("fine-tuning stopped: %s", error)
        return EXIT_USAGE
    apply_result(model, task, result, len(train_index), len(val_index))
    version = model.card.version if model.card.version != "untrained" else f"finetuned-{task.value}"
    model.card = dataclasses.replace(model.card, version=version,
                                     training={**model.card.training, task.value: command,
                                               f"{task.value}/split": split_note})
    save_system(args.out, model)
    if args.checkpoint is not None:
        args.checkpoint.unlink(missing_ok=True)
    logger.info("%s: best epoch %d, validation score %.4f; model written to %s", task.value, result.epoch,
                result.score, args.out)
    return EXIT_OK
