"""On-the-fly augmentation of segmentation training windows (issue 21): the pose moves image and labels together,
the look is a function of the tissue (so each structure keeps one grey level before blur and noise), padding
slices stay empty, and the draws come from the training generator."""

import dataclasses

import pytest
import torch

from ortho_node.training.augmentation import WindowAugmentation

SIZE, DEPTH, SLICES = 48, 6, 4
#: Only the pose: no curve, gamma, bias, blur or noise.
POSE_ONLY = WindowAugmentation(probability=1.0, curve_probability=0.0, gamma_std=0.0, bias_std=0.0,
                               blur_probability=0.0, noise_std=(0.0, 0.0))
#: Only the transfer curve and gamma: intensities stay a function of intensity.
LOOK_ONLY = dataclasses.replace(POSE_ONLY, rotation_deg=0.0, scale=(1.0, 1.0), shift=0.0, curve_probability=1.0,
                                gamma_std=0.4)


def _tissues() -> tuple[torch.Tensor, torch.Tensor]:
    """A window of three blocky 'structures' on a background, each at its own grey level (10, 20, 30, 40), and
    two padding slices after the series' end."""
    labels = torch.zeros((DEPTH, SIZE, SIZE), dtype=torch.uint8)
    labels[:SLICES, 8:24, 8:30] = 1
    labels[:SLICES, 26:42, 12:22] = 2
    labels[:SLICES, 28:40, 28:44] = 3
    image = torch.zeros((DEPTH, SIZE, SIZE))
    image[:SLICES] = 10.0 + 10.0 * labels[:SLICES].float()
    return image, labels


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed", range(6))
def test_the_pose_moves_image_and_labels_together(seed):
    image, labels = _tissues()
    moved, moved_labels = POSE_ONLY.apply(image, labels, SLICES, _generator(seed))
    assert not torch.equal(moved_labels, labels)  # it did move
    levels = []
    for k in range(1, 4):
        region = moved[:SLICES][moved_labels[:SLICES] == k]
        assert region.numel() > 0.5 * int((labels == k).sum()) * 0.85 ** 2  # a structure is zoomed, never lost
        # Nearest labels against bilinear pixels: only a rim of edge pixels may differ from the structure's level
        # (the window is rescaled to [0, 1], so the levels are compared in order, not in value).
        level = region.median()
        assert (region - level).abs().lt(0.01).float().mean() > 0.8, k
        levels.append(float(level))
    assert levels == sorted(levels) and levels[0] < levels[-1]


def test_padding_slices_stay_empty_and_the_stored_window_is_not_changed():
    image, labels = _tissues()
    kept_image, kept_labels = image.clone(), labels.clone()
    out, out_labels = WindowAugmentation(probability=1.0).apply(image, labels, SLICES, _generator(3))
    assert torch.equal(image, kept_image) and torch.equal(labels, kept_labels)
    assert out[SLICES:].abs().sum() == 0 and out_labels[SLICES:].sum() == 0
    assert out.shape == image.shape and out_labels.dtype == labels.dtype


def test_the_look_keeps_one_grey_level_per_structure_and_reorders_them_across_draws():
    image, labels = _tissues()
    orders = set()
    for seed in range(30):
        out, out_labels = LOOK_ONLY.apply(image, labels, SLICES, _generator(seed))
        assert torch.equal(out_labels, labels)
        levels = []
        for k in range(4):
            region = out[:SLICES][labels[:SLICES] == k]
            assert float(region.std()) < 1e-3, (seed, k)  # per structure: one intensity each
            levels.append(float(region.mean()))
        orders.add(tuple(sorted(range(4), key=levels.__getitem__)))
    # The stored order is background < 1 < 2 < 3; random curves put the tissues in other orders too.
    assert len(orders) >= 4


def test_bias_blur_and_noise_change_the_grey_levels_within_a_structure():
    image, labels = _tissues()
    full = WindowAugmentation(probability=1.0, rotation_deg=0.0, scale=(1.0, 1.0), shift=0.0, curve_probability=0.0,
                              bias_std=0.5, blur_probability=1.0, noise_std=(0.05, 0.05))
    out, _ = full.apply(image, labels, SLICES, _generator(0))
    assert float(out[:SLICES][labels[:SLICES] == 2].std()) > 0.01


def test_draws_come_from_the_generator_and_probability_zero_keeps_the_window():
    image, labels = _tissues()
    augmentation = WindowAugmentation(probability=1.0)
    first = augmentation.apply(image, labels, SLICES, _generator(7))
    again = augmentation.apply(image, labels, SLICES, _generator(7))
    other = augmentation.apply(image, labels, SLICES, _generator(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    out, out_labels = WindowAugmentation(probability=0.0).apply(image, labels, SLICES, _generator(7))
    assert out is image and out_labels is labels


def test_ranges_are_validated_and_round_trip_through_the_card():
    augmentation = WindowAugmentation(rotation_deg=10.0, scale=(0.9, 1.2))
    assert WindowAugmentation.from_dict(augmentation.to_dict()) == augmentation
    for bad in ({"probability": 1.5}, {"scale": (1.2, 0.9)}, {"curve_points": 1}, {"rotation_deg": -1.0},
                {"noise_std": (0.0, 2.0)}):
        with pytest.raises(ValueError):
            WindowAugmentation(**bad)
    with pytest.raises(ValueError, match="unknown"):
        WindowAugmentation.from_dict({"elastic": 1})


def test_segmentation_batches_of_a_run_with_augmented_windows_are_new_poses_of_the_stored_windows():
    from ortho_node.model.system import new_card
    from ortho_node.model.unet import UNetConfig
    from ortho_node.training.finetune import FinetuneSettings
    from ortho_node.training.taskdata import generate_task_data
    from ortho_node.labels import Joint

    spec = new_card(UNetConfig.reduced()).preprocessing
    data = generate_task_data(Joint.KNEE, [5], spec)
    assert FinetuneSettings(augment_windows=True).augment_windows and not FinetuneSettings().augment_windows
    images, labels = data.segmentation_batch(torch.tensor([0]), _generator(0), spec)
    # Same generator seed: the same window (its start is drawn first), then its own pose and look.
    moved_images, moved_labels = data.segmentation_batch(torch.tensor([0]), _generator(0), spec,
                                                         WindowAugmentation(probability=1.0))
    assert moved_images.shape == images.shape and moved_labels.shape == labels.shape
    assert moved_images.min() >= -1 and moved_images.max() <= 1  # scaled as inference scales a window
    first, moved_first = labels[0, 0], moved_labels[0, 0]
    assert not torch.equal(first, moved_first)
    sizable = {k for k in first.unique().tolist() if int((first == k).sum()) >= 50}
    assert sizable and sizable <= set(moved_first.unique().tolist())  # the structures are moved, not lost
