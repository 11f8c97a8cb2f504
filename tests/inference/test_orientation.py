"""Issue 21: the canonical orientation. A card that reads series in the canonical layout sees every knee the same
way round (medial on one side, anterior on one side) however the scanner stored it and whichever knee it is,
and its masks come back on each series' stored grid."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from ortho_node.assembly.anatomy import Laterality
from ortho_node.assembly.study import AssembledStudy, PlaneVolume
from ortho_node.inference.orientation import IDENTITY, Reorientation, mirrored_side, study_orientations
from ortho_node.inference.predictor import Predictor
from ortho_node.labels import Joint, Plane
from ortho_node.model.preprocessing import Orientation, PreprocessSpec
from ortho_node.model.system import load_system, save_system
from ortho_node.synthetic import generate_study
from ortho_node.synthetic.structures import structure_names
from ortho_node.training.taskdata import assembled_from_synthetic, synthetic_training_study
from tests.inference.conftest import FAST, locate

ALL = [Reorientation(t, flips) for t in (False, True) for flips in itertools.product((False, True), repeat=3)]


@pytest.mark.parametrize("orientation", ALL, ids=str)
def test_every_reorientation_inverts_exactly_on_arrays_and_tensors(orientation):
    array = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    canonical = orientation.apply(array)
    assert canonical.shape == orientation.shape(array.shape) and canonical.flags["C_CONTIGUOUS"]
    assert np.array_equal(orientation.invert(canonical), array)
    tensor = torch.from_numpy(np.stack([array, -array]))  # [K, slices, rows, cols]: the last three axes move
    assert torch.equal(orientation.apply(tensor)[1], torch.from_numpy(-canonical))
    assert torch.equal(orientation.invert(orientation.apply(tensor)), tensor)
    assert orientation.pixel_spacing((0.5, 0.7)) == ((0.7, 0.5) if orientation.transpose else (0.5, 0.7))
    for start, count in ((0, 2), (1, 2), (2, 1)):  # a chunk of canonical slices and the stored slices it holds
        chunk = orientation.invert(canonical[start : start + count])
        stored = array[orientation.stored_slices(start, count, 3)]
        assert np.array_equal(chunk, stored)
        # The class maps go to torch this way (Predictor.source_class_maps), one-slice chunks included.
        assert torch.equal(torch.from_numpy(chunk), torch.from_numpy(stored))


def _centroid(labels: np.ndarray, name: str) -> np.ndarray:
    return np.argwhere(labels == list(structure_names(Joint.KNEE)).index(name)).mean(axis=0)


def test_canonical_layout_puts_medial_and_anterior_on_fixed_sides_for_left_right_flipped_and_turned_knees():
    """Synthetic knees of both sides, realistic and randomised renders (whose series are stored mirrored on
    screen at random, their slices reversed with it): in the canonical layout the medial meniscus lies on the
    same side of the lateral one and the patella in front of the femur, in every series."""
    # Index of the axis that runs medial -> lateral, and of the one that runs anterior -> posterior, per plane.
    medial_axis = {Plane.SAGITTAL: 0, Plane.CORONAL: 2, Plane.AXIAL: 2}
    anterior_axis = {Plane.SAGITTAL: 2, Plane.CORONAL: 0, Plane.AXIAL: 1}
    sides, stored_differently = set(), 0
    for seed, ratio in itertools.product((0, 1, 5), (0.0, 1.0)):  # seed 5 is a right knee, 0 and 1 left ones
        study = synthetic_training_study(Joint.KNEE, seed, randomized_ratio=ratio)
        orientations = study_orientations(assembled_from_synthetic(study), Orientation.CANONICAL)
        sides.add(study.laterality)
        for series in study.series:
            orientation = orientations[series.plane]
            stored_differently += not orientation.identity
            labels = orientation.apply(series.labels)
            medial = _centroid(labels, "medial meniscus") - _centroid(labels, "lateral meniscus")
            anterior = _centroid(labels, "patella") - _centroid(labels, "femur")
            sign = 1 if series.plane is Plane.SAGITTAL else -1  # sagittal slices run to the patient's right
            assert sign * medial[medial_axis[series.plane]] < -3, (seed, ratio, series.plane)
            assert anterior[anterior_axis[series.plane]] < -3, (seed, ratio, series.plane)
    assert sides == {"R", "L"} and stored_differently > 0  # the check covered both knees and re-laid series


def test_the_usual_prescription_is_the_canonical_layout_and_the_stored_orientation_changes_nothing():
    knee_study = assembled_from_synthetic(generate_study(Joint.KNEE, 5, **FAST))  # prescribed as scanners do
    right = dataclasses.replace(knee_study, laterality=Laterality.RIGHT)
    assert set(study_orientations(right, Orientation.CANONICAL).values()) == {IDENTITY}
    left = study_orientations(dataclasses.replace(knee_study, laterality=Laterality.LEFT), Orientation.CANONICAL)
    assert {plane: o.flips for plane, o in left.items()} == {  # mirrored: patient x reversed
        Plane.SAGITTAL: (True, False, False), Plane.CORONAL: (False, False, True), Plane.AXIAL: (False, False, True)}
    assert set(study_orientations(knee_study, Orientation.STORED).values()) == {IDENTITY}


def test_the_side_comes_from_the_headers_else_from_the_joints_place_on_the_table(knee_study):
    volumes = list(knee_study.planes.values())
    assert mirrored_side(Laterality.LEFT, volumes) == (True, "left (headers)")
    assert mirrored_side(Laterality.RIGHT, volumes) == (False, "right (headers)")
    for x, mirror, words in ((-75.0, False, "75 mm to the patient's right"), (60.0, True, "60 mm to the patient's left"),
                             (5.0, False, "taken as right")):
        moved = [_moved_to_x(volume, x) for volume in volumes]
        decided, why = mirrored_side(Laterality.UNKNOWN, moved)
        assert decided is mirror and words in why


def _moved_to_x(volume: PlaneVolume, x: float) -> PlaneVolume:
    """``volume`` shifted left-right so that the centre of its field of view lies at patient x = ``x`` mm."""
    g = volume.geometry
    middle = np.append((np.array(volume.pixels.shape, dtype=float) - 1) / 2, 1.0)
    shift = x - (g.affine @ middle)[0]
    positions = tuple((p[0] + shift, p[1], p[2]) for p in g.image_positions)
    return dataclasses.replace(volume, geometry=dataclasses.replace(g, image_positions=positions))


def _stored_mirrored(volume: PlaneVolume) -> PlaneVolume:
    """The same acquisition stored the other way round: row direction reversed (a mirror on screen), so the
    slice normal reverses too and the slices are stored in the opposite order."""
    g = volume.geometry
    row = np.array(g.image_orientation_patient[:3])
    width = (volume.pixels.shape[2] - 1) * g.pixel_spacing[1]
    positions = tuple(tuple(float(c) for c in np.array(p) + width * row) for p in reversed(g.image_positions))
    geometry = dataclasses.replace(
        g, image_orientation_patient=tuple(float(v) for v in (*-row, *g.image_orientation_patient[3:])),
        image_positions=positions, sop_instance_uids=g.sop_instance_uids[::-1], frame_numbers=g.frame_numbers[::-1])
    return dataclasses.replace(volume, pixels=np.ascontiguousarray(volume.pixels[::-1, :, ::-1]), geometry=geometry)


@pytest.fixture(scope="module")
def canonical_model_dir(model_dir, tmp_path_factory):
    model = load_system(model_dir)
    model.card = dataclasses.replace(model.card, preprocessing=dataclasses.replace(
        model.card.preprocessing, orientation=Orientation.CANONICAL, crop_mm=80.0))
    directory = tmp_path_factory.mktemp("canonical")
    save_system(directory, model)
    return directory


def test_a_canonical_card_predicts_the_same_anatomy_however_the_series_is_stored(canonical_model_dir, model_dir,
                                                                                 knee_study: AssembledStudy):
    """The sagittal series stored mirrored (rows and slice order reversed): a canonical card's mask is the
    stored-as-usual mask, mirrored the same way, voxel for voxel, and its findings are unchanged; a card reading
    series as stored sees another image and predicts something else."""
    mirrored = dataclasses.replace(knee_study, planes={**knee_study.planes,
                                                       Plane.SAGITTAL: _stored_mirrored(knee_study.planes[Plane.SAGITTAL])})
    predictor = Predictor.from_checkpoint(canonical_model_dir, "cpu", locate=locate, deterministic=True)
    usual, other = predictor.predict(knee_study), predictor.predict(mirrored)
    masks = {s.plane: s.mask for s in usual.segmentations}
    other_masks = {s.plane: s.mask for s in other.segmentations}
    assert masks[Plane.SAGITTAL].any()
    assert np.array_equal(other_masks[Plane.SAGITTAL], masks[Plane.SAGITTAL][::-1, :, ::-1])
    assert all(np.array_equal(other_masks[p], masks[p]) for p in (Plane.CORONAL, Plane.AXIAL))
    for a, b in zip(usual.findings, other.findings, strict=True):
        assert a.probability == pytest.approx(b.probability, abs=1e-5)
    stored = Predictor.from_checkpoint(model_dir, "cpu", locate=locate, deterministic=True)
    sagittal = [{s.plane: s.mask for s in stored.predict(study).segmentations}[Plane.SAGITTAL]
                for study in (knee_study, mirrored)]
    assert not np.array_equal(sagittal[1], sagittal[0][::-1, :, ::-1])


def test_the_orientation_is_a_card_field_that_cards_without_it_read_as_stored():
    assert PreprocessSpec.from_dict({}).orientation is Orientation.STORED
    spec = PreprocessSpec.from_dict(PreprocessSpec(orientation="canonical").to_dict())
    assert spec.orientation is Orientation.CANONICAL
    with pytest.raises(ValueError, match="unknown orientation 'sideways'"):
        PreprocessSpec(orientation="sideways")


def test_a_canonical_spec_refuses_series_without_their_geometry():
    from ortho_node.training.taskdata import _example

    volume = np.ones((4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="canonical orientation needs every series' geometry"):
        _example(Joint.KNEE, "1.2.3", {Plane.SAGITTAL: volume}, None, {}, torch.zeros(4),
                 PreprocessSpec(depth=4, size=8, orientation=Orientation.CANONICAL))


def test_nifti_folders_are_refused_for_a_canonical_card(tmp_path):
    from ortho_node.training.taskdata import read_synth_folder

    with pytest.raises(ValueError, match="NIfTI folders do not carry"):
        read_synth_folder(tmp_path, Joint.KNEE, PreprocessSpec(orientation=Orientation.CANONICAL))
