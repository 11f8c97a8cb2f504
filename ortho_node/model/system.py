"""The task model: three plane backbones with the knee segmentation decoders and per-joint diagnosis heads,
and its on-disk form (``model.safetensors`` + ``model_card.json``, :class:`SystemCard`).

All joints share the (knee-pretrained) backbones, as in the paper's transfer experiments. Tensor names:
``backbones.<plane>.*`` (GaussianDiffusion names up to the middle block, so a pretrained backbone loads
unchanged; the UNet decoder is not kept),
``segmentation.<plane>.*``, ``diagnosis.<joint>.*`` and, for the joints whose card names an evidence readout,
``evidence.<joint>.*``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ortho_node.labels import (
    DIAGNOSIS_LABELS,
    KNEE_STRUCTURES,
    MODEL_JOINTS,
    MODEL_PLANES,
    Joint,
    Plane,
)
from ortho_node.model.card import (
    CARD_FORMAT,
    CardFiles,
    CardKind,
    CheckpointError,
    load_strict,
    read_card_file,
    read_weights,
    save_card,
)
from ortho_node.model.checkpoint import build_model, load_checkpoint, load_official
from ortho_node.model.diffusion import DiffusionConfig, GaussianDiffusion
from ortho_node.model.evidence import EvidenceReadout, readout_uses
from ortho_node.model.features import DEFAULT_BLOCK, DEFAULT_T, FeatureSpec
from ortho_node.model.heads import (
    DiagnosisHead,
    FusionMode,
    SegmentationDecoder,
    decoder_widths,
)
from ortho_node.model.preprocessing import PreprocessSpec
from ortho_node.model.runtime import match_memory_format
from ortho_node.model.unet import UNetConfig
from ortho_node.prediction import OperatingPoint, SplitFigures, ThresholdRule

logger = logging.getLogger(__name__)

SYSTEM_CARD_FORMAT = CARD_FORMAT
SEGMENTATION_JOINT = Joint.KNEE
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class DiagnosisTask:
    """One joint's labels, how its planes are fused, and the operating threshold of each label, with the record
    of how each threshold was chosen and what it does on validation studies (``operating_points``; cards
    written before it have none, and their JSON stays as it was)."""

    labels: tuple[str, ...]
    thresholds: Mapping[str, float]
    fusion: FusionMode = FusionMode.MPAE
    operating_points: Mapping[str, OperatingPoint] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.operating_points) - set(self.labels))
        if unknown:
            raise CheckpointError(f"operating points for unknown labels: {', '.join(unknown)}")

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"labels": list(self.labels), "thresholds": dict(self.thresholds),
                                  "fusion": self.fusion.value}
        if self.operating_points:
            values["operating_points"] = {label: p.to_dict() for label, p in self.operating_points.items()}
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DiagnosisTask:
        points = {label: OperatingPoint.from_dict(p) for label, p in values.get("operating_points", {}).items()}
        return cls(tuple(values["labels"]), dict(values["thresholds"]), FusionMode(values["fusion"]), points)

    @classmethod
    def default(cls, joint: Joint, fusion: FusionMode = FusionMode.MPAE) -> DiagnosisTask:
        labels = DIAGNOSIS_LABELS[joint]
        return cls(labels, {label: DEFAULT_THRESHOLD for label in labels}, fusion)


@dataclass(frozen=True)
class SystemCard(CardFiles):
    """Everything needed to rebuild, trust and describe the task model, stored beside its weights."""

    KIND: ClassVar[CardKind] = CardKind.SYSTEM

    name: str
    version: str
    unet: UNetConfig
    diffusion: DiffusionConfig
    preprocessing: PreprocessSpec
    feature: FeatureSpec = FeatureSpec()
    #: Encoder blocks (``in_*``, coarse to fine) the segmentation decoders also read; () = the paper's decoder.
    segmentation_skips: tuple[str, ...] = ()
    #: Channels of the decoder stages, coarse to fine; () = halving per stage (:func:`decoder_widths`).
    segmentation_widths: tuple[int, ...] = ()
    structures: tuple[str, ...] = KNEE_STRUCTURES
    #: Noise draws (eps) whose class maps each segmentation window averages; 1 = the paper's single draw. The
    #: diagnosis (head and evidence readout) reads the first draw alone, whatever this says.
    segmentation_draws: int = 1
    #: Per structure, the factor on its averaged probability before the most probable structure is taken:
    #: chosen on validation studies (thin structures otherwise lose their borders to large neighbours); () = 1.
    structure_scales: tuple[float, ...] = ()
    diagnosis: Mapping[Joint, DiagnosisTask] = field(default_factory=dict)
    #: The joints whose labels are scored by an evidence readout (:mod:`ortho_node.model.evidence`), each with
    #: label -> the structure whose statistics that label reads (the others read the head's plane descriptors).
    evidence: Mapping[Joint, Mapping[str, str]] = field(default_factory=dict)
    intended_use: str = ""
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.segmentation_draws < 1:
            raise CheckpointError(f"segmentation_draws must be at least 1, got {self.segmentation_draws}")
        if self.structure_scales and (len(self.structure_scales) != len(self.structures)
                                      or not all(0 < s < math.inf for s in self.structure_scales)):
            raise CheckpointError(f"structure_scales needs one positive factor per structure "
                                  f"({len(self.structures)}), got {list(self.structure_scales)}")

    def _json_values(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(
            unet=self.unet.to_dict(), diffusion=self.diffusion.to_dict(), preprocessing=self.preprocessing.to_dict(),
            feature={"t": self.feature.t, "block": self.feature.block}, structures=list(self.structures),
            diagnosis={j.value: task.to_dict() for j, task in self.diagnosis.items()},
            evidence={j.value: dict(labels) for j, labels in self.evidence.items()},
            training=dict(self.training), metrics=dict(self.metrics),
        )
        return values

    @classmethod
    def _from_values(cls, values: dict[str, Any]) -> SystemCard:
        values.update(
            unet=UNetConfig.from_dict(values["unet"]), diffusion=DiffusionConfig.from_dict(values["diffusion"]),
            preprocessing=PreprocessSpec.from_dict(values["preprocessing"]), feature=FeatureSpec(**values["feature"]),
            structures=tuple(values["structures"]), segmentation_skips=tuple(values.get("segmentation_skips", ())),
            segmentation_widths=tuple(values.get("segmentation_widths", ())),
            structure_scales=tuple(values.get("structure_scales", ())),
            diagnosis={Joint(j): DiagnosisTask.from_dict(t) for j, t in values["diagnosis"].items()},
            evidence={Joint(j): dict(labels) for j, labels in values.get("evidence", {}).items()},
        )
        return cls(**values)

    def evidence_structures(self, joint: Joint) -> tuple[tuple[int, int], ...]:
        """(label index, structure index) of each label of ``joint`` scored with structure evidence, in label
        order (a card's JSON keeps no mapping order)."""
        labels = self.diagnosis[joint].labels
        return tuple(sorted((labels.index(label), self.structures.index(structure))
                            for label, structure in self.evidence.get(joint, {}).items()))

    def threshold(self, joint: Joint, label: str) -> float:
        return float(self.diagnosis[joint].thresholds.get(label, DEFAULT_THRESHOLD))

    def operating_point(self, joint: Joint, label: str) -> OperatingPoint | None:
        """The card's record of ``label``'s threshold. Cards without one (written before operating points) give
        their validation figures where their metrics hold them at the card's own threshold (Youden's J, study
        counts unknown); None otherwise (an untrained or official card)."""
        recorded = self.diagnosis[joint].operating_points.get(label)
        if recorded is not None:
            return recorded
        prefix = f"{joint.value}-dx/val"
        threshold = self.metrics.get(f"{prefix}/threshold/{label}")
        if threshold is None or label not in self.diagnosis[joint].thresholds \
                or not math.isclose(threshold, self.threshold(joint, label)):
            return None
        figures = [self.metrics.get(f"{prefix}/{name}/{label}") for name in ("sensitivity", "specificity")]
        sensitivity, specificity = (None if v is None or not math.isfinite(v) else float(v) for v in figures)
        return OperatingPoint(ThresholdRule.YOUDEN, SplitFigures(sensitivity, specificity),
                              note="older card: validation figures from its metrics")


class OrthoModel(nn.Module):
    """Backbones per plane (``MODEL_PLANES`` order), knee segmentation decoders per plane, diagnosis heads."""

    def __init__(self, card: SystemCard) -> None:
        super().__init__()
        self.card = card
        self.backbones = nn.ModuleDict(
            {p.value: encoder_only(build_model(card.unet, card.diffusion)) for p in MODEL_PLANES}
        )
        channels = self.feature_channels(card.unet, card.feature.block)
        skip_channels = self._skip_channels(card)
        widths = self.stage_widths(card)
        self.segmentation = nn.ModuleDict(
            {p.value: SegmentationDecoder(channels, len(card.structures), widths, skip_channels) for p in MODEL_PLANES}
        )
        # Heads in Joint order, not the card's: a card read back from JSON lists its joints sorted, and the
        # parameter order (which an optimiser's saved state follows) must not depend on where the card came from.
        self.diagnosis = nn.ModuleDict(
            {j.value: DiagnosisHead(channels, len(card.diagnosis[j].labels), len(MODEL_PLANES),
                                    card.diagnosis[j].fusion)
             for j in Joint if j in card.diagnosis}
        )
        self.evidence = nn.ModuleDict({j.value: self._readout(card, j) for j in Joint if j in card.evidence})

    @classmethod
    def _readout(cls, card: SystemCard, joint: Joint) -> EvidenceReadout:
        """The joint's evidence readout, its inputs checked against what the model can read."""
        structures = card.evidence[joint]
        if joint not in card.diagnosis:
            raise CheckpointError(f"evidence readout for {joint.value}: no diagnosis labels")
        if structures and (joint is not SEGMENTATION_JOINT or len(card.structures) < 2):
            raise CheckpointError(f"structure evidence for {joint.value} needs its segmentation")
        unknown = [f"{label} -> {structure}" for label, structure in structures.items()
                   if label not in card.diagnosis[joint].labels or structure not in card.structures]
        if unknown:
            raise CheckpointError(f"structure evidence names unknown labels or structures: {', '.join(unknown)}")
        width = 2 * cls.feature_channels(card.unet, card.feature.block)  # DiagnosisHead's plane descriptor
        structured = [label for label, _ in card.evidence_structures(joint)]
        return EvidenceReadout(readout_uses(len(card.diagnosis[joint].labels), structured, width))

    @staticmethod
    def feature_channels(unet: UNetConfig, block: str) -> int:
        if block not in ("mid_0", "mid_1", "mid_2"):
            raise ValueError(f"the heads read a middle block, not {block!r}")
        return unet.model_channels * unet.channel_mult[-1]

    @classmethod
    def stage_widths(cls, card: SystemCard) -> tuple[int, ...]:
        """The card's decoder stage widths, or halving per stage from the feature block's channels."""
        halving = decoder_widths(cls.feature_channels(card.unet, card.feature.block))
        if card.segmentation_widths and len(card.segmentation_widths) != len(halving):
            raise CheckpointError(
                f"segmentation_widths needs {len(halving)} stages, got {list(card.segmentation_widths)}")
        return card.segmentation_widths or halving

    def _skip_channels(self, card: SystemCard) -> list[int]:
        """Channels of each skip block, checked against the resolution of its decoder stage."""
        layout = self.backbone(MODEL_PLANES[0]).denoise_fn.encoder_layout
        stages = len(self.stage_widths(card))
        if card.segmentation_skips and len(card.segmentation_skips) != stages:
            raise CheckpointError(f"segmentation_skips needs {stages} blocks, got {list(card.segmentation_skips)}")
        total = 2 ** (len(card.unet.channel_mult) - 1)
        channels = []
        for stage, name in enumerate(card.segmentation_skips):
            if name not in layout:
                raise CheckpointError(f"segmentation skip {name!r} is not an encoder block ({sorted(layout)})")
            width, factor = layout[name]
            if factor != total // 2 ** (stage + 1):
                raise CheckpointError(f"segmentation skip {name!r} (downsample {factor}) does not match decoder "
                                      f"stage {stage} (downsample {total // 2 ** (stage + 1)})")
            channels.append(width)
        return channels

    def add_evidence(self, joint: Joint, structures: Mapping[str, str]) -> EvidenceReadout:
        """Score every label of ``joint`` with an evidence readout, ``structures`` (label -> structure) reading
        structure statistics: the card names it and an unfitted readout (0.5 until fitted) replaces any earlier."""
        self.card = dataclasses.replace(self.card, evidence={**self.card.evidence, joint: dict(structures)})
        module = self._readout(self.card, joint)
        self.evidence[joint.value] = module.to(next(self.parameters()).device)
        return module

    def backbone(self, plane: Plane) -> GaussianDiffusion:
        return self.backbones[plane.value]  # type: ignore[return-value]

    def _activations(self, plane: Plane, x_0: torch.Tensor, noise: torch.Tensor,
                     blocks: tuple[str, ...]) -> dict[str, torch.Tensor]:
        backbone = self.backbone(plane)
        t = torch.full((x_0.shape[0],), self.card.feature.t, dtype=torch.long, device=x_0.device)
        x_t = match_memory_format(backbone.q_sample(x_0, t, noise), backbone)
        return backbone.denoise_fn.activations(x_t, t, blocks)

    def features(self, plane: Plane, x_0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_0, noise [B, 1, D, S, S] -> the feature block at step ``card.feature.t`` [B, C, d, h, w].

        Differentiable (fine-tuning); for inference wrap in ``torch.inference_mode``.
        """
        block = self.card.feature.block
        return self._activations(plane, x_0, noise, (block,))[block]

    def segment(self, plane: Plane, x_0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_0, noise [B, 1, D, S, S] -> class logits [B, K, D, S, S] from one backbone pass."""
        return self.segment_with_features(plane, x_0, noise)[0]

    def segment_with_features(self, plane: Plane, x_0: torch.Tensor, noise: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits, the feature block of :meth:`features`) from the same backbone pass."""
        block, skips = self.card.feature.block, self.card.segmentation_skips
        found = self._activations(plane, x_0, noise, (block, *skips))
        return self.segmentation[plane.value](found[block], [found[name] for name in skips]), found[block]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Encoder, middle block and time embedding: what fine-tuning trains at 0.05x the head rate."""
        params = []
        for backbone in self.backbones.values():
            unet = backbone.denoise_fn
            for module in (unet.time_embed, unet.input_blocks, unet.middle_block):
                params.extend(module.parameters())
        return params

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.segmentation.parameters(), *self.diagnosis.parameters()]

    def load_backbones(self, sources: Mapping[Plane, Path]) -> None:
        """Load pretrained backbones into their planes: a ``train pretrain`` output folder (its card must
        describe this model's UNet), or an official ``.pt`` file (its EMA weights, read in this model's UNet
        configuration: every tensor must fit, :class:`CheckpointError` lists those that do not)."""
        for plane, source in sources.items():
            if Path(source).is_file():
                backbone, _ = load_official(Path(source), self.card.unet, self.card.diffusion)
            else:
                backbone, card = load_checkpoint(source)
                if card.unet != self.card.unet:
                    raise CheckpointError(f"{source}: backbone configuration differs from the task model's")
            own = self.backbones[plane.value]
            own.load_state_dict({k: v for k, v in backbone.state_dict().items() if k in own.state_dict()})


def encoder_only(backbone: GaussianDiffusion) -> GaussianDiffusion:
    """Drop the UNet decoder: features stop at the middle block, so the task model never runs it (and the
    bundled weights stay small). ``activations`` of ``in_*``/``mid_*`` blocks work as before."""
    backbone.denoise_fn.output_blocks = nn.ModuleList()
    backbone.denoise_fn.out = nn.Sequential()
    return backbone


#: In-plane size of the middle block the paper's decoder reads (16 x 16 from a 256-pixel input).
PAPER_MIDDLE_SIZE = 16


def default_segmentation_skips(unet: UNetConfig) -> tuple[str, ...]:
    """The paper's decoder (no skips) when the middle block is as fine as the paper's; otherwise, per decoder
    stage, the last encoder block at that stage's resolution (``in_7, in_5, in_3, in_1`` reduced)."""
    total = 2 ** (len(unet.channel_mult) - 1)
    if unet.image_size // total >= PAPER_MIDDLE_SIZE:
        return ()
    from ortho_node.model.unet import UNet

    last_at = {factor: name for name, (_, factor) in UNet(unet).encoder_layout.items()}
    stages = len(decoder_widths(OrthoModel.feature_channels(unet, DEFAULT_BLOCK)))
    return tuple(last_at[total // 2 ** (k + 1)] for k in range(stages))


def new_card(unet: UNetConfig, joints: tuple[Joint, ...] = MODEL_JOINTS, *,
             fusion: FusionMode = FusionMode.MPAE, name: str = "OrthoDiffusion", version: str = "untrained",
             t: int = DEFAULT_T, block: str = DEFAULT_BLOCK,
             segmentation_skips: tuple[str, ...] | None = None,
             segmentation_widths: tuple[int, ...] = ()) -> SystemCard:
    """A fresh card; ``segmentation_skips`` None = :func:`default_segmentation_skips`."""
    return SystemCard(
        name=name, version=version, unet=unet, diffusion=DiffusionConfig(),
        preprocessing=PreprocessSpec(depth=unet.depth_size, size=unet.image_size), feature=FeatureSpec(t, block),
        segmentation_skips=default_segmentation_skips(unet) if segmentation_skips is None else tuple(segmentation_skips),
        segmentation_widths=tuple(segmentation_widths),
        diagnosis={j: DiagnosisTask.default(j, fusion) for j in joints},
    )


def save_system(directory: Path, model: OrthoModel, card: SystemCard | None = None) -> SystemCard:
    """Write weights and card (:func:`~ortho_node.model.card.save_card`); returns the card as written, which
    the model then carries."""
    written = save_card(Path(directory), model, card or model.card)
    model.card = written
    logger.info("saved task model %s to %s", written.version, directory)
    return written


def read_system_card(directory: Path) -> SystemCard:
    return read_card_file(directory, SystemCard)


def load_system(directory: Path) -> OrthoModel:
    """Rebuild the task model on the CPU, verifying the weights' hash and every tensor name and shape."""
    card = read_system_card(directory)
    model = OrthoModel(card)
    load_strict(model, read_weights(directory, card))
    return model
