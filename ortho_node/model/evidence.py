"""Evidence readouts: each diagnosis label's final logit from a logistic regression, fitted on fresh synthetic
studies, on what the model has already computed - the diagnosis head's logit and plane descriptors and, for a
finding that lives inside one segmented structure (a meniscal tear), the image statistics inside that
structure's predicted mask.

The diagnosis heads are trained on a few hundred studies and their last layers fit them closely; a linear
readout on the head's own plane descriptors, refitted on studies the backbones and heads never saw, carries
what the head learnt to new studies better (shoulder macro AUC 0.87 -> 0.94 on held-out studies). A meniscal
tear's fluid cleft is a few voxels inside a dark meniscus, and the head, pooling the coarse middle block,
stays at chance on it. The segmentation already says where the meniscus is, so per plane (every slice, model
grid) we measure the intensities inside the structure's mask, in the mask grown by one pixel and in that rim;
the pixels a morphological closing adds (a cleft splits or notches the mask, the closing fills it back); and
the local contrast (image minus its 5 x 5 mean) inside. Labels with structure evidence read the head's logit
and those statistics; the others the head's logit and descriptors. An extension of the paper's heads, used
only by cards that name it (``SystemCard.evidence``): the official configuration has none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ortho_node.labels import MODEL_PLANES, Plane

#: Intensity quantiles of a region (image scaled to [-1, 1] over the series).
QUANTILES = (0.5, 0.9, 0.99)
#: "Bright" = above the structure's median by these margins (fluid in a dark fibrocartilage).
BRIGHT = (0.3, 0.5)
#: In-plane closings (pixels) whose added pixels are the mask's notches and splits.
CLOSINGS = (3, 5)
#: Local contrast: image minus its mean over this many pixels in plane; counted above these margins.
CONTRAST_SIZE = 5
CONTRAST = (0.2, 0.4)
#: Statistics per region: size, quantiles, maximum, bright counts, "region empty".
REGION_STATISTICS = 1 + len(QUANTILES) + 1 + len(BRIGHT) + 1
#: Per plane and structure: three regions, per closing four hole statistics, two contrast regions.
STATISTICS = 3 * REGION_STATISTICS + 4 * len(CLOSINGS) + 2 * (1 + len(CONTRAST))
#: Fewer voxels than this and a region counts as empty.
MIN_VOXELS = 3


def readout_inputs(descriptor_width: int, structures: bool, planes: int = len(MODEL_PLANES)) -> int:
    """Inputs of one label's regression: the head's logit, each plane's descriptor and, when the joint has
    structure evidence, each plane's statistics of the label's structure."""
    return 1 + planes * descriptor_width + (planes * STATISTICS if structures else 0)


def readout_uses(labels: int, structured: Sequence[int], descriptor_width: int,
                 planes: int = len(MODEL_PLANES)) -> torch.Tensor:
    """[labels, inputs] bool: the head's logit for every label; the structure statistics for the labels
    ``structured`` (the joint's inputs have statistics columns only if there are any), the plane descriptors
    for the others."""
    uses = torch.zeros((labels, readout_inputs(descriptor_width, bool(structured), planes)), dtype=torch.bool)
    uses[:, 0] = True
    descriptors = slice(1, 1 + planes * descriptor_width)
    for k in range(labels):
        if k in structured:
            uses[k, descriptors.stop :] = True
        else:
            uses[k, descriptors] = True
    return uses


def _grow(mask: torch.Tensor, size: int) -> torch.Tensor:
    return F.max_pool3d(mask[None, None].float(), (1, size, size), 1, (0, size // 2, size // 2))[0, 0] > 0


def _close(mask: torch.Tensor, size: int) -> torch.Tensor:
    return ~_grow(~_grow(mask, size), size)


def _log_count(region: torch.Tensor) -> float:
    return math.log1p(int(region.sum()))


def _region(values: torch.Tensor, reference: float) -> list[float]:
    if values.numel() < MIN_VOXELS:
        return [0.0] * (REGION_STATISTICS - 1) + [1.0]
    quantiles = torch.quantile(values, torch.tensor(QUANTILES)).tolist()
    bright = [_log_count(values - reference > margin) for margin in BRIGHT]
    return [math.log1p(values.numel()), *quantiles, float(values.max()), *bright, 0.0]


def structure_statistics(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[:data:`STATISTICS`] of one structure in one series.

    Args:
        image: [n, S, S] the series' slices on the model grid, scaled to [-1, 1] over the series.
        mask: [n, S, S] bool, the structure's predicted voxels.
    """
    inside = image[mask]
    reference = float(inside.median()) if inside.numel() >= MIN_VOXELS else 0.0
    grown = _grow(mask, 3)
    values = _region(inside, reference) + _region(image[grown], reference) + _region(image[grown & ~mask], reference)
    closed = {size: _close(mask, size) for size in CLOSINGS}
    for size in CLOSINGS:
        holes = image[closed[size] & ~mask]
        values += [math.log1p(holes.numel()), *(_log_count(holes - reference > m) for m in BRIGHT),
                   float(holes.max()) - reference if holes.numel() else 0.0]
    half = CONTRAST_SIZE // 2
    local = F.avg_pool3d(image[None, None], (1, CONTRAST_SIZE, CONTRAST_SIZE), 1, (0, half, half),
                         count_include_pad=False)[0, 0]
    contrast = image - local
    for region in (mask, closed[CLOSINGS[-1]]):
        v = contrast[region]
        values += [float(v.max()) if v.numel() else 0.0, *(_log_count(v > m) for m in CONTRAST)]
    return torch.tensor(values, dtype=torch.float32)


def plane_statistics(slices: torch.Tensor, class_maps: torch.Tensor, structures: Sequence[int]) -> torch.Tensor:
    """[len(structures), STATISTICS] for one series: ``slices`` [n, S, S] on the model grid (unscaled),
    ``class_maps`` [K, n, S, S] its averaged class probabilities; each structure's mask is its arg-max."""
    low, high = slices.min(), slices.max()
    image = ((slices - low) / (high - low) * 2 - 1).float().cpu()
    labels = class_maps.argmax(0).cpu()
    return torch.stack([structure_statistics(image, labels == k) for k in structures])


def stack_inputs(head_logits: torch.Tensor, descriptors: Mapping[Plane, torch.Tensor], descriptor_width: int,
                 statistics: Mapping[Plane, torch.Tensor] | None = None) -> torch.Tensor:
    """[L, :func:`readout_inputs`] rows: each label's head logit (``head_logits`` [L]), the planes' descriptors
    ``descriptors[plane]`` [W] and, where the joint has structure evidence, ``statistics[plane]`` [L, STATISTICS]
    (NaN for labels without a structure), in :data:`MODEL_PLANES` order; NaN for a plane not analysed."""
    labels = len(head_logits)
    rows = [head_logits.float().cpu()[:, None]]
    for plane in MODEL_PLANES:
        descriptor = descriptors.get(plane)
        rows.append(torch.full((labels, descriptor_width), math.nan) if descriptor is None
                    else descriptor.float().cpu().expand(labels, -1))
    if statistics is not None:
        rows += [statistics.get(p, torch.full((labels, STATISTICS), math.nan)).float().cpu() for p in MODEL_PLANES]
    return torch.cat(rows, dim=1)


class EvidenceReadout(nn.Module):
    """Per label, a logistic regression on the standardised :func:`stack_inputs` columns it uses."""

    def __init__(self, uses: torch.Tensor) -> None:
        super().__init__()
        labels, inputs = uses.shape
        self.register_buffer("uses", uses.bool(), persistent=False)  # from the card, not the weights file
        self.register_buffer("mean", torch.zeros(labels, inputs))
        self.register_buffer("scale", torch.ones(labels, inputs))
        self.weight = nn.Parameter(torch.zeros(labels, inputs))
        self.bias = nn.Parameter(torch.zeros(labels))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """[..., L, inputs] -> logits [..., L]. A plane not analysed (NaN) reads as the training average: it
        adds nothing, and the label rests on the planes there are and the head (whose gate fuses over them)."""
        standardised = torch.nan_to_num((inputs - self.mean) / self.scale, nan=0.0)
        return (standardised * self.weight * self.uses).sum(-1) + self.bias

    @torch.no_grad()
    def fit(self, inputs: torch.Tensor, targets: torch.Tensor, l2: float) -> None:
        """Fit every label's regression on ``inputs`` [N, L, inputs] and 0/1 ``targets`` [N, L] (L2 penalty on
        the standardised weights)."""
        inputs, targets = inputs.double().cpu(), targets.double().cpu()
        mean = inputs.nanmean(0).nan_to_num(0.0)
        scale = ((inputs - mean) ** 2).nanmean(0).sqrt().nan_to_num(1.0).clamp_min(1e-6)
        self.mean.copy_(mean)
        self.scale.copy_(scale)
        x = torch.nan_to_num((inputs - mean) / scale, nan=0.0)
        self.weight.zero_()
        for k, uses in enumerate(self.uses.cpu()):
            weight, bias = _logistic_regression(x[:, k][:, uses], targets[:, k], l2)
            self.weight[k, uses.to(self.weight.device)] = weight.to(self.weight)
            self.bias[k] = bias


def _logistic_regression(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ weight + bias, y) + l2 * (weight**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return weight.detach(), bias.detach()
