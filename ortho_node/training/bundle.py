"""``ortho-node train bundle``: the bundled model, end to end, from synthetic studies only.

One command (documented in README): generate knee, ankle and shoulder studies with domain randomisation,
pretrain the three reduced backbones on the knee volumes (diffusion, no labels), fine-tune knee segmentation
and the knee, ankle and shoulder diagnosis heads together on the shared knee-pretrained backbones
(:func:`~ortho_node.training.finetune.train_joint`: one model serves every task, and frozen features do not
separate the findings, so the backbones learn at 0.05x the head rate from every task at once), refine the
segmentation decoders on the frozen backbones with rarity-weighted cross-entropy (the diagnosis heads and
backbones are left exactly as the joint phase made them), then calibrate through the predictor: choose the
structure scales of the masks on the knee validation studies and fit the knee and shoulder evidence readouts
(:mod:`ortho_node.model.evidence`) on fresh studies; evaluate on held-out studies, and write
``model.safetensors`` + ``model_card.json``::

    ortho-node train bundle --out ortho_node/bundled              # full profile, about 2 h on 2 CPU cores
    ortho-node train bundle --out ortho_node/bundled --resume     # continue a stopped run where it stopped
    ortho-node train bundle --profile quick --out /tmp/bundled    # minutes: proves the pipeline
    ortho-node train bundle --calibrate-only --out DIR            # the calibration phases again, on DIR's model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ortho_node.assembly.study import AssembledStudy
from ortho_node.inference.predictor import Predictor
from ortho_node.labels import DIAGNOSIS_LABELS, MODEL_PLANES, Joint, Plane
from ortho_node.model.preprocessing import Normalisation, Orientation
from ortho_node.model.runtime import DeviceChoice, place_model, resolve_device
from ortho_node.model.system import (
    SEGMENTATION_JOINT,
    OrthoModel,
    load_system,
    new_card,
    save_system,
)
from ortho_node.model.unet import UNetConfig
from ortho_node.synthetic import RandomizedAppearance, generate_study
from ortho_node.training import calibration
from ortho_node.training import scores as metrics
from ortho_node.training.augmentation import WindowAugmentation
from ortho_node.training.finetune import (
    FinetuneSettings,
    Task,
    TaskResult,
    apply_result,
    evaluate,
    split,
    train_joint,
    trained_seconds,
    train_task,
)
from ortho_node.training.pretrain import Backbone, PretrainSettings, train_backbone
from ortho_node.training.taskdata import (
    TaskData,
    assembled_from_synthetic,
    generate_task_data,
    rendering_pool,
)

logger = logging.getLogger(__name__)

INTENDED_USE = (
    "Trained on SYNTHETIC data only (ortho_node.synthetic studies with domain randomisation), by our own "
    "scripts, with a reduced backbone configuration. For integration testing and demonstration of the node; "
    "NOT FOR CLINICAL USE. Its figures say nothing about real MRI."
)
#: Seed offsets keep the joints' and the held-out studies' seeds apart.
JOINT_OFFSET = {Joint.KNEE: 0, Joint.ANKLE: 100_000, Joint.SHOULDER: 200_000}
TEST_OFFSET = 50_000
#: Short pretraining runs average every step over the second half (the official 0.995 every 10 steps after
#: step 2,000 would leave the EMA at the initial weights in a few hundred steps).
PRETRAIN_EMA_DECAY = 0.99
#: Decoder refinement starts from trained decoders: half the joint phase's head rate.
DECODER_LR = 1e-3
#: The joints whose labels get an evidence readout, and the knee findings that read their structure's
#: statistics. Not the ankle: its head already separates its findings (bench/quality.py: macro AUC 1.00), and
#: its readout would cost another 3.5 minutes of the two-hour budget.
READOUT_STRUCTURES = {Joint.KNEE: {"MM": "medial meniscus", "LM": "lateral meniscus"}, Joint.SHOULDER: {}}
#: The readout studies' seeds (joint offset +), apart from the training [0, N) and held-out ones.
EVIDENCE_OFFSET = 60_000
#: L2 penalty on the standardised readout weights (0.03-0.3 scored alike on held-out menisci and shoulders).
EVIDENCE_L2 = 0.1
#: Candidate structure scales (card ``structure_scales``); 1 is kept unless another scores higher.
STRUCTURE_SCALES = (0.7, 0.85, 1.0, 1.2, 1.4, 1.7, 2.0, 2.5)


@dataclass(frozen=True)
class Profile:
    """Sizes of one bundle run. ``full`` is the shipped recipe; ``quick`` only proves the pipeline."""

    knee: int
    ankle: int
    shoulder: int
    test: int
    pretrain_steps: int
    pretrain_batch: int
    epochs: int
    patience: int
    #: Segmentation decoder refinement on the frozen backbones (:func:`refine_segmentation`).
    decoder_epochs: int
    decoder_patience: int
    #: Fresh studies per joint the evidence readouts are fitted on (:func:`fit_evidence`).
    evidence: int
    #: Noise draws each segmentation window averages (card ``segmentation_draws``).
    segmentation_draws: int = 1
    #: Head learning rate: 4x the official 5e-4, which converges too slowly for a two-hour CPU budget.
    lr: float = 2e-3
    #: Segmentation decoder stage widths (card ``segmentation_widths``); () = halving per stage.
    decoder_widths: tuple[int, ...] = ()
    #: Share of the training studies (every joint) rendered by the SynthSeg-style randomisation instead of the
    #: realistic render, chosen per seed (card ``training.randomized_ratio``); held-out studies stay realistic.
    randomized_ratio: float = 0.0
    #: Share of the realistic training series rendered as PD without fat suppression instead of the protocol's
    #: fat-suppressed weighting, drawn per seed and plane (card ``training.unsuppressed_ratio``).
    unsuppressed_ratio: float = 0.0
    #: Ranges of that randomisation, deformation included (card ``training.randomized_appearance``).
    appearance: RandomizedAppearance = field(default_factory=RandomizedAppearance)
    #: A new pose and look of every segmentation training window, drawn at each step (``WindowAugmentation()``'s
    #: ranges, card ``training.window_augmentation``): the randomised renders above are drawn once per study. Off in
    #: ``full``: in an 8-epoch fine-tune it fitted the synthetic studies more slowly and left the real knee as it
    #: was (README, "Windows augmented at every step").
    augment_windows: bool = False
    #: The card's preprocessing: intensity normalisation, the joint-centred crop (None: whole field of view) and
    #: the series' layout (stored, or canonical with left joints mirrored).
    normalisation: Normalisation = Normalisation.MINMAX
    crop_mm: float | None = None
    orientation: Orientation = Orientation.STORED

    def sizes(self) -> dict[str, object]:
        """The profile's plain fields, as the card's ``profile_sizes`` records them (the appearance apart)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "appearance"}


