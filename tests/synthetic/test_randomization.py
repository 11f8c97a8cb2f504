"""Randomised rendering (issue 21): deformation keeps labels and image aligned, resolution keeps the label grid,
intensities are per class, everything is seeded, and the realistic render is unchanged."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from ortho_node.labels import KNEE_STRUCTURES, Joint
from ortho_node.synthetic import DomainRandomization, SequencePreset, generate_study, training_weightings, write_study
from ortho_node.synthetic.deformation import RandomDeformation, warp_image, warp_labels
from ortho_node.synthetic.randomization import RandomizedAppearance, class_intensities, render_randomized
from ortho_node.synthetic.randomized_study import choose_randomized, intensity_classes, randomize_study
from ortho_node.synthetic.structures import Signal, Structure as S
from ortho_node.training.taskdata import synthetic_training_study

from .conftest import FAST

#: A 2 mm scene, 256 matrices and a fixed 150 mm field: small and fast, same code paths.
SMALL = {"scene_spacing": 2.0, "domain": DomainRandomization(matrices=(256,), fov_mm=(150.0, 150.0))}
#: Only the class Gaussians: no blur, bias, gamma, inversion, ghosts or noise.
PLAIN = RandomizedAppearance(inversion_probability=0.0, bias_std=0.0, slice_thickness_mm=(0.5, 0.5),
                             pixel_mm=(0.1, 0.1), gamma_std=0.0, noise_std=(0.0, 0.0), ghost_probability=0.0,
                             texture_amplitude=0.0)
#: PLAIN with flat classes, and the series geometry and the anatomy left as they are.
STILL = dataclasses.replace(PLAIN, std=(0.0, 0.0), fov_mm=(150.0, 150.0), centre_shift_mm=0.0, rotation_deg=0.0,
                            axial_rotation_deg=0.0, flip_probability=0.0, deformation=RandomDeformation.none())


def _blocks(shape: tuple[int, int, int] = (24, 48, 48)) -> np.ndarray:
    """Three overlapping boxes and a ball on background: four classes with flat and curved borders."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[4:20, 8:30, 6:26] = 1
    labels[8:22, 20:44, 18:42] = 2
    k, j, i = np.indices(shape)
    labels[((k - 12) * 2.0) ** 2 + (j - 24) ** 2 + (i - 24) ** 2 < 10**2] = 3
    return labels


@pytest.fixture(scope="module")
def knee():
    return generate_study(Joint.KNEE, 41, findings=None, keep_scene=True, **SMALL)


@pytest.fixture(scope="module")
def randomized(knee):
    return randomize_study(knee, 3)


def test_deformation_keeps_labels_and_image_aligned():
    labels, spacing = _blocks(), (2.0, 1.0, 1.0)
    lut = np.array([0.0, 100.0, 200.0, 50.0], dtype=np.float32)
    ranges = RandomDeformation(rotation_deg=10.0, displacement_mm=5.0, control_spacing_mm=20.0, extent_mm=40.0)
    deformation = ranges.sample(np.random.default_rng(5))
    moved_labels = warp_labels(labels, spacing, deformation)
    moved_image = warp_image(lut[labels], spacing, deformation)
    assert moved_labels.shape == labels.shape and (moved_labels != labels).mean() > 0.05  # it really moved
    # Away from class borders the linear warp of the image is the image of the nearest warp of the labels.
    interior = np.ones(labels.shape, dtype=bool)
    for value in range(4):
        mask = moved_labels == value
        interior &= ~mask | ndimage.binary_erosion(mask, np.ones((3, 3, 3)), iterations=2, border_value=1)
    assert interior.mean() > 0.5
    np.testing.assert_allclose(moved_image[interior], lut[moved_labels][interior], atol=1e-3)
    assert np.abs(moved_image - lut[moved_labels]).mean() < 0.1 * lut.max() * (~interior).mean()


