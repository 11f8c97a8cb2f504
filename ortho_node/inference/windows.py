"""Sliding windows along a series: where the model's windows start, and the Gaussian-weighted average of
their overlapping class maps on the model grid."""

from __future__ import annotations

import torch

from ortho_node.model.preprocessing import GridMapping, PreprocessSpec


def window_starts(slices: int, depth: int, stride: int | None = None) -> tuple[int, ...]:
    """First slices of the windows covering ``slices`` source slices: the official centre window, then windows
    every ``stride`` slices on either side of it, the outermost flush with the series' ends.

    A series no longer than ``depth`` is one window (zero-padded after its last slice).
    """
    if slices <= depth:
        return (0,)
    stride = max(1, stride or depth // 2)
    centre, last = GridMapping((slices, 1, 1), PreprocessSpec(depth=depth)).start, slices - depth
    before = range(centre, 0, -stride)
    after = range(centre, last, stride)
    return tuple(sorted({0, *before, *after, last}))


def slice_weights(depth: int) -> torch.Tensor:
    """[depth] weights of a window's slices when overlapping windows are averaged: a Gaussian (sigma depth / 4)
    around the window centre, as nnU-Net weights its patches: slices near a window's ends see less context."""
    z = torch.arange(depth, dtype=torch.float32) - (depth - 1) / 2
    return torch.exp(-0.5 * (z / (depth / 4)) ** 2)


class WindowAverage:
    """Class probabilities of overlapping windows (per noise draw) summed with :func:`slice_weights` over the
    ``slices`` slices of a series, then averaged: [draws, K, slices, S, S]."""

    def __init__(self, draws: int, classes: int, slices: int, depth: int, size: int, device: torch.device) -> None:
        self.total = torch.zeros((draws, classes, slices, size, size), device=device)
        self.counts = torch.zeros(slices, device=device)
        self.weights = slice_weights(depth).to(device)
        self.depth = depth

    def add(self, start: int, draw: int, probabilities: torch.Tensor) -> None:
        """One window's probabilities [K, depth, S, S] (slices past the series' end are dropped)."""
        count = min(self.depth, self.total.shape[2] - start)
        self.total[draw, :, start : start + count] += probabilities[:, :count] * self.weights[None, :count, None, None]
        if draw == 0:  # every draw covers the same slices
            self.counts[start : start + count] += self.weights[:count]

    def average(self) -> torch.Tensor:
        """The weighted mean per slice; slices no window covered (constant windows) are background."""
        uncovered = self.counts == 0
        self.total[:, 0, uncovered] = 1.0
        return self.total / torch.where(uncovered, 1.0, self.counts)[None, None, :, None, None]