PROFILES = {
    # Sized to run whole in one sitting of about 2.5 hours on 2 idle cores (--resume remains for pieces). Run
    # whole 2026-12-07 (2 cores, channels-last training): generate 1,117 s (about 3.7 s a study, 2 processes),
    # pretrain 1,729 s (2.3 s a step), a joint epoch 165-210 s (about 0.9 s per training study of any joint;
    # the estimate of 65 s plus 0.5 s per knee study, from the smaller trial, left out the ankle and shoulder
    # studies' share), decoder refinement 740 s, calibration about 17 minutes: 8,681 s in all. Not shipped:
    # better on the real knee, worse on the synthetic figures and findings (README, "Build the next one").
    # The model shipped 2026-12-06 was built by the earlier sizes (160 / 100 / 100 studies, 500 pretraining steps, 50 + 40 epochs, 80
    # evidence studies: 4.3 hours, its card's profile_sizes); the recipe trial at a fifth of that size
    # (bench/recipe_trial.py full-scaled, 20 joint epochs) already put the bones on the real knee's bones.
    # Four noise draws: soft-structure Dice +0.007 over one, six no more. Decoder stages (32, 32, 16, 16)
    # instead of halving to (32, 16, 8, 8): the 8-channel stages at full resolution held the cartilage and
    # menisci back (bench/decoder_widths.py). A 96-pixel grid came out worse on every figure of
    # bench/quality.py for the same time: it needs more epochs than the budget leaves.
    # Issue 21: half the training studies are randomised renders; the canonical orientation (the model before
    # it swapped medial and lateral menisci on up to 41% of their voxels); half the realistic series without
    # fat suppression (a retrain with fat-suppressed realistic renders only painted a real knee's muscles as bone).
    "full": Profile(knee=120, ankle=60, shoulder=60, test=30, pretrain_steps=250, pretrain_batch=4,
                    epochs=25, patience=8, decoder_epochs=15, decoder_patience=5, evidence=50,
                    segmentation_draws=4, decoder_widths=(32, 32, 16, 16), randomized_ratio=0.5,
                    unsuppressed_ratio=0.5, normalisation=Normalisation.PERCENTILE, crop_mm=160.0,
                    orientation=Orientation.CANONICAL),
    "quick": Profile(knee=12, ankle=8, shoulder=8, test=4, pretrain_steps=40, pretrain_batch=4,
                     epochs=2, patience=2, decoder_epochs=1, decoder_patience=1, evidence=6, segmentation_draws=2),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("ortho_node/bundled"), help="folder for weights + card")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--data-seed", type=int, default=0, help="first seed of the synthetic studies")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=2, help="processes that render the synthetic studies")
    parser.add_argument("--device", choices=[c.value for c in DeviceChoice], default="cpu")
    parser.add_argument("--calibrate-only", action="store_true",
                        help="only (re)run the calibration phases (structure scales, evidence readouts) on the "
                             "model in --out, built by this command with the same profile and seeds")
    parser.add_argument("--state", type=Path, default=None,
                        help="folder keeping a run's finished phases and epochs (default: OUT.state); removed "
                             "when the bundle is written")
    parser.add_argument("--resume", action="store_true",
                        help="continue the stopped run kept in --state, at the phase and epoch where it stopped")
    parser.add_argument("--snapshots", type=Path, default=None,
                        help="folder that gets the model after every epoch of the joint phase and the decoder "
                             "refinement (<phase>-epoch-NNN, a model folder for the benches' --model): to watch "
                             "a run on real images, e.g. bench/real_knee.py, while it learns")


