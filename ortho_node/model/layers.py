"""The building blocks of the 3D denoising UNet, named as the official checkpoint names its tensors.

Attribute names (``in_layers``, ``emb_layers``, ``out_layers``, ``skip_connection``, ``qkv``, ``proj_out``,
``op``, ``conv``) are part of the checkpoint format: renaming one breaks loading the official weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in at least float32, returned in the input dtype (keeps bf16 training stable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).type(x.dtype)
        return super().forward(x)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a module's parameters: residual branches start as identity, as in the official release."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (official max_period 1000, not guided-diffusion's 10000).

    Args:
        timesteps: [B] integer (or float) diffusion steps.
        dim: embedding width (even).
    Returns:
        [B, dim] float32, cosines first then sines (guided-diffusion order).
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """Residual block with an additive timestep embedding: [B, C_in, D, H, W] -> [B, C_out, D, H, W]."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, *, dropout: float, groups: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(groups, channels), nn.SiLU(), nn.Conv3d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_init(nn.Conv3d(out_channels, out_channels, 3, padding=1)),
        )
        # Identity has no tensors, so equal widths leave no skip_connection key (as in the official file).
        self.skip_connection: nn.Module = (
            nn.Identity() if channels == out_channels else nn.Conv3d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: [B, C_in, D, H, W]; emb: [B, E] -> [B, C_out, D, H, W]."""
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Self-attention over all voxels of a feature map: [B, C, D, H, W] -> same shape.

    The qkv projection is split head-major then q/k/v (the official "legacy" order); with one head,
    as in the official model, both orders coincide.
    """

    def __init__(self, channels: int, *, num_heads: int, groups: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = GroupNorm32(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)  # [B, C, N]
        qkv = self.qkv(self.norm(flat))  # [B, 3C, N]
        head_ch = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * head_ch, -1).split(head_ch, dim=1)  # [B*h, c, N] each
        # softmax(q^T k / sqrt(c)) v, the official scaling; SDPA picks a fused kernel where one exists.
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = attended.transpose(1, 2).reshape(b, c, -1)
        return (flat + self.proj_out(h)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """Stride-2 3x3x3 convolution in all three axes: [B, C, D, H, W] -> [B, C, D/2, H/2, W/2]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv3d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Trilinear x2 in all three axes, then a 3x3x3 convolution: [B, C, D, H, W] -> [B, C, 2D, 2H, 2W].

    Trilinear (align_corners=False) rather than guided-diffusion's nearest: the official release changed it.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False))


class EmbedSequential(nn.Sequential):
    """A sequence of layers where residual blocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = apply_layer(layer, x, emb)
        return x


def apply_layer(layer: nn.Module, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Call a layer, passing the embedding only to the layers that take one."""
    return layer(x, emb) if isinstance(layer, (ResBlock, EmbedSequential)) else layer(x)
