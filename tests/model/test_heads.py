"""Issue 6: the task heads (attention pooling, plane fusion, clinical fusion, segmentation decoder, losses)."""

from __future__ import annotations

import pytest
import torch

from ortho_node.model.heads import (
    AttentionPooling,
    DiagnosisHead,
    FusionMode,
    SegmentationDecoder,
    clinical_vector,
    decoder_widths,
    segmentation_loss,
    soft_dice_loss,
)
from ortho_node.labels import UNLABELLED
from ortho_node.training.calibration import choose_threshold
from ortho_node.training.scores import roc_auc

MISSING = clinical_vector(None, None, None, None)


def test_attention_pooling_ignores_token_order_and_gives_one_vector_per_volume():
    torch.manual_seed(0)
    pool = AttentionPooling(64, heads=16)
    x = torch.randn(2, 64, 1, 4, 4)
    shuffled = x.flatten(2)[:, :, torch.randperm(16)].reshape_as(x)
    assert pool(x).shape == (2, 64)
    assert torch.allclose(pool(x), pool(shuffled), atol=1e-5)
    with pytest.raises(ValueError, match="do not divide"):
        AttentionPooling(60, heads=16)


def test_mpae_weights_sum_to_one_over_present_planes_and_absent_planes_do_not_count():
    torch.manual_seed(0)
    head = DiagnosisHead(64, 8, fusion=FusionMode.MPAE)
    f = [torch.randn(3, 64, 1, 4, 4) for _ in range(3)]
    present = torch.tensor([[True, True, True], [True, False, True], [False, False, True]])
    clinical = torch.stack([MISSING] * 3)
    out = head(f, clinical, present)
    assert out.plane_weights.shape == (3, 3, 8)
    assert torch.allclose(out.plane_weights.sum(1), torch.ones(3, 8), atol=1e-6)
    assert (out.plane_weights[1, 1] == 0).all() and (out.plane_weights[2, :2] == 0).all()
    assert out.descriptors.shape == (3, 3, 128)  # attention and average pooling of each plane
    assert (out.descriptors[1, 1] == 0).all() and out.descriptors[1, 0].abs().sum() > 0
    changed = [f[0] * 5, f[1] * -3, f[2]]  # only planes absent in study 2 change
    assert torch.allclose(head(changed, clinical, present).logits[2], out.logits[2], atol=1e-6)
    one_plane = head([None, None, f[2]], clinical)
    assert torch.allclose(one_plane.plane_weights[:, 2], torch.ones(3, 8))


def test_concatenation_fusion_has_no_plane_weights():
    head = DiagnosisHead(64, 4, fusion=FusionMode.CONCAT)
    out = head([torch.randn(2, 64, 1, 4, 4), None, torch.randn(2, 64, 1, 4, 4)], torch.stack([MISSING] * 2))
    assert out.logits.shape == (2, 4) and out.plane_weights is None


def test_clinical_fusion_gates_image_and_clinical_logits_and_ignores_absent_facts():
    torch.manual_seed(0)
    head = DiagnosisHead(64, 8)
    f = [torch.randn(2, 64, 1, 4, 4) for _ in range(3)]
    known = clinical_vector(54, "F", 1.65, 60)
    out = head(f, torch.stack([known, MISSING]))
    assert torch.allclose(out.logits[1], out.image_logits[1])  # nothing known: the image alone decides
    gate = torch.sigmoid(head.clinical.gate)
    expected = gate * out.image_logits[0] + (1 - gate) * head.clinical.mlp(known[None])[0]
    assert torch.allclose(out.logits[0], expected, atol=1e-6)


def test_clinical_vector_flags_missing_values():
    v = clinical_vector(None, "M", None, 80.0)
    assert v.shape == (8,)
    assert v[4:].tolist() == [1.0, 0.0, 1.0, 0.0] and v[0] == 0 and v[1] == 1.0
    assert clinical_vector(40, "O", 0.0, None)[4:].tolist() == [0.0, 1.0, 1.0, 1.0]