def _data(joint: Joint, count: int, first_seed: int, spec, test: bool = False, workers: int = 1,
          profile: Profile | None = None) -> TaskData:
    """The profile's training mix of realistic and randomised studies; held-out (``test``) studies and a missing
    profile: realistic only."""
    start = first_seed + JOINT_OFFSET[joint] + (TEST_OFFSET if test else 0)
    training = not test and profile is not None
    return generate_task_data(joint, range(start, start + count), spec, workers=workers,
                              randomized_ratio=profile.randomized_ratio if training else 0.0,
                              unsuppressed_ratio=profile.unsuppressed_ratio if training else 0.0,
                              appearance=None if profile is None else profile.appearance)


def pretrain_backbones(model: OrthoModel, knee: TaskData, profile: Profile, seed: int, device: torch.device) -> dict:
    """Diffusion pretraining of each plane's backbone on the knee volumes (EMA weights kept), by the
    pretraining loop of ``train pretrain``."""
    losses = {}
    for i, plane in enumerate(MODEL_PLANES):
        volumes = knee.images[knee.present[:, i], i]
        settings = PretrainSettings(steps=profile.pretrain_steps, batch_size=profile.pretrain_batch,
                                    ema_start=profile.pretrain_steps // 2, ema_every=1,
                                    ema_decay=PRETRAIN_EMA_DECAY, seed=seed)
        backbone = Backbone.new(model.card.unet, model.card.diffusion, settings.lr, device)
        rng = torch.Generator().manual_seed(seed + i)
        recent: list[float] = []
        train_backbone(backbone, volumes, settings, rng, device, label=f"pretrain {plane.value}",
                       after_step=lambda _step, loss, recent=recent: recent.append(loss))
        own = model.backbones[plane.value]
        own.load_state_dict({k: v for k, v in backbone.ema.state_dict().items() if k in own.state_dict()})
        last = recent[-50:]
        losses[f"pretrain/{plane.value}/loss_last50"] = sum(last) / len(last)
        logger.info("pretrained %s backbone: %d steps, loss %.4f", plane.value, profile.pretrain_steps,
                    losses[f"pretrain/{plane.value}/loss_last50"])
    return losses


def refine_segmentation(model: OrthoModel, train: TaskData, val: TaskData, joint: FinetuneSettings,
                        profile: Profile, checkpoint: Path | None = None, snapshots: Path | None = None) -> TaskResult:
    """Train only the segmentation decoders, on the joint phase's frozen backbones, with the cross-entropy
    weighted by structure rarity. The joint phase's plain loss leaves thin structures to their large
    neighbours (the shipped model before this stage never marked the fibula on an axial slice); the
    backbones and diagnosis heads are not touched, so every diagnosis figure stays as the joint phase left it.
    """
    settings = dataclasses.replace(joint, epochs=profile.decoder_epochs, patience=profile.decoder_patience,
                                   backbone_lr_factor=0.0, balance_classes=True, lr=DECODER_LR)
    return train_task(model, Task.KNEE_SEG, train, val, settings, checkpoint, snapshots=snapshots)


def _fresh_study(joint: Joint, seed: int) -> tuple[AssembledStudy, Mapping[str, int], dict[Plane, np.ndarray]]:
    """A random-findings study as the node assembles it, its true findings and (knee only) its label maps."""
    study = generate_study(joint, seed, findings="random", scene_spacing=1.0)
    labels = {series.plane: series.labels for series in study.series} if joint is SEGMENTATION_JOINT else {}
    return assembled_from_synthetic(study), study.diagnosis, labels


def _fresh_studies(joint: Joint, seeds: Sequence[int], workers: int
                   ) -> Iterator[tuple[AssembledStudy, Mapping[str, int], dict[Plane, np.ndarray]]]:
    """:func:`_fresh_study` of each seed, in order, rendered by ``workers`` processes."""
    with rendering_pool(workers) as pool:
        yield from pool.map(_fresh_study, [joint] * len(seeds), seeds)


