"""Task heads on backbone features (DESIGN.md section 4): diagnosis per plane, plane fusion, clinical fusion,
segmentation decoder, and their losses.

Shapes: ``P`` planes in ``MODEL_PLANES`` order, ``C`` feature channels (256 official, 64 reduced), ``K``
labels, features ``[B, C, d, h, w]`` (``mid_2`` at t = 100: ``[B, 256, 1, 16, 16]`` official).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ortho_node.labels import UNLABELLED

#: Clinical inputs: age (years), sex (M/F/O), height (m), weight (kg), each with a "missing" indicator.
CLINICAL_FEATURES = ("age", "sex", "height", "weight")
CLINICAL_INPUTS = 2 * len(CLINICAL_FEATURES)
CLINICAL_HIDDEN = 64
MPAE_HIDDEN = 32
POOL_HEADS = 16
#: sigmoid(2) = 0.88: the fused logit starts mostly from the image.
GATE_INIT = 2.0
SEG_CE_WEIGHT = 0.2


class FusionMode(str, enum.Enum):
    """How the planes' evidence becomes one logit per label."""

    CONCAT = "concat"  # 3 x 2C features -> linear; missing planes contribute zeros
    MPAE = "mpae"  # per-plane logits, per-label 3 -> 32 -> 3 gate, softmax over present planes


class AttentionPooling(nn.Module):
    """Self-attention over the feature tokens, mean of the context vectors, output projection.

    [B, C, d, h, w] -> [B, C]. ``heads`` must divide ``C`` (16 heads: 16 channels each official, 4 reduced).
    """

    def __init__(self, channels: int, heads: int = POOL_HEADS) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{heads} attention heads do not divide {channels} channels")
        self.heads = heads
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = features.flatten(2).transpose(1, 2)  # [B, N, C]
        b, n, c = tokens.shape
        q, k, v = self.qkv(tokens).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, C/heads]
        return self.proj(context.mean(dim=2).reshape(b, c))


class PlaneEncoder(nn.Module):
    """One plane's descriptor: attention pooling concatenated with global average pooling, [B, 2C]."""

    def __init__(self, channels: int, heads: int = POOL_HEADS) -> None:
        super().__init__()
        self.pool = AttentionPooling(channels, heads)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.pool(features), features.mean(dim=(2, 3, 4))], dim=1)


