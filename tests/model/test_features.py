"""Feature extraction: the named block of one noised forward pass, deterministic and batch-invariant."""

from __future__ import annotations

import copy

import pytest
import torch

from ortho_node.labels import Plane
from ortho_node.model.features import FeatureSpec, extract_features, extract_plane_features, seeded_noise
from ortho_node.model.runtime import match_memory_format, place_model, prepare_for_inference


def test_features_equal_the_block_of_one_noised_forward_pass(tiny_model):
    volume = torch.rand(2, 1, 16, 32, 32) * 2 - 1
    features = extract_features(tiny_model, volume, t=100, block="mid_2", noise_seed=5)
    assert features.shape == (2, 64, 1, 2, 2) and features.dtype == torch.float32
    t = torch.tensor([100, 100])
    x_t = tiny_model.q_sample(volume, t, seeded_noise(volume.shape, 5).expand_as(volume))
    with torch.inference_mode():
        expected = dict(tiny_model.denoise_fn.iter_blocks(x_t, t))["mid_2"]
    assert torch.allclose(features, expected, atol=1e-6)


def test_features_are_deterministic_and_independent_of_the_batch(tiny_model):
    a, b = torch.rand(1, 1, 16, 32, 32), torch.rand(1, 1, 16, 32, 32)
    together = extract_features(tiny_model, torch.cat([a, b]), t=[50, 200], block="in_4", noise_seed=1)
    alone = extract_features(tiny_model, b, t=200, block="in_4", noise_seed=1)
    assert torch.allclose(together[1:], alone, atol=1e-6)
    assert not torch.allclose(alone, extract_features(tiny_model, b, t=200, block="in_4", noise_seed=2))


def test_any_named_block_can_be_read(tiny_model):
    volume = torch.rand(1, 1, 16, 32, 32)
    for block, shape in (("in_0", (1, 16, 16, 32, 32)), ("out_9", (1, 16, 16, 32, 32)), ("final", (1, 1, 16, 32, 32))):
        assert extract_features(tiny_model, volume, 10, block).shape == shape
    with pytest.raises(ValueError, match="unknown block"):
        extract_features(tiny_model, volume, 10, "mid_7")
    with pytest.raises(ValueError, match="t must lie"):
        extract_features(tiny_model, volume, 1000, "mid_2")


def test_official_default_feature_shape(official_model):
    model = prepare_for_inference(copy.deepcopy(official_model), torch.device("cpu"))
    features = extract_features(model, torch.rand(1, 1, 16, 64, 64), block="mid_0")
    assert features.shape == (1, 256, 1, 4, 4)  # (256, 1, 16, 16) on the 16 x 256 x 256 grid


def test_planes_use_their_own_backbone_and_spec(tiny_model):
    volumes = {p: torch.rand(3, 1, 16, 32, 32) for p in (Plane.SAGITTAL, Plane.AXIAL)}
    specs = {Plane.SAGITTAL: FeatureSpec(200, "mid_0"), Plane.AXIAL: FeatureSpec(50, "in_2")}
    features = extract_plane_features({p: tiny_model for p in volumes}, volumes, specs)
    assert features[Plane.SAGITTAL].shape == (3, 64, 1, 2, 2)
    assert features[Plane.AXIAL].shape == (3, 16, 8, 16, 16)
    with pytest.raises(ValueError, match="axial"):
        extract_plane_features({Plane.SAGITTAL: tiny_model}, volumes, specs)


def test_models_take_the_layout_their_device_runs_fastest_in(tiny_model):
    """Channels-last 3D on the CPU; the default layout elsewhere (the meta device stands in for a GPU: on an
    H100 channels-last made bf16 feature extraction 1.65x slower)."""
    def conv_weight(model):  # a 16 -> 16 channel kernel: its two layouts differ
        return model.denoise_fn.input_blocks[1][0].in_layers[2].weight

    on_cpu = place_model(copy.deepcopy(tiny_model), torch.device("cpu"))
    assert conv_weight(on_cpu).is_contiguous(memory_format=torch.channels_last_3d)
    assert not conv_weight(on_cpu).is_contiguous()
    volume = torch.rand(2, 3, 4, 8, 8)  # channels-last differs from contiguous only with several channels
    assert match_memory_format(volume, on_cpu).is_contiguous(memory_format=torch.channels_last_3d)
    elsewhere = place_model(on_cpu, torch.device("meta"))
    assert conv_weight(elsewhere).is_meta and conv_weight(elsewhere).is_contiguous()
    assert not conv_weight(elsewhere).is_contiguous(memory_format=torch.channels_last_3d)
    assert match_memory_format(volume, elsewhere).is_contiguous()