def _evidence_rows(predictor: Predictor, joint: Joint, seeds: Sequence[int], workers: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(readout inputs [N, L, F], targets [N, L]) of the studies ``seeds``, as the predictor reads them."""
    inputs, targets = [], []
    for study, diagnosis, _ in _fresh_studies(joint, seeds, workers):
        inputs.append(predictor.evidence_inputs(study))
        targets.append([float(diagnosis[label]) for label in DIAGNOSIS_LABELS[joint]])
    return torch.stack(inputs), torch.tensor(targets)


def fit_structure_scales(model: OrthoModel, profile: Profile, data_seed: int, seed: int, device: torch.device,
                         workers: int) -> dict[str, float]:
    """Set the card's noise draws from the profile and choose each structure's scale on the knee validation
    split's studies, their masks compared on each source series' grid (as bench/quality.py measures them).

    Returns each structure's validation Dice at scale 1 and at its chosen scale (applied alone).
    """
    model.card = dataclasses.replace(model.card, segmentation_draws=profile.segmentation_draws, structure_scales=())
    predictor = Predictor(model, device)
    _, val_index = split(profile.knee, 0.2, 1.0, seed)
    seeds = [data_seed + JOINT_OFFSET[SEGMENTATION_JOINT] + int(i) for i in val_index]
    overlaps = []
    for study, _, labels in _fresh_studies(SEGMENTATION_JOINT, seeds, workers):
        series: dict[Plane, np.ndarray] = {}
        for plane, start, maps in predictor.source_class_maps(study):
            truth = torch.from_numpy(labels[plane][start : start + maps.shape[1]].astype(np.int64))
            series[plane] = series.get(plane, 0) + metrics.scaled_overlaps(maps, truth, STRUCTURE_SCALES)
        overlaps += series.values()
    scales, dice = metrics.choose_scales(overlaps, STRUCTURE_SCALES)
    model.card = dataclasses.replace(model.card, structure_scales=scales)
    figures = {}
    for k, name in enumerate(model.card.structures[1:]):
        figures[f"{Task.KNEE_SEG.value}/val/source_dice/{name}"] = dice[k, STRUCTURE_SCALES.index(1.0)]
        figures[f"{Task.KNEE_SEG.value}/val/source_dice_scaled/{name}"] = dice[k, STRUCTURE_SCALES.index(scales[k + 1])]
    logger.info("structure scales on %d validation series: %s", len(overlaps),
                ", ".join(f"{name} {scale:g}" for name, scale in zip(model.card.structures[1:], scales[1:])))
    return figures


def new_bundle_model(profile: Profile) -> OrthoModel:
    """The untrained task model of a bundle run: reduced backbones, the profile's decoder widths."""
    card = new_card(UNetConfig.reduced(), name="OrthoDiffusion-reduced-synthetic",
                    segmentation_widths=profile.decoder_widths)
    preprocessing = dataclasses.replace(card.preprocessing, normalisation=profile.normalisation,
                                        crop_mm=profile.crop_mm, orientation=profile.orientation)
    return OrthoModel(dataclasses.replace(card, preprocessing=preprocessing))


def _diagnosis_task(joint: Joint) -> Task:
    return next(t for t in Task if t.joint is joint and not t.segmentation)


def fit_evidence(model: OrthoModel, profile: Profile, data_seed: int, seed: int, device: torch.device,
                 workers: int, fp_budget: float | None = None) -> dict[str, float]:
    """Fit each joint's evidence readout on ``profile.evidence`` fresh studies, then choose every joint's
    thresholds for the false-positive budget per normal study on the joint phase's validation split
    (:mod:`~ortho_node.training.calibration`; default budget 0.3), and measure them on the held-out studies.

    Runs on the finished model: the meniscal tears' statistics read the masks the node will produce; joints
    without a readout (the ankle) are scored by the predictor's head. Returns the validation and held-out
    figures under the card's metric names (the head's own AUC as ``head_auc``); the card gets each label's
    threshold and operating point.
    """
    budget = calibration.DEFAULT_FP_BUDGET if fp_budget is None else fp_budget
    for joint, structures in READOUT_STRUCTURES.items():
        model.add_evidence(joint, structures)
    predictor = Predictor(model, device)
    counts = {Joint.KNEE: profile.knee, Joint.ANKLE: profile.ankle, Joint.SHOULDER: profile.shoulder}
    figures: dict[str, float] = {}
    diagnosis = dict(model.card.diagnosis)
    for joint in diagnosis:
        module = model.evidence[joint.value] if joint in READOUT_STRUCTURES else None
        first = data_seed + JOINT_OFFSET[joint]
        if module is not None:
            fitting = range(first + EVIDENCE_OFFSET, first + EVIDENCE_OFFSET + profile.evidence)
            module.fit(*_evidence_rows(predictor, joint, fitting, workers), EVIDENCE_L2)
        _, val_index = split(counts[joint], 0.2, 1.0, seed)
        chosen: dict[str, calibration.Calibrated] = {}
        for name, split_seeds in (("val", [first + int(i) for i in val_index]),
                                  ("test", range(first + TEST_OFFSET, first + TEST_OFFSET + profile.test))):
            if module is not None:
                inputs, targets = _evidence_rows(predictor, joint, split_seeds, workers)
                with torch.no_grad():
                    scores = torch.sigmoid(module(inputs.to(device))).cpu()
                head: torch.Tensor | None = inputs[..., 0]
            else:  # the head's probabilities, as the node reports them
                rows = [([f.probability for f in predictor.predict(study).findings],
                         [float(truth[label]) for label in DIAGNOSIS_LABELS[joint]])
                        for study, truth, _ in _fresh_studies(joint, split_seeds, workers)]
                scores, targets, head = torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows]), None
            figures.update(_readout_figures(joint, name, scores, head, targets, chosen, budget))
        diagnosis[joint] = dataclasses.replace(
            diagnosis[joint], thresholds={**diagnosis[joint].thresholds, **{k: c.threshold for k, c in chosen.items()}},
            operating_points={**diagnosis[joint].operating_points, **{k: c.point for k, c in chosen.items()}})
    model.card = dataclasses.replace(model.card, diagnosis=diagnosis)
    return figures