class MPAEGate(nn.Module):
    """Per label ``k`` an MLP P -> 32 -> P over the planes' logits; softmax over the present planes.

    logits [B, P, K], present [B, P] bool -> weights [B, P, K] (zero for absent planes, sum 1 over P).
    """

    def __init__(self, planes: int, labels: int, hidden: int = MPAE_HIDDEN) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(labels, hidden, planes) / math.sqrt(planes))
        self.b1 = nn.Parameter(torch.zeros(labels, hidden))
        self.w2 = nn.Parameter(torch.zeros(labels, planes, hidden))  # starts as equal weights
        self.b2 = nn.Parameter(torch.zeros(labels, planes))

    def forward(self, logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        x = logits.transpose(1, 2)  # [B, K, P]
        hidden = F.silu(torch.einsum("bkp,khp->bkh", x, self.w1) + self.b1)
        scores = torch.einsum("bkh,kph->bkp", hidden, self.w2) + self.b2
        scores = scores.masked_fill(~present[:, None, :], float("-inf"))
        return torch.softmax(scores, dim=-1).transpose(1, 2)


class ClinicalBranch(nn.Module):
    """MLP(64) over the clinical vector [B, 8] (values and missing indicators) -> clinical logits [B, K]."""

    def __init__(self, labels: int, hidden: int = CLINICAL_HIDDEN) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(CLINICAL_INPUTS, hidden), nn.SiLU(), nn.Linear(hidden, labels))
        self.gate = nn.Parameter(torch.full((labels,), GATE_INIT))

    def forward(self, image_logits: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        """sigmoid(a_k) image + (1 - sigmoid(a_k)) clinical; rows with no clinical value keep the image logit."""
        gate = torch.sigmoid(self.gate).expand_as(image_logits)
        known = clinical[:, len(CLINICAL_FEATURES) :].lt(0.5).any(dim=1, keepdim=True)
        gate = torch.where(known, gate, torch.ones_like(gate))
        return gate * image_logits + (1 - gate) * self.mlp(clinical)


def clinical_vector(age_years: float | None, sex: str | None, height_m: float | None,
                    weight_kg: float | None) -> torch.Tensor:
    """The 8 clinical inputs: 4 normalised values (0 when missing) then 4 indicators (1 = missing)."""
    sex_value = {"M": 1.0, "F": -1.0}.get((sex or "").upper())
    raw = (
        None if age_years is None else age_years / 50.0 - 1.0,
        sex_value,
        None if not height_m else (height_m - 1.70) / 0.1,
        None if not weight_kg else (weight_kg - 75.0) / 15.0,
    )
    values = [0.0 if v is None else float(v) for v in raw]
    missing = [1.0 if v is None else 0.0 for v in raw]
    return torch.tensor(values + missing, dtype=torch.float32)


class ClinicalInputs(Protocol):
    """The header facts the clinical fusion reads (``assembly.study.ClinicalFacts`` has them; the model does
    not import assembly)."""

    @property
    def age_years(self) -> float | None: ...
    @property
    def patient_sex(self) -> str | None: ...
    @property
    def patient_size(self) -> float | None: ...
    @property
    def patient_weight(self) -> float | None: ...


def clinical_from_facts(facts: ClinicalInputs) -> torch.Tensor:
    """[8] clinical input of the diagnosis heads from the header facts (missing values flagged)."""
    return clinical_vector(facts.age_years, facts.patient_sex, facts.patient_size, facts.patient_weight)


@dataclass(frozen=True)
class DiagnosisOutput:
    logits: torch.Tensor  # [B, K], after clinical fusion
    image_logits: torch.Tensor  # [B, K], after plane fusion
    plane_weights: torch.Tensor | None  # [B, P, K] (MPAE only)
    descriptors: torch.Tensor  # [B, P, 2C] each plane's pooled descriptor (zeros where absent)


class DiagnosisHead(nn.Module):
    """Per-plane pooling classifiers, plane fusion and clinical fusion for one joint's K labels."""

    def __init__(self, channels: int, labels: int, planes: int = 3, fusion: FusionMode = FusionMode.MPAE,
                 heads: int = POOL_HEADS) -> None:
        super().__init__()
        self.fusion = FusionMode(fusion)
        self.planes, self.labels, self.width = planes, labels, 2 * channels
        self.encoders = nn.ModuleList(PlaneEncoder(channels, heads) for _ in range(planes))
        if self.fusion is FusionMode.MPAE:
            self.classifiers = nn.ModuleList(nn.Linear(self.width, labels) for _ in range(planes))
            self.gate = MPAEGate(planes, labels)
        else:
            self.classifier = nn.Linear(planes * self.width, labels)
        self.clinical = ClinicalBranch(labels)

    def forward(self, features: Sequence[torch.Tensor | None], clinical: torch.Tensor,
                present: torch.Tensor | None = None) -> DiagnosisOutput:
        """features: per plane [B, C, d, h, w] or None (absent for the whole batch); clinical [B, 8];
        present: optional [B, P] bool for planes absent in some studies of the batch."""
        if len(features) != self.planes:
            raise ValueError(f"expected {self.planes} planes of features, got {len(features)}")
        reference = next((f for f in features if f is not None), None)
        if reference is None:
            raise ValueError("at least one plane's features are needed")
        batch = reference.shape[0]
        available = torch.tensor([f is not None for f in features], device=reference.device)
        mask = available.expand(batch, -1) if present is None else present.to(reference.device) & available
        descriptors = [
            enc(f) if f is not None else reference.new_zeros(batch, self.width)
            for enc, f in zip(self.encoders, features)
        ]
        descriptors = [d * mask[:, i : i + 1].to(d.dtype) for i, d in enumerate(descriptors)]
        weights = None
        if self.fusion is FusionMode.MPAE:
            per_plane = torch.stack([c(d) for c, d in zip(self.classifiers, descriptors)], dim=1)  # [B, P, K]
            per_plane = per_plane * mask[:, :, None].to(per_plane.dtype)
            weights = self.gate(per_plane, mask)
            image_logits = (weights * per_plane).sum(dim=1)
        else:
            image_logits = self.classifier(torch.cat(descriptors, dim=1))
        return DiagnosisOutput(self.clinical(image_logits, clinical.to(image_logits)), image_logits, weights,
                               torch.stack(descriptors, dim=1))


def decoder_widths(channels: int, stages: int = 4, floor: int = 8) -> tuple[int, ...]:
    """Halve per stage (256 -> 128, 64, 32, 16 official); never below ``floor`` (64 -> 32, 16, 8, 8 reduced)."""
    return tuple(max(channels // 2 ** (i + 1), floor) for i in range(stages))


def _groups(channels: int, groups: int = 8) -> int:
    return math.gcd(channels, groups)


class ResidualConvBlock(nn.Module):
    """GroupNorm(8) - SiLU - conv3 - GroupNorm(8) - SiLU - conv3, plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(channels), channels), nn.SiLU(), nn.Conv3d(channels, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels), channels), nn.SiLU(), nn.Conv3d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SegmentationDecoder(nn.Module):
    """``mid_2`` features [B, C, d, h, w] -> class logits [B, classes, 16 d, 16 h, 16 w].

    Four ConvTranspose3d (kernel 4, stride 2, padding 1) each followed by a residual conv block, then a
    1x1x1 convolution to the classes: [B, 256, 1, 16, 16] -> [B, classes, 16, 256, 256] official.

    ``skip_channels`` (one per stage, coarse to fine; empty = the paper's decoder) adds encoder activations
    at each stage's resolution, concatenated and fused by a 1x1x1 convolution before the residual block.
    A reduced backbone with a 64-pixel input leaves a 4 x 4 middle block, too coarse to place cartilage
    a pixel or two thick; the encoder's finer blocks carry that position.
    """

    def __init__(self, channels: int, classes: int, widths: Sequence[int] | None = None,
                 skip_channels: Sequence[int] = ()) -> None:
        super().__init__()
        widths = tuple(widths or decoder_widths(channels))
        if skip_channels and len(skip_channels) != len(widths):
            raise ValueError(f"need one skip per decoder stage ({len(widths)}), got {len(skip_channels)}")
        stages, previous = [], channels
        for width in widths:
            stages += [nn.ConvTranspose3d(previous, width, 4, stride=2, padding=1), ResidualConvBlock(width)]
            previous = width
        self.stages = nn.Sequential(*stages)
        self.fuse = nn.ModuleList(nn.Conv3d(w + s, w, 1) for w, s in zip(widths, skip_channels))
        self.classify = nn.Conv3d(previous, classes, 1)
        self.widths = widths

    def forward(self, features: torch.Tensor, skips: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        if len(skips) != len(self.fuse):
            raise ValueError(f"decoder expects {len(self.fuse)} skip tensors, got {len(skips)}")
        h = features
        for i in range(len(self.widths)):
            h = self.stages[2 * i](h)
            if self.fuse:
                h = self.fuse[i](torch.cat([h, skips[i].to(h.dtype)], dim=1))
            h = self.stages[2 * i + 1](h)
        return self.classify(h)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes, sums taken over the whole batch; voxels labelled
    :data:`~ortho_node.labels.UNLABELLED` take no part.

    logits [B, K, D, H, W]; target [B, D, H, W] int64.
    """
    labelled = (target != UNLABELLED).unsqueeze(1)
    probabilities = torch.softmax(logits.float(), dim=1)[:, 1:] * labelled
    onehot = F.one_hot(torch.where(labelled[:, 0], target, 0), logits.shape[1]).permute(0, 4, 1, 2, 3)[:, 1:]
    onehot = onehot.to(probabilities.dtype) * labelled
    dims = (0, 2, 3, 4)
    intersection = (probabilities * onehot).sum(dims)
    total = probabilities.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * intersection + smooth) / (total + smooth)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, class_weight: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """0.2 x cross-entropy + soft Dice (DESIGN.md section 4); ``class_weight`` [K] weighs the cross-entropy.
    Voxels labelled :data:`~ortho_node.labels.UNLABELLED` (slices a sparse mask leaves out) count in neither."""
    if not (target != UNLABELLED).any():  # a window of unlabelled slices only: nothing to learn from it
        return logits.float().sum() * 0.0
    ce = F.cross_entropy(logits.float(), target, weight=class_weight, ignore_index=UNLABELLED)
    return SEG_CE_WEIGHT * ce + soft_dice_loss(logits, target)


def diagnosis_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy per label, averaged over the known targets (NaN: unknown, a blank in a department's
    findings CSV); ``pos_weight`` [K] (negatives / positives) offsets class imbalance."""
    known = ~torch.isnan(target.float())
    losses = F.binary_cross_entropy_with_logits(logits.float(), torch.nan_to_num(target.float()),
                                                pos_weight=pos_weight, reduction="none")
    return (losses * known).sum() / known.sum().clamp(min=1)