def test_segmentation_decoder_upsamples_16x_to_the_model_grid():
    assert decoder_widths(256) == (128, 64, 32, 16) and decoder_widths(64) == (32, 16, 8, 8)
    reduced = SegmentationDecoder(64, 12)
    assert reduced(torch.randn(1, 64, 1, 4, 4)).shape == (1, 12, 16, 64, 64)
    official = SegmentationDecoder(256, 12)
    assert official.widths == (128, 64, 32, 16)
    assert official(torch.randn(1, 256, 1, 2, 2)).shape == (1, 12, 16, 32, 32)  # 1x16x16 -> 16x256x256 alike


def test_segmentation_decoder_with_skips_reads_each_stage_resolution():
    decoder = SegmentationDecoder(64, 12, skip_channels=(32, 32, 16, 16))
    skips = [torch.randn(1, c, 2**k, 2 ** (k + 2), 2 ** (k + 2)) for k, c in enumerate((32, 32, 16, 16), start=1)]
    middle = torch.randn(1, 64, 1, 4, 4)
    logits = decoder(middle, skips)
    assert logits.shape == (1, 12, 16, 64, 64)
    # The finest skip moves the logits: the decoder really uses it.
    changed = decoder(middle, [*skips[:-1], torch.zeros_like(skips[-1])])
    assert not torch.allclose(logits, changed)
    with pytest.raises(ValueError, match="4 skip tensors"):
        decoder(middle)
    with pytest.raises(ValueError, match="one skip per decoder stage"):
        SegmentationDecoder(64, 12, skip_channels=(32, 16))


def test_segmentation_loss_rewards_the_right_labels():
    target = torch.randint(0, 4, (2, 4, 8, 8))
    right = torch.nn.functional.one_hot(target, 4).permute(0, 4, 1, 2, 3).float() * 20
    wrong = right.roll(1, dims=1)
    assert soft_dice_loss(right, target) < 1e-3
    assert segmentation_loss(right, target) < 0.01 < segmentation_loss(wrong, target)


def test_unlabelled_voxels_count_in_neither_part_of_the_segmentation_loss():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 4, 8, 8))
    logits = torch.randn(2, 4, 4, 8, 8)
    sparse = target.clone()
    sparse[:, 1::2] = UNLABELLED  # every other slice not labelled
    changed = logits.clone()
    changed[:, :, 1::2] = torch.randn(2, 4, 2, 8, 8) * 10  # whatever the model says there
    assert torch.isclose(segmentation_loss(logits, sparse), segmentation_loss(changed, sparse))
    assert not torch.isclose(segmentation_loss(logits, target), segmentation_loss(changed, target))
    labelled_only = segmentation_loss(logits[:, :, ::2], target[:, ::2])
    assert torch.isclose(segmentation_loss(logits, sparse), labelled_only)
    nothing = segmentation_loss(logits.requires_grad_(), torch.full_like(target, UNLABELLED))
    assert nothing.item() == 0.0
    nothing.backward()  # a window of unlabelled slices only: a zero loss that still back-propagates


def test_diagnosis_head_learns_a_separable_problem():
    torch.manual_seed(0)
    x = torch.randn(64, 64, 1, 2, 2)
    y = (x[:, 0].mean(dim=(1, 2, 3)) > 0).float()[:, None]
    head = DiagnosisHead(64, 1)
    opt = torch.optim.Adam(head.parameters(), lr=5e-3)
    clinical = torch.stack([MISSING] * 64)
    for _ in range(60):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head([x, x, x], clinical).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    scores = torch.sigmoid(head([x, x, x], clinical).logits).detach().numpy()[:, 0]
    assert roc_auc(scores, y.numpy()[:, 0]) > 0.95
    point = choose_threshold(scores, y.numpy()[:, 0])
    assert 0 < point.threshold < 1 and point.sensitivity + point.specificity > 1.8