def _readout_figures(joint: Joint, split_name: str, scores: torch.Tensor, head_logits: torch.Tensor | None,
                     targets: torch.Tensor, chosen: dict, fp_budget: float) -> dict[str, float]:
    """Sensitivity and specificity per label with the studies counted, and where a readout scored them AUC (the
    readout's and the head's); on the validation split the thresholds are chosen first for ``fp_budget``
    (``chosen``: label -> ``calibration.Calibrated``, updated in place), on the held-out split their held-out
    figures are added to it."""
    prefix, labels = f"{_diagnosis_task(joint).value}/{split_name}", DIAGNOSIS_LABELS[joint]
    if split_name == "val":
        chosen.update(calibration.calibrate_labels(scores.numpy(), targets.numpy(), labels, fp_budget))
        figures: dict[str, float] = {f"{prefix}/target_specificity": calibration.target_specificity(fp_budget,
                                                                                                      len(labels))}
    else:
        figures = {}
    for k, label in enumerate(labels):
        score, truth = scores[:, k].numpy(), targets[:, k].numpy()
        if split_name != "val":
            chosen[label] = calibration.with_test(chosen[label], score, truth)
        else:
            figures[f"{prefix}/threshold/{label}"] = chosen[label].threshold
        measured = chosen[label].point.validation if split_name == "val" else chosen[label].point.test
        for name in ("sensitivity", "specificity", "positives", "negatives"):  # NaN: no study to measure it
            value = getattr(measured, name)
            figures[f"{prefix}/{name}/{label}"] = np.nan if value is None else value
        if head_logits is not None:
            figures.update({f"{prefix}/auc/{label}": metrics.roc_auc(score, truth),
                            f"{prefix}/head_auc/{label}": metrics.roc_auc(head_logits[:, k].numpy(), truth)})
    # Expected on a normal study: the sum of (1 - specificity) over the labels (NaN where one is unmeasured).
    expected = figures[f"{prefix}/false_positives_per_normal_study"] = sum(
        1.0 - figures[f"{prefix}/specificity/{label}"] for label in labels)
    if head_logits is not None:
        logger.info("%s evidence readout, %s: macro AUC %.3f (head %.3f)", joint.value, split_name,
                    metrics.nanmean(figures[f"{prefix}/auc/{label}"] for label in labels),
                    metrics.nanmean(figures[f"{prefix}/head_auc/{label}"] for label in labels))
    logger.info("%s thresholds, %s: %.2f false positives per normal study (budget %.2f)", joint.value, split_name,
                expected, fp_budget)
    return figures


def _with_evidence(figures: Mapping[str, float]) -> dict[str, float]:
    """Card metrics with the readouts' figures in, each joint's macro AUC recomputed over them."""
    merged = dict(figures)
    for joint in READOUT_STRUCTURES:
        task = _diagnosis_task(joint).value
        for name in ("val", "test"):
            aucs = [merged.get(f"{task}/{name}/auc/{label}") for label in DIAGNOSIS_LABELS[joint]]
            if None not in aucs:  # a card with every label measured (not an untrained one)
                merged[f"{task}/{name}/macro_auc"] = metrics.nanmean(aucs)
        if f"{task}/test/macro_auc" in merged:
            merged[f"{task}/test/score"] = merged[f"{task}/test/macro_auc"]
    return merged


