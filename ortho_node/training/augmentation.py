"""On-the-fly augmentation of segmentation training windows: a new look and pose of the stored studies at every
step.

The SynthSeg-style render (:mod:`ortho_node.synthetic.randomization`) gives each randomised study one random
contrast when the data is generated, so a model trained for many epochs sees the same few dozen contrasts and
poses again and again. SynthSeg draws a new image for every step; here, at the cost of a few milliseconds a
window, each window gets its own in-plane affine (labels moved with the image, nearest neighbour) and its own
intensity transfer curve, gamma, bias field, blur and noise before the card's normalisation, so the model learns
the anatomy rather than the generator's grey levels. Windows are [depth, size, size] on the model grid, unscaled;
slices after a series' end (all zero) stay zero, as the predictor pads them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

#: Coarse control grid of the in-plane bias field (rows, columns).
_BIAS_GRID = (4, 4)


@dataclasses.dataclass(frozen=True)
class WindowAugmentation:
    """Ranges of the augmentation, drawn per window (uniform unless stated; card ``training.window_augmentation``).

    Attributes:
        probability: chance a window is augmented at all (the rest train as stored).
        rotation_deg: maximum in-plane rotation (flexion, prescription).
        scale: range of the in-plane zoom (children to large adults; a 160 mm crop of a small or a large knee).
        shift: maximum in-plane shift as a fraction of the grid (the crop's centre missing the joint).
        curve_probability: chance of a random intensity transfer curve: ``curve_points`` evenly spaced
            control points over the normalised range with random values, the first kept at 0 so air stays
            dark; a non-monotonic curve reorders the tissues' grey levels (a new contrast).
        curve_points: control points of that curve (>= 2).
        gamma_std: standard deviation of log(gamma).
        bias_std: maximum standard deviation of the log bias field at its coarse control points.
        blur_probability: chance of an in-plane Gaussian blur (a coarser pixel).
        blur_sigma: range of that blur's sigma, in model pixels.
        noise_std: range of Gaussian noise relative to the normalised range.
    """

    probability: float = 0.8
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    shift: float = 0.08
    curve_probability: float = 0.5
    curve_points: int = 6
    gamma_std: float = 0.3
    bias_std: float = 0.3
    blur_probability: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.2)
    noise_std: tuple[float, float] = (0.0, 0.05)

    def __post_init__(self) -> None:
        for name in ("probability", "curve_probability", "blur_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name, lo, hi in (("scale", 0.25, 4.0), ("blur_sigma", 0.0, 10.0), ("noise_std", 0.0, 1.0)):
            pair = getattr(self, name)
            if len(pair) != 2 or not lo <= pair[0] <= pair[1] <= hi:
                raise ValueError(f"{name} must be an ordered (min, max) within [{lo}, {hi}], got {pair}")
        for name, hi in (("rotation_deg", 180.0), ("shift", 0.5), ("gamma_std", 1.0), ("bias_std", 2.0)):
            if not 0.0 <= getattr(self, name) <= hi:
                raise ValueError(f"{name} must be in [0, {hi}], got {getattr(self, name)}")
        if self.curve_points < 2:
            raise ValueError(f"curve_points must be at least 2, got {self.curve_points}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ranges (the model card's recipe)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> WindowAugmentation:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown window-augmentation fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def apply(self, image: torch.Tensor, labels: torch.Tensor, slices: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, labels) of one window [depth, size, size] augmented; ``slices``: how many of its first slices
        hold the series (the rest is padding and stays zero / background)."""
        if slices <= 0 or _uniform(generator) >= self.probability:
            return image, labels
        image, labels = image.clone().float(), labels.clone()
        moved, moved_labels = self._affine(image[:slices], labels[:slices], generator)
        image[:slices], labels[:slices] = self._intensity(moved, generator), moved_labels
        return image, labels

    def _affine(self, image: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One in-plane rotation, zoom and shift for every slice; outside the window: zero image, background."""
        angle = math.radians(_uniform(generator, -self.rotation_deg, self.rotation_deg))
        zoom = _uniform(generator, *self.scale)
        dx, dy = (_uniform(generator, -self.shift, self.shift) * 2 for _ in range(2))  # grid spans [-1, 1]
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        theta = torch.tensor([[cos, -sin, dx], [sin, cos, dy]], dtype=torch.float32)
        grid = F.affine_grid(theta.expand(len(image), 2, 3), [len(image), 1, *image.shape[1:]], align_corners=False)
        moved = F.grid_sample(image[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        moved_labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                                     align_corners=False)
        return moved[:, 0], moved_labels[:, 0].round().to(labels.dtype)

    def _intensity(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Transfer curve, gamma, bias field, blur and noise on the window scaled to [0, 1] by its 0.5th and 99.5th
        percentiles (the card's normalisation comes after, as at inference)."""
        low, high = torch.quantile(image.reshape(-1), torch.tensor([0.005, 0.995]))
        if high <= low:
            return image
        x = ((image - low) / (high - low)).clamp_(0.0, 1.0)
        if _uniform(generator) < self.curve_probability:
            x = _transfer_curve(x, self.curve_points, generator)
        x = x.pow(math.exp(_normal(generator) * self.gamma_std))
        x = x * _bias_field(x.shape, _uniform(generator, 0.0, self.bias_std), generator)
        if _uniform(generator) < self.blur_probability:
            x = _blur(x, _uniform(generator, *self.blur_sigma))
        sigma = _uniform(generator, *self.noise_std)
        if sigma > 0:
            x = (x + sigma * torch.randn(x.shape, generator=generator)).clamp_(min=0.0)
        return x


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _normal(generator: torch.Generator) -> float:
    return float(torch.randn((), generator=generator))


def _transfer_curve(x: torch.Tensor, points: int, generator: torch.Generator) -> torch.Tensor:
    """A piecewise-linear map of [0, 1] through ``points`` evenly spaced control points, the first at 0."""
    values = torch.rand(points, generator=generator)
    values[0] = 0.0
    position = x * (points - 1)
    left = position.floor().clamp_(max=points - 2).long()
    weight = position - left
    return values[left] * (1 - weight) + values[left + 1] * weight


def _bias_field(shape: torch.Size, std: float, generator: torch.Generator) -> torch.Tensor:
    """A smooth multiplicative in-plane field, the same on every slice (a coil's sensitivity)."""
    coarse = torch.randn((1, 1, *_BIAS_GRID), generator=generator) * std
    return torch.exp(F.interpolate(coarse, size=tuple(shape[1:]), mode="bicubic", align_corners=True))[0]


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """In-plane Gaussian blur of every slice (separable, edges replicated)."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = x[:, None]
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return out[:, 0]
