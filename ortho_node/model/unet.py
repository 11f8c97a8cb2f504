"""The OrthoDiffusion 3D denoising UNet (DESIGN.md section 4): its configuration and its named blocks.

Block names, in execution order: ``in_0`` .. ``in_N`` (encoder; ``in_0`` is the stem convolution),
``mid_0`` (ResBlock), ``mid_1`` (attention), ``mid_2`` (ResBlock), ``out_0`` .. ``out_M`` (decoder) and
``final`` (the predicted noise). The official configuration has ``in_0..in_9`` and ``out_0..out_9``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ortho_node.model.layers import (
    AttentionBlock,
    Downsample,
    EmbedSequential,
    GroupNorm32,
    ResBlock,
    Upsample,
    apply_layer,
    timestep_embedding,
    zero_init,
)

MIDDLE_BLOCKS: tuple[str, ...] = ("mid_0", "mid_1", "mid_2")
FINAL_BLOCK = "final"


@dataclass(frozen=True)
class UNetConfig:
    """Every size of the UNet. Input volumes are [B, in_channels, depth_size, image_size, image_size]."""

    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 1
    #: Downsample factors (1, 2, 4, ...) of the levels that carry self-attention.
    attention_downsample: tuple[int, ...] = (16,)
    num_heads: int = 1
    norm_groups: int = 32
    dropout: float = 0.0
    in_channels: int = 1
    out_channels: int = 1
    image_size: int = 256
    depth_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_downsample", tuple(int(d) for d in self.attention_downsample))
        factor = 2 ** (len(self.channel_mult) - 1)
        problems = [
            f"channel width {w} is not divisible by norm_groups={self.norm_groups}"
            for w in sorted({self.model_channels * m for m in self.channel_mult})
            if w % self.norm_groups
        ]
        problems += [
            f"{name}={size} is not divisible by the total downsample factor {factor}"
            for name, size in (("image_size", self.image_size), ("depth_size", self.depth_size))
            if size % factor
        ]
        if self.num_res_blocks < 1 or not self.channel_mult:
            problems.append("need at least one level and one residual block per level")
        if problems:
            raise ValueError("invalid UNetConfig: " + "; ".join(problems))

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Shape of one input volume without the batch axis: (C, D, H, W)."""
        return (self.in_channels, self.depth_size, self.image_size, self.image_size)

    @classmethod
    def official(cls) -> UNetConfig:
        """The released configuration: 34,524,545 parameters, input [B, 1, 16, 256, 256]."""
        return cls()

    @classmethod
    def reduced(cls) -> UNetConfig:
        """Same topology at a sixteenth of the width and a quarter of the in-plane size, for CPU training."""
        return cls(model_channels=16, norm_groups=8, image_size=64)

    @classmethod
    def named(cls, name: str) -> UNetConfig:
        """``official`` or ``reduced``."""
        presets = {"official": cls.official, "reduced": cls.reduced}
        if name not in presets:
            raise ValueError(f"unknown UNet preset {name!r}; choose from {sorted(presets)}")
        return presets[name]()

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> UNetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown UNetConfig fields: {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class UNet(nn.Module):
    """Epsilon-predicting 3D UNet: ([B, C_in, D, H, W], [B] timesteps) -> [B, C_out, D, H, W]."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        mc, emb_dim = config.model_channels, config.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_blocks, skip_channels, factors = self._encoder()
        #: ``in_*`` name -> (channels, downsample factor): what a decoder reading encoder blocks must match.
        self.encoder_layout: dict[str, tuple[int, int]] = {
            f"in_{i}": (c, f) for i, (c, f) in enumerate(zip(skip_channels, factors))
        }
        ch = skip_channels[-1]
        self.middle_block = EmbedSequential(
            self._res(ch, ch), self._attention(ch), self._res(ch, ch)
        )
        self.output_blocks = self._decoder(ch, skip_channels)
        self.out = nn.Sequential(
            GroupNorm32(config.norm_groups, mc), nn.SiLU(), zero_init(nn.Conv3d(mc, config.out_channels, 3, padding=1))
        )
        self.block_names: tuple[str, ...] = (
            *(f"in_{i}" for i in range(len(self.input_blocks))),
            *MIDDLE_BLOCKS,
            *(f"out_{i}" for i in range(len(self.output_blocks))),
            FINAL_BLOCK,
        )

    def _res(self, channels: int, out_channels: int) -> ResBlock:
        c = self.config
        return ResBlock(channels, c.time_embed_dim, out_channels, dropout=c.dropout, groups=c.norm_groups)

    def _attention(self, channels: int) -> AttentionBlock:
        return AttentionBlock(channels, num_heads=self.config.num_heads, groups=self.config.norm_groups)

    def _encoder(self) -> tuple[nn.ModuleList, list[int], list[int]]:
        """Stem, then per level ``num_res_blocks`` ResBlocks (+attention) and a Downsample except last.

        Returns the blocks with each block's output channels and downsample factor."""
        c = self.config
        blocks = nn.ModuleList([EmbedSequential(nn.Conv3d(c.in_channels, c.model_channels, 3, padding=1))])
        skip_channels, factors = [c.model_channels], [1]
        ch, ds = c.model_channels, 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [self._res(ch, mult * c.model_channels)]
                ch = mult * c.model_channels
                if ds in c.attention_downsample:
                    layers.append(self._attention(ch))
                blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
                factors.append(ds)
            if level != len(c.channel_mult) - 1:
                blocks.append(EmbedSequential(Downsample(ch)))
                ds *= 2
                skip_channels.append(ch)
                factors.append(ds)
        return blocks, skip_channels, factors

    def _decoder(self, ch: int, skip_channels: list[int]) -> nn.ModuleList:
        """Per level (deepest first) ``num_res_blocks + 1`` ResBlocks on [h, skip], an Upsample except last."""
        c = self.config
        skips = list(skip_channels)
        ds = 2 ** (len(c.channel_mult) - 1)
        blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers: list[nn.Module] = [self._res(ch + skips.pop(), mult * c.model_channels)]
                ch = mult * c.model_channels
                if ds in c.attention_downsample:
                    layers.append(self._attention(ch))
                if level and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                blocks.append(EmbedSequential(*layers))
        return blocks

    def iter_blocks(
        self, x: torch.Tensor, timesteps: torch.Tensor, *, decoder: bool = True
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Run the network lazily, yielding ``(block name, activation)`` in execution order.

        Args:
            x: [B, C_in, D, H, W] noisy volumes.
            timesteps: [B] integer diffusion steps.
            decoder: when False, stop after ``mid_2`` and keep no skip tensors (saves memory for features).
        """
        sinusoid = timestep_embedding(timesteps, self.config.model_channels)
        emb = self.time_embed(sinusoid.to(self.time_embed[0].weight.dtype))
        h, skips = x, []
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb)
            if decoder:
                skips.append(h)
            yield f"in_{i}", h
        for name, layer in zip(MIDDLE_BLOCKS, self.middle_block):
            h = apply_layer(layer, h, emb)
            yield name, h
        if not decoder:
            return
        for i, block in enumerate(self.output_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            yield f"out_{i}", h
        yield FINAL_BLOCK, self.out(h)

    def activations(self, x: torch.Tensor, timesteps: torch.Tensor, blocks: Collection[str]) -> dict[str, torch.Tensor]:
        """Activations of the named blocks, running the network only as far as the last of them.

        Returns: {name: [B, C_block, D_block, H_block, W_block]}.
        """
        wanted = set(blocks)
        unknown = sorted(wanted - set(self.block_names))
        if unknown or not wanted:
            raise ValueError(f"unknown block names {unknown}; valid names are {list(self.block_names)}")
        needs_decoder = any(name.startswith("out_") or name == FINAL_BLOCK for name in wanted)
        found: dict[str, torch.Tensor] = {}
        for name, h in self.iter_blocks(x, timesteps, decoder=needs_decoder):
            if name in wanted:
                found[name] = h
                if len(found) == len(wanted):
                    break
        return found

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x: [B, C_in, D, H, W]; timesteps: [B] -> predicted noise [B, C_out, D, H, W]."""
        return self.activations(x, timesteps, (FINAL_BLOCK,))[FINAL_BLOCK]