EVIDENCE_NOTE = (f"knee and shoulder labels: logistic regression (L2 {EVIDENCE_L2}) on the head's logit and its plane "
                 f"descriptors; {', '.join(READOUT_STRUCTURES[Joint.KNEE])}: on the head's logit and intensity "
                 "statistics inside the predicted structure per plane; fitted on fresh studies (seeds data_seed + "
                 f"joint offset + {EVIDENCE_OFFSET} + [0, N)); thresholds of every joint (the ankle's on its head's "
                 "probabilities) on its validation split: the lowest whose specificity reaches 1 - 0.3 / labels "
                 "(0.3 false positives per normal study; ortho_node.training.calibration), a fixed 0.5 where the "
                 "split lacks positives or negatives (diagnosis.<joint>.operating_points says which)")


SCALES_NOTE = ("segmentation: class maps averaged over the card's noise draws; each structure's map times its "
               f"scale (candidates {', '.join(f'{c:g}' for c in STRUCTURE_SCALES)}) chosen alone for its mean Dice "
               "on the knee validation split's studies, masks on the source grid")


def calibrate(model: OrthoModel, profile: Profile, data_seed: int, seed: int, device: torch.device,
              workers: int) -> dict[str, float]:
    """The phases run through the predictor on the trained networks: the masks' draws and structure scales,
    and the evidence readouts (which read the first draw unscaled). Returns their figures and seconds."""
    mark = time.perf_counter()
    figures = fit_structure_scales(model, profile, data_seed, seed, device, workers)
    figures["seconds/structure_scales"] = time.perf_counter() - mark
    mark = time.perf_counter()
    figures.update(fit_evidence(model, profile, data_seed, seed, device, workers))
    figures["seconds/evidence_readout"] = time.perf_counter() - mark
    return figures


def recalibrate(out: Path, profile_name: str, data_seed: int, seed: int, device: torch.device, command: str,
                workers: int) -> OrthoModel:
    """``--calibrate-only``: the calibration phases again on the model in ``out`` (same profile and seeds)."""
    model = place_model(load_system(out), device)
    figures = calibrate(model, PROFILES[profile_name], data_seed, seed, device, workers)
    card = model.card
    merged = _with_evidence({**card.metrics, **figures})
    merged["seconds/total"] = card.metrics.get("seconds/total", 0.0) + sum(
        figures[p] - card.metrics.get(p, 0.0) for p in ("seconds/structure_scales", "seconds/evidence_readout"))
    training = {**card.training, "structure_scales": SCALES_NOTE, "evidence_readout": EVIDENCE_NOTE,
                "calibration_command": command}
    training.pop("evidence_readout_command", None)  # the older name of calibration_command
    model.card = dataclasses.replace(card, training=training, metrics=merged)
    save_system(out, model)
    return model


class BundleError(RuntimeError):
    """A bundle build that cannot start or continue as asked."""


#: The phases of a build, in order; each finished one is kept in the run's state folder.
PHASES = ("generate", "pretrain", "finetune", "refine_segmentation", "calibrate")