def test_identity_deformation_changes_nothing():
    labels = _blocks()
    identity = RandomDeformation.none().sample(np.random.default_rng(0))
    np.testing.assert_array_equal(warp_labels(labels, (2.0, 1.0, 1.0), identity), labels)


def _slice_to_slice(image: np.ndarray) -> float:
    return float(np.abs(np.diff(image, axis=0)).mean())


def test_resolution_keeps_the_grid_and_blurs_along_slices():
    k = np.arange(48)[:, None, None]
    classes = np.broadcast_to(((k // 2) % 2 + 1), (48, 32, 32)).astype(np.uint8)  # 1 mm layers, 0.5 mm slices
    before = classes.copy()
    flat = dataclasses.replace(PLAIN, std=(0.0, 0.0))
    thin = render_randomized(classes, (0.5, 1.0, 1.0), np.random.default_rng(9), flat)
    thick = render_randomized(classes, (0.5, 1.0, 1.0), np.random.default_rng(9),
                              dataclasses.replace(flat, slice_thickness_mm=(5.0, 5.0)))
    assert thin.shape == thick.shape == classes.shape and thick.dtype == np.float32
    np.testing.assert_array_equal(classes, before)  # the label grid is read, never changed
    assert _slice_to_slice(thin) > 0.1
    assert _slice_to_slice(thick) < 0.1 * _slice_to_slice(thin)
    # In-plane there is nothing to blur: every row of a slice stays flat.
    assert float(np.abs(np.diff(thick, axis=2)).max()) < 1e-5


def test_intensities_come_from_one_gaussian_per_class():
    classes = np.zeros((8, 64, 64), dtype=np.uint8)
    classes[:, :32, 32:], classes[:, 32:, :32], classes[:, 32:, 32:] = 1, 2, 3
    appearance = dataclasses.replace(PLAIN, mean=(60.0, 255.0), std=(2.0, 12.0))
    image = render_randomized(classes, (1.0, 1.0, 1.0), np.random.default_rng(21), appearance)
    means, stds = class_intensities(4, np.random.default_rng(21), appearance)  # the render's first draws
    scale = 1.0 / float((means + 6 * stds).max())  # the image is divided by its maximum, ~mean + 4-6 sigma
    observed = np.array([image[classes == c].mean() for c in range(4)])
    spread = np.array([image[classes == c].std() for c in range(4)])
    ratio = observed / means
    np.testing.assert_allclose(ratio, ratio[0], rtol=0.02)  # one global scale: each class keeps its own mean
    np.testing.assert_allclose(spread / ratio[0], stds, rtol=0.1)
    assert 0.5 * scale < ratio[0] < 1.5 * scale


def test_texture_varies_smoothly_within_each_class_at_its_feature_size():
    classes = np.zeros((16, 96, 96), dtype=np.uint8)
    classes[:, :, 48:] = 1
    textured = dataclasses.replace(PLAIN, std=(0.0, 0.0), mean=(100.0, 200.0), texture_amplitude=0.5)
    flat = render_randomized(classes, (1.0, 1.0, 1.0), np.random.default_rng(3), dataclasses.replace(textured,
                                                                                                     texture_amplitude=0.0))
    for c in (0, 1):  # without texture (and noise) a class is one value
        assert float(flat[classes == c].std()) < 1e-6
    fine, coarse = (render_randomized(classes, (1.0, 1.0, 1.0), np.random.default_rng(3),
                                      dataclasses.replace(textured, texture_mm=(size, size))) for size in (2.0, 12.0))
    for image in (fine, coarse):
        assert max(float(image[classes == c].std()) for c in (0, 1)) > 0.01  # the classes are not uniform
    # Neighbouring voxels differ less, relative to the spread, when the features are larger.
    def roughness(image: np.ndarray) -> float:
        inside = image[:, :, :47]
        return float(np.abs(np.diff(inside, axis=1)).mean() / inside.std())
    assert roughness(coarse) < 0.5 * roughness(fine)


def test_muscle_compartments_share_a_class_in_the_chosen_share_of_series():
    structures = np.array([[[S.SOLEUS, S.POPLITEUS, S.FAT, S.TIBIA]]], dtype=np.uint8)
    signal = np.array([[[Signal.MUSCLE, Signal.MUSCLE, Signal.FAT, Signal.MARROW]]], dtype=np.uint8)
    rng = np.random.default_rng(0)
    shared, separate = (intensity_classes(structures, signal, rng, dataclasses.replace(PLAIN,
                                                                                        shared_muscle_probability=p))
                        for p in (1.0, 0.0))
    assert shared[0, 0, 0] == shared[0, 0, 1] and separate[0, 0, 0] != separate[0, 0, 1]
    for classes in (shared, separate):  # other tissues keep a class of their own
        assert len({int(classes[0, 0, i]) for i in (0, 2, 3)}) == 3
    choices = [intensity_classes(structures, signal, rng, dataclasses.replace(PLAIN, shared_muscle_probability=0.5))
               for _ in range(200)]
    assert 70 < sum(int(c[0, 0, 0] == c[0, 0, 1]) for c in choices) < 130


def test_two_seeds_give_different_contrasts():
    classes = np.repeat(np.arange(6, dtype=np.uint8), 64 * 64).reshape(6, 64, 64)
    orders = {tuple(np.argsort(render_randomized(classes, (1.0, 1.0, 1.0), np.random.default_rng(s), PLAIN)
                               .mean(axis=(1, 2)))) for s in range(4)}
    assert len(orders) > 1


def test_render_is_deterministic_per_seed():
    classes = _blocks()
    a, b, c = (render_randomized(classes, (2.0, 0.5, 0.5), np.random.default_rng(s)) for s in (4, 4, 5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_appearance_validates_and_round_trips():
    appearance = RandomizedAppearance(fov_mm=(120.0, 180.0))
    assert RandomizedAppearance.from_dict(appearance.to_dict()) == appearance
    assert appearance.to_dict()["slice_thickness_mm"] == [0.5, 6.0]
    with pytest.raises(ValueError, match="slice_thickness_mm"):
        RandomizedAppearance(slice_thickness_mm=(6.0, 0.5))
    with pytest.raises(ValueError, match="probability"):
        RandomizedAppearance(ghost_probability=1.5)
    with pytest.raises(ValueError, match="probability"):
        RandomizedAppearance(shared_muscle_probability=-0.1)
    with pytest.raises(ValueError, match="texture_amplitude"):
        RandomizedAppearance(texture_amplitude=2.0)
    with pytest.raises(ValueError, match="displacement_mm"):
        RandomDeformation(displacement_mm=50.0)


def test_randomized_study_keeps_series_grids_and_headers(knee, randomized):
    assert randomized.study_uid != knee.study_uid and randomized.scene is None
    assert randomized.diagnosis == knee.diagnosis
    for before, after in zip(knee.series, randomized.series):
        assert after.plane == before.plane and after.uid != before.uid and "RANDOMIZED" in after.description
        assert after.pixels.shape == after.labels.shape == before.pixels.shape and after.pixels.dtype == np.uint16
        g = after.geometry
        assert abs(float(g.row_dir @ g.col_dir)) < 1e-9 and abs(np.linalg.norm(g.row_dir) - 1.0) < 1e-9
        assert g.slice_spacing == before.geometry.slice_spacing and g.n_slices == before.geometry.n_slices
        assert {KNEE_STRUCTURES.index("femur"), KNEE_STRUCTURES.index("tibia")} <= set(np.unique(after.labels))
        assert after.pixels.std() > 0


def test_randomized_labels_are_the_series_own_when_nothing_moves(knee):
    still = randomize_study(knee, 0, STILL)
    for before, after in zip(knee.series, still.series):
        np.testing.assert_allclose(after.geometry.origin, before.geometry.origin, atol=1e-6)
        assert (after.labels == before.labels).mean() > 0.999
        # Without blur each pixel is its class's mean, so a structure's voxels show only its few classes' values
        # (a bone: marrow, cortex); background holds every other tissue.
        for value in np.unique(after.labels)[1:]:
            inside = ndimage.binary_erosion(after.labels == value, iterations=1)
            assert len(np.unique(after.pixels[inside])) <= 3


def test_randomized_study_is_deterministic(knee, randomized):
    again = randomize_study(knee, 3)
    for a, b in zip(randomized.series, again.series):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert again.study_uid == randomized.study_uid


def test_randomized_study_does_not_need_the_realistic_pixels(knee, randomized):
    # Training skips the realistic render of the studies it randomises: the same study, bit for bit.
    unrendered = generate_study(Joint.KNEE, 41, findings=None, keep_scene=True, render_pixels=False, **SMALL)
    assert all(series.pixels.size == 0 for series in unrendered.series)
    again = randomize_study(unrendered, 3)
    for a, b in zip(randomized.series, again.series):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.uid == b.uid
        np.testing.assert_array_equal(a.geometry.index_to_world(), b.geometry.index_to_world())
    assert again.study_uid == randomized.study_uid and again.diagnosis == randomized.diagnosis


def test_realistic_render_is_unchanged(knee, randomized):
    plain = generate_study(Joint.KNEE, 41, findings=None, **SMALL)  # without keep_scene, as everyone calls it
    for a, b in zip(plain.series, knee.series):
        np.testing.assert_array_equal(a.pixels, b.pixels)  # randomize_study left its input untouched
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.description == b.description and a.uid == b.uid


def test_choose_randomized_mixes_at_the_ratio():
    picks = [choose_randomized(seed, 0.3) for seed in range(400)]
    assert 0.22 < np.mean(picks) < 0.38 and picks == [choose_randomized(seed, 0.3) for seed in range(400)]
    assert not any(choose_randomized(seed, 0.0) for seed in range(50))


def test_randomized_study_writes_readable_dicom(randomized, tmp_path):
    found = [pydicom.dcmread(p) for p in sorted(write_study(randomized, tmp_path, "dicom").rglob("*.dcm"))]
    for series in randomized.series:
        mine = {int(ds.InstanceNumber): ds for ds in found if ds.SeriesInstanceUID == series.uid}
        assert len(mine) == series.geometry.n_slices
        middle = series.geometry.n_slices // 2
        ds = mine[middle + 1]
        np.testing.assert_array_equal(ds.pixel_array, series.pixels[middle])
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                                   series.geometry.slice_position(middle), atol=1e-3)
        assert ds.SeriesDescription == series.description and ds.StudyInstanceUID == randomized.study_uid


def test_training_weightings_turn_fat_suppression_off_per_seed_and_plane_at_the_ratio():
    # Realistic training series without fat suppression (issue 21): fatty marrow bright, as on many real knees.
    assert training_weightings(Joint.KNEE, 3, 0.0) is None  # today's protocol weightings, bit for bit
    assert set(training_weightings(Joint.SHOULDER, 3, 1.0).values()) == {SequencePreset.PD}
    draws = [training_weightings(Joint.KNEE, seed, 0.5) for seed in range(300)]
    assert draws[7] == training_weightings(Joint.KNEE, 7, 0.5)  # deterministic per seed
    chosen = [w for d in draws for w in d.values()]
    assert set(chosen) == {SequencePreset.PD, SequencePreset.PD_FS}
    assert 0.43 < chosen.count(SequencePreset.PD) / len(chosen) < 0.57
    assert any(len(set(d.values())) > 1 for d in draws)  # drawn per plane, not per study
    with pytest.raises(ValueError):
        training_weightings(Joint.KNEE, 1, 1.5)
    study = synthetic_training_study(Joint.KNEE, 11, unsuppressed_ratio=1.0, **FAST)
    assert all(series.description.endswith(" PD") for series in study.series)
