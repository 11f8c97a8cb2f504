"""The UNet against the official release: tensor manifest, schedule buffers and golden activations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ortho_node.model.diffusion import GaussianDiffusion, cosine_betas
from ortho_node.model.unet import UNet, UNetConfig

GOLDEN_BLOCKS = ("in_9", "mid_0", "mid_1", "mid_2", "final")
TOLERANCE = 1e-4


def test_state_dict_equals_official_manifest(official_model, manifest):
    expected = [(e["key"], tuple(e["shape"]), e["dtype"]) for e in manifest["state_dict"]]
    state = official_model.state_dict()
    actual = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    assert actual == expected  # names, order, shapes and dtypes
    assert sum(p.numel() for p in official_model.denoise_fn.parameters()) == manifest["unet_parameter_count"]


def test_schedule_buffers_equal_official_values(official_model, manifest):
    steps = [0, 50, 100, 150, 200, 999]
    for name, values in manifest["buffer_values_at_t_0_50_100_150_200_999"].items():
        buffer = getattr(official_model, name)
        assert buffer.dtype == torch.float32
        assert buffer[steps].tolist() == pytest.approx(values, rel=1e-7, abs=1e-12), name


def _golden_weights(model: UNet, manifest) -> dict[str, torch.Tensor]:
    """value[j] = 0.05 sin(0.7 k + 0.013 j) for tensor k of the manifest's UNet order (golden file recipe)."""
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    keys = [e["key"].removeprefix("denoise_fn.") for e in manifest["state_dict"] if e["key"].startswith("denoise_fn.")]
    weights = {}
    for k, key in enumerate(keys):
        j = np.arange(int(np.prod(shapes[key])), dtype=np.float64)
        weights[key] = torch.from_numpy(0.05 * np.sin(0.7 * k + 0.013 * j)).float().reshape(shapes[key])
    return weights


def test_activations_equal_golden_features(official_model, manifest, golden):
    unet = UNet(UNetConfig.official()).eval()
    unet.load_state_dict(_golden_weights(unet, manifest))
    d, h, w = np.meshgrid(np.arange(16), np.arange(64), np.arange(64), indexing="ij")
    x_0 = torch.from_numpy(np.sin(0.3 * d + 0.1 * h - 0.07 * w))[None, None]
    noise = torch.from_numpy(np.cos(0.2 * d + 0.05 * h + 0.11 * w))[None, None]
    abar = torch.cumprod(1 - cosine_betas(1000), dim=0)  # float64, as the recipe says
    for t_text, expected in golden["results"].items():
        t = int(t_text)
        x_t = (abar[t].sqrt() * x_0 + (1 - abar[t]).sqrt() * noise).float()
        with torch.inference_mode():
            found = unet.activations(x_t, torch.tensor([t]), GOLDEN_BLOCKS)
        for block in GOLDEN_BLOCKS:
            act, ref = found[block].double(), expected[block]
            assert list(act.shape) == ref["shape"], (t, block)
            assert torch.allclose(act.flatten()[:8], torch.tensor(ref["first8"], dtype=torch.float64), atol=TOLERANCE)
            assert act.mean().item() == pytest.approx(ref["mean"], abs=TOLERANCE), (t, block)
            assert act.std().item() == pytest.approx(ref["std"], abs=TOLERANCE), (t, block)
            assert act.abs().mean().item() == pytest.approx(ref["sum_abs"] / act.numel(), abs=TOLERANCE), (t, block)


def test_official_block_names():
    names = UNet(UNetConfig.reduced()).block_names
    encoder, decoder = [f"in_{i}" for i in range(10)], [f"out_{i}" for i in range(10)]
    assert names == (*encoder, "mid_0", "mid_1", "mid_2", *decoder, "final")


def test_activations_stop_at_the_last_requested_block(tiny_model):
    unet = tiny_model.denoise_fn
    x, t = torch.randn(2, 1, 16, 32, 32), torch.tensor([3, 700])
    with torch.inference_mode():
        everything = dict(unet.iter_blocks(x, t))
        partial = unet.activations(x, t, ["in_3", "mid_2"])
        final = unet(x, t)
    assert set(partial) == {"in_3", "mid_2"}
    assert torch.equal(partial["mid_2"], everything["mid_2"])
    assert torch.equal(final, everything["final"])
    assert final.shape == x.shape
    with pytest.raises(ValueError, match="unknown block names"):
        unet.activations(x, t, ["mid_3"])


def test_every_size_is_configurable():
    config = UNetConfig(model_channels=8, channel_mult=(1, 2, 3), num_res_blocks=2, attention_downsample=(2, 4),
                        num_heads=2, norm_groups=4, image_size=24, depth_size=8)  # fmt: skip
    model = GaussianDiffusion(UNet(config))
    x = torch.randn(1, *config.input_shape)
    with torch.inference_mode():
        out = model.denoise_fn(x, torch.tensor([10]))
    assert out.shape == x.shape
    assert UNetConfig.from_dict(config.to_dict()) == config
    assert model.denoise_fn.block_names[-1] == "final" and "in_8" in model.denoise_fn.block_names


@pytest.mark.parametrize(
    "change, message",
    [({"norm_groups": 12}, "norm_groups"), ({"image_size": 100}, "image_size"), ({"depth_size": 12}, "depth_size")],
)
def test_invalid_configurations_are_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(UNetConfig.official(), **change)