def source_commit() -> str:
    """The git commit of the code running (``+modified`` when the checkout has uncommitted changes), so a card says
    which generator and trainer made it; "unknown" outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+modified" if changed else "")


class RunState:
    """The resumable state of one ``train bundle`` run, in its own folder (``--state``, default OUT.state):
    ``run.json`` (what the run is - profile, seeds, device - and each finished phase's figures and seconds),
    the generated studies, the model after each finished phase, and the running phase's epoch checkpoint.
    A stopped run continues with ``--resume`` at the phase (and epoch) where it stopped; the folder is
    removed once the bundle is written."""

    def __init__(self, folder: Path, identity: dict, resume: bool) -> None:
        self.folder, self.identity = folder, identity
        self.record = self.folder / "run.json"
        if self.record.exists():
            if not resume:
                raise BundleError(f"{folder} holds a stopped run: pass --resume to continue it, or remove it")
            saved = json.loads(self.record.read_text())
            if saved["identity"] != identity:
                raise BundleError(f"{folder} holds a run of {saved['identity']}, not {identity}")
            self.phases: dict[str, dict[str, float]] = saved["phases"]
            self.commits: dict[str, str] = saved.get("commits", {})
            logger.info("resuming the run in %s after %s", folder, ", ".join(self.phases) or "no phase")
        else:
            self.phases, self.commits = {}, {}
            folder.mkdir(parents=True, exist_ok=True)
            self._write()

    def _write(self) -> None:
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"identity": self.identity, "phases": self.phases, "commits": self.commits},
                                  indent=1))
        tmp.replace(self.record)

    def done(self, phase: str) -> bool:
        return phase in self.phases

    def epochs(self, phase: str) -> Path:
        """The epoch checkpoint file of a fit-loop phase."""
        return self.folder / f"{phase}.epochs.pt"

    def finish(self, phase: str, figures: Mapping[str, float], model: OrthoModel | None = None) -> None:
        if model is not None:
            save_system(self.folder / phase, model)
        self.phases[phase] = dict(figures)
        self.commits[phase] = source_commit()
        self._write()
        self.epochs(phase).unlink(missing_ok=True)
        seconds = sum(v for k, v in figures.items() if k.startswith("seconds/"))
        logger.info("phase %s finished (%.0f s)", phase, seconds)

    def model(self, device: torch.device) -> OrthoModel | None:
        """The model of the last finished phase that saved one (None: no such phase yet)."""
        saved = [p for p in PHASES if p in self.phases and (self.folder / p).is_dir()]
        return place_model(load_system(self.folder / saved[-1]), device) if saved else None

    def data_file(self, name: str) -> Path:
        return self.folder / f"data-{name}.pt"

    def figures(self) -> dict[str, float]:
        return {k: v for figures in self.phases.values() for k, v in figures.items()}

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _generate(state: RunState, profile: Profile, data_seed: int, spec, workers: int
              ) -> tuple[dict[Joint, TaskData], dict[Joint, TaskData]]:
    """The training and held-out studies of every joint: each set generated once and kept in the run's state as
    soon as it is done, then read from there."""
    counts = {Joint.KNEE: profile.knee, Joint.ANKLE: profile.ankle, Joint.SHOULDER: profile.shoulder}
    data, mark = {}, time.perf_counter()
    for joint in counts:
        for part in ("train", "test"):
            path = state.data_file(f"{joint.value}-{part}")
            if path.exists():  # generated by this run before it stopped
                data[joint, part] = TaskData.load(path)
                continue
            data[joint, part] = _data(joint, profile.test if part == "test" else counts[joint], data_seed, spec,
                                      test=part == "test", workers=workers, profile=profile)
            data[joint, part].save(path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)  # whole or absent: a stop while writing leaves no half file
    if not state.done("generate"):  # resumed mid-way: the seconds of the last piece only
        state.finish("generate", {"seconds/generate": time.perf_counter() - mark})
    return ({joint: data[joint, "train"] for joint in counts}, {joint: data[joint, "test"] for joint in counts})


def _task_splits(data: Mapping[Joint, TaskData], seed: int
                 ) -> tuple[dict[Task, tuple[TaskData, TaskData]], dict[Task, tuple[int, int]]]:
    splits, sizes = {}, {}
    for task in Task:
        joint_data = data[task.joint]
        train_index, val_index = split(len(joint_data), 0.2, 1.0, seed)
        splits[task] = (joint_data.subset(train_index), joint_data.subset(val_index))
        sizes[task] = (len(train_index), len(val_index))
    return splits, sizes


def build_bundle(out: Path, profile_name: str, data_seed: int, seed: int, device: torch.device,
                 command: str, workers: int = 1, state_dir: Path | None = None, resume: bool = False,
                 snapshots: Path | None = None) -> OrthoModel:
    """Every phase of the bundle into ``out``; each finished phase (and every epoch of the fit loops) is kept
    in ``state_dir`` (default ``out`` + ``.state``), from which ``resume`` continues a stopped run;
    ``snapshots``: a folder that gets the model after every epoch of the fit loops."""
    profile = PROFILES[profile_name]
    identity = {"profile": profile_name, "profile_sizes": profile.sizes(), "appearance": profile.appearance.to_dict(),
                "data_seed": data_seed, "seed": seed, "device": device.type}
    identity = json.loads(json.dumps(identity, default=str))  # as run.json reads it back (enums as values)
    state = RunState(state_dir or out.with_name(out.name + ".state"), identity, resume)
    model = state.model(device)
    if model is None:
        torch.manual_seed(seed)  # the initial weights: every phase seeds its own draws, so a resumed run matches
        model = place_model(new_bundle_model(profile), device)
    data, tests = _generate(state, profile, data_seed, model.card.preprocessing, workers)

    if not state.done("pretrain"):
        mark = time.perf_counter()
        torch.manual_seed(seed)  # the throwaway diffusion models' initial weights
        figures = pretrain_backbones(model, data[Joint.KNEE], profile, seed, device)
        state.finish("pretrain", {**figures, "seconds/pretrain": time.perf_counter() - mark}, model)

    splits, sizes = _task_splits(data, seed)
    settings = FinetuneSettings(epochs=profile.epochs, patience=profile.patience, lr=profile.lr, seed=seed,
                                augment_windows=profile.augment_windows, device=DeviceChoice(device.type))
    if not state.done("finetune"):
        for task, result in train_joint(model, splits, settings, state.epochs("finetune"), snapshots).items():
            apply_result(model, task, result, *sizes[task])
        state.finish("finetune", {"seconds/finetune": trained_seconds(state.epochs("finetune"))}, model)

    if not state.done("refine_segmentation"):
        refined = refine_segmentation(model, *splits[Task.KNEE_SEG], settings, profile,
                                      state.epochs("refine_segmentation"), snapshots)
        apply_result(model, Task.KNEE_SEG, refined, *sizes[Task.KNEE_SEG])
        state.finish("refine_segmentation",
                     {"seconds/refine_segmentation": trained_seconds(state.epochs("refine_segmentation"))}, model)

    if not state.done("calibrate"):
        torch.manual_seed(seed)
        state.finish("calibrate", calibrate(model, profile, data_seed, seed, device, workers), model)

    mark = time.perf_counter()
    held_out: dict[str, float] = {}
    for task in Task:
        score, values, _ = evaluate(model, task, tests[task.joint], device)
        held_out.update({f"{task.value}/test/{k}": v for k, v in values.items()})
        held_out[f"{task.value}/test/score"] = score
        logger.info("%s: held-out score %.4f", task.value, score)
    # Test-set thresholds are never used: the card keeps the validation thresholds from apply_result.
    phases = state.figures()  # the pretraining losses, calibration figures and every phase's seconds
    # The phases' own seconds: a resumed run's pauses are not part of what the recipe costs.
    phases["seconds/total"] = time.perf_counter() - mark + sum(v for k, v in phases.items() if k.startswith("seconds/"))
    training = {
        "command": command, "profile": profile_name, "profile_sizes": profile.sizes(),
        "code_commits": dict(state.commits),  # per phase: a resumed run may span commits
        "data_seed": data_seed, "training_seed": seed, "device": device.type,
        "threads": torch.get_num_threads(),
        "data": "ortho_node.synthetic.generate_study(joint, seed, findings='random', domain=DomainRandomization(), "
                "scene_spacing=1.0); seeds: knee data_seed+[0,N), ankle +100000, shoulder +200000, held-out +50000; "
                "training seeds with choose_randomized(seed, randomized_ratio): randomize_study(generate_study(..., "
                "keep_scene=True), seed, RandomizedAppearance.from_dict(randomized_appearance)); held-out: realistic",
        "randomized_ratio": profile.randomized_ratio,
        "unsuppressed_ratio": profile.unsuppressed_ratio,
        "randomized_appearance": profile.appearance.to_dict(),
        "window_augmentation": WindowAugmentation().to_dict() if profile.augment_windows else None,
        "held_out_note": "held-out metrics are on the model grid (16 x 64 x 64 centre window); "
                         "bench/quality.py measures masks on the source grid",
        "short_run": profile_name != "full",
        "backbone_fine_tuning": "all tasks jointly (train_joint), backbones at 0.05x the head lr, cosine decay",
        "segmentation_windows": "random 16-slice windows anywhere in each series (validation: centre window)",
        "segmentation_refinement": f"decoders only, backbones frozen, lr {DECODER_LR}, cross-entropy weighted "
                                   "sqrt(most frequent / own frequency) clamped to [1, 10]",
        "head_lr": profile.lr,
        "structure_scales": SCALES_NOTE,
        "evidence_readout": EVIDENCE_NOTE,
    }
    version = f"synthetic-{profile_name}-seed{data_seed}"
    model.card = dataclasses.replace(
        model.card, version=version, intended_use=INTENDED_USE, training=training,
        metrics=_with_evidence({**model.card.metrics, **held_out, **phases}),
    )
    save_system(out, model)
    state.remove()
    logger.info("bundle %s written to %s in %.0f s", version, out, phases["seconds/total"])
    return model


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, args.threads))
    device = resolve_device(args.device)
    command = (f"ortho-node train bundle --out {args.out} --profile {args.profile} --data-seed {args.data_seed} "
               f"--seed {args.seed} --threads {args.threads} --workers {args.workers} --device {args.device}")
    if args.calibrate_only:
        recalibrate(args.out, args.profile, args.data_seed, args.seed, device, command + " --calibrate-only",
                    args.workers)
    else:
        try:
            build_bundle(args.out, args.profile, args.data_seed, args.seed, device, command, args.workers,
                         args.state, args.resume, args.snapshots)
        except BundleError as error:
            logger.error("%s", error)
            return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ortho_node.training.bundle", description=__doc__)
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
