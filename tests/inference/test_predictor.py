"""Issue 6: the predictor puts masks on every source series' own grid, over every slice, and handles missing
planes, one-slice series and image-less volumes with a clear result or a clear error."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from ortho_node.inference.predictor import PredictionError, Predictor
from ortho_node.inference.windows import slice_weights, window_starts
from ortho_node.labels import DIAGNOSIS_LABELS, KNEE_STRUCTURES, MODEL_PLANES, Joint, Plane
from ortho_node.assembly.anatomy import Laterality
from ortho_node.inference.orientation import study_orientations
from ortho_node.model.evidence import STATISTICS, readout_inputs
from ortho_node.model.preprocessing import Orientation
from ortho_node.model.system import load_system
from tests.inference.conftest import locate, source_maps, with_planes


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.from_checkpoint(model_dir, "cpu", locate=locate)


@pytest.mark.parametrize("slices, depth, expected", [
    (1, 16, (0,)), (16, 16, (0,)), (17, 16, (0, 1)), (23, 16, (0, 3, 7)), (24, 16, (0, 4, 8)),
    (40, 16, (0, 4, 12, 20, 24)), (41, 16, (0, 4, 12, 20, 25)),
])
def test_windows_overlap_cover_every_slice_and_include_the_centre_window(slices, depth, expected):
    starts = window_starts(slices, depth)
    assert starts == expected
    covered = set().union(*(range(s, min(s + depth, slices)) for s in starts))
    assert covered == set(range(slices))
    assert max(0, slices // 2 - depth // 2) in starts  # the window diagnosis reads, as the model was trained


def test_overlapping_windows_weigh_their_central_slices_most():
    weights = slice_weights(16)
    assert torch.allclose(weights, weights.flip(0)) and (weights > 0).all()
    assert weights[7] == weights.max() and weights[0] == weights.min() and weights[0] < 0.2 * weights[7]


def test_masks_land_on_each_source_grid_with_slice_references(predictor, knee_study):
    outcome = predictor.analyse(knee_study)
    prediction = outcome.prediction
    assert {s.plane for s in prediction.segmentations} == set(MODEL_PLANES)
    for segmentation in prediction.segmentations:
        volume = knee_study.planes[segmentation.plane]
        assert segmentation.mask.shape == volume.pixels.shape  # exact slices, rows, columns
        assert segmentation.mask.dtype == np.uint8 and segmentation.structures == KNEE_STRUCTURES
        assert [s.sop_instance_uid for s in segmentation.slices] == list(volume.geometry.sop_instance_uids)
        assert [s.path for s in segmentation.slices] == [locate(u) for u in volume.geometry.sop_instance_uids]
        assert segmentation.series_instance_uid == volume.geometry.series_instance_uid
        assert len(outcome.windows[segmentation.plane]) >= 2  # the synthetic series are longer than 16 slices
    assert [f.label for f in prediction.findings] == list(DIAGNOSIS_LABELS[Joint.KNEE])
    for finding in prediction.findings:
        assert set(finding.plane_weights) == set(MODEL_PLANES)
        assert sum(finding.plane_weights.values()) == pytest.approx(1.0, abs=1e-5)
        assert finding.threshold == predictor.card.threshold(Joint.KNEE, finding.label)
    assert prediction.model.version == "test" and prediction.laterality in ("R", "L")


def test_long_series_is_segmented_on_every_slice_not_cropped(predictor, knee_study):
    sagittal = knee_study.planes[Plane.SAGITTAL].pixels
    long = np.concatenate([sagittal, sagittal[::-1], sagittal])  # 3x the slices
    study = with_planes(knee_study, {Plane.SAGITTAL: long})
    outcome = predictor.analyse(study)
    [segmentation] = outcome.prediction.segmentations
    assert segmentation.mask.shape == long.shape
    starts = outcome.windows[Plane.SAGITTAL]
    assert starts[0] == 0 and starts[-1] == long.shape[0] - 16
    # Slices far outside the official centre window still get the model's labels, not "not analysed".
    assert segmentation.mask[:4].any() and segmentation.mask[-4:].any()


def test_prediction_is_deterministic(predictor, knee_study):
    first, second = predictor.predict(knee_study), predictor.predict(knee_study)
    assert [f.probability for f in first.findings] == [f.probability for f in second.findings]
    for a, b in zip(first.segmentations, second.segmentations):
        assert np.array_equal(a.mask, b.mask)


@pytest.mark.parametrize("planes", [(Plane.SAGITTAL,), (Plane.CORONAL, Plane.AXIAL)])
def test_missing_planes_fuse_over_what_is_present(predictor, knee_study, planes):
    study = with_planes(knee_study, {p: knee_study.planes[p].pixels for p in planes})
    outcome = predictor.analyse(study)
    assert outcome.analysed_planes == planes
    assert set(outcome.skipped_planes) == set(MODEL_PLANES) - set(planes)
    assert {s.plane for s in outcome.prediction.segmentations} == set(planes)
    for finding in outcome.prediction.findings:
        assert set(finding.plane_weights) == set(planes)
        assert sum(finding.plane_weights.values()) == pytest.approx(1.0, abs=1e-5)


def test_one_slice_series_gives_a_one_slice_mask(predictor, knee_study):
    volume = knee_study.planes[Plane.CORONAL].pixels
    study = with_planes(knee_study, {Plane.CORONAL: volume[10:11], Plane.AXIAL: knee_study.planes[Plane.AXIAL].pixels})
    prediction = predictor.predict(study)
    coronal = next(s for s in prediction.segmentations if s.plane is Plane.CORONAL)
    assert coronal.mask.shape == (1, *volume.shape[1:])


def test_all_zero_plane_is_skipped_with_its_reason(predictor, knee_study):
    pixels = {p: v.pixels for p, v in knee_study.planes.items()}
    pixels[Plane.AXIAL] = np.zeros_like(pixels[Plane.AXIAL])
    outcome = predictor.analyse(with_planes(knee_study, pixels))
    assert "no image" in outcome.skipped_planes[Plane.AXIAL]
    assert Plane.AXIAL not in {s.plane for s in outcome.prediction.segmentations}
    assert all(Plane.AXIAL not in f.plane_weights for f in outcome.prediction.findings)


def test_all_zero_study_is_a_clear_error(predictor, knee_study):
    study = with_planes(knee_study, {p: np.zeros((5, 32, 32), np.float32) for p in MODEL_PLANES})
    with pytest.raises(PredictionError, match="no analysable plane"):
        predictor.predict(study)


def test_unknown_joint_and_skipped_study_are_clear_errors(predictor, knee_study):
    with pytest.raises(PredictionError, match="no model for joint 'unknown'"):
        predictor.predict(dataclasses.replace(knee_study, joint=Joint.UNKNOWN))
    with pytest.raises(PredictionError, match="skipped by assembly"):
        predictor.predict(dataclasses.replace(knee_study, skip_reason="no usable series", planes={}))


def test_knee_masks_need_a_way_to_name_their_source_files(model_dir, knee_study):
    with pytest.raises(PredictionError, match="locate"):
        Predictor.from_checkpoint(model_dir, "cpu").predict(knee_study)


def test_ankle_and_shoulder_studies_get_findings_without_masks(model_dir, knee_study):
    predictor = Predictor.from_checkpoint(model_dir, "cpu")  # no locate needed: no masks
    for joint in (Joint.ANKLE, Joint.SHOULDER):
        prediction = predictor.predict(dataclasses.replace(knee_study, joint=joint))
        assert prediction.segmentations == ()
        assert [f.label for f in prediction.findings] == list(DIAGNOSIS_LABELS[joint])
    # With a locate, each analysed series is named by an empty map: the SR anchors its findings there.
    prediction = predictor.predict(dataclasses.replace(knee_study, joint=Joint.ANKLE), locate=locate)
    assert {s.series_instance_uid for s in prediction.segmentations} == {
        v.geometry.series_instance_uid for v in knee_study.planes.values()}
    for series in prediction.segmentations:
        assert series.structures == ("background",) and not series.mask.any()
        assert series.mask.shape == knee_study.planes[series.plane].pixels.shape
        assert series.slices[0].path == locate(series.slices[0].sop_instance_uid)


@pytest.fixture(scope="module")
def evidence_predictor(model_dir) -> Predictor:
    """The test model with a knee evidence readout, meniscal tears on structure statistics (random weights)."""
    model = load_system(model_dir)
    module = model.add_evidence(Joint.KNEE, {"MM": "medial meniscus", "LM": "lateral meniscus"})
    with torch.no_grad():
        module.weight.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(0))
    return Predictor(model, torch.device("cpu"), locate=locate)


def test_the_evidence_readout_scores_every_label_from_what_the_model_computed(predictor, evidence_predictor,
                                                                             knee_study):
    inputs = evidence_predictor.evidence_inputs(knee_study)
    width = evidence_predictor.model.diagnosis["knee"].width
    assert inputs.shape == (8, readout_inputs(width, True))
    with torch.no_grad():
        expected = torch.sigmoid(evidence_predictor.model.evidence["knee"](inputs))
    head = predictor.predict(knee_study).findings
    for k, finding in enumerate(evidence_predictor.predict(knee_study).findings):
        assert finding.probability == pytest.approx(float(expected[k]), abs=1e-6)
        # Every row starts with the head's own logit; the descriptors are the same for every label.
        assert torch.sigmoid(inputs[k, 0]) == pytest.approx(head[k].probability, abs=1e-6)
        assert torch.equal(inputs[k, 1 : 1 + 3 * width], inputs[0, 1 : 1 + 3 * width])
        if finding.label in ("MM", "LM"):
            assert finding.plane_weights is None  # the head's plane weights did not decide it
            assert inputs[k, 1 + 3 * width :].isfinite().all()
        else:
            assert finding.plane_weights == head[k].plane_weights
            assert inputs[k, 1 + 3 * width :].isnan().all()  # no structure of its own


def test_the_evidence_readout_reads_absent_planes_as_not_analysed(evidence_predictor, knee_study):
    study = with_planes(knee_study, {Plane.SAGITTAL: knee_study.planes[Plane.SAGITTAL].pixels})
    inputs = evidence_predictor.evidence_inputs(study)
    width = evidence_predictor.model.diagnosis["knee"].width
    meniscus = inputs[2]  # MM: head logit, 3 descriptors, 3 planes of statistics
    assert meniscus[: 1 + width].isfinite().all() and meniscus[1 + width : 1 + 3 * width].isnan().all()
    statistics = meniscus[1 + 3 * width :]
    assert statistics[:STATISTICS].isfinite().all() and statistics[STATISTICS:].isnan().all()
    findings = {f.label: f for f in evidence_predictor.predict(study).findings}
    assert all(0.0 <= f.probability <= 1.0 for f in findings.values())
    ankle = dataclasses.replace(study, joint=Joint.ANKLE)
    with pytest.raises(PredictionError, match="no evidence readout for ankle"):
        evidence_predictor.evidence_inputs(ankle)


def _with_card(model_dir, **changes) -> Predictor:
    model = load_system(model_dir)
    model.card = dataclasses.replace(model.card, **changes)
    return Predictor(model, torch.device("cpu"), locate=locate)


def test_noise_draws_average_the_masks_maps_and_leave_the_diagnosis_on_the_first_draw(predictor, model_dir,
                                                                                      knee_study):
    drawn = _with_card(model_dir, segmentation_draws=2)
    assert torch.equal(drawn._noise[:1], predictor._noise)  # the first draw is the single-draw model's eps
    second = _with_card(model_dir)
    second._noise = drawn._noise[1:]
    one, two, both = (source_maps(p, knee_study) for p in (predictor, second, drawn))
    for plane in both:
        assert not torch.allclose(one[plane], two[plane], atol=1e-4)  # the draws differ...
        assert torch.allclose(both[plane], (one[plane] + two[plane]) / 2, atol=1e-5)  # ...and are averaged
    single, averaged = predictor.predict(knee_study), drawn.predict(knee_study)
    assert [f.probability for f in averaged.findings] == [f.probability for f in single.findings]
    for series in averaged.segmentations:
        assert np.array_equal(series.mask, both[series.plane].max(dim=0).indices.numpy())


def test_structure_scales_multiply_each_structures_map_before_the_arg_max(predictor, model_dir, knee_study):
    scales = (1.0,) * 8 + (50.0,) + (1.0,) * 3  # the medial meniscus
    scaled = _with_card(model_dir, structure_scales=scales)
    plain, weighted = source_maps(predictor, knee_study), source_maps(scaled, knee_study)
    factor = torch.tensor(scales)[:, None, None, None]
    meniscus = KNEE_STRUCTURES.index("medial meniscus")
    before, after = predictor.predict(knee_study), scaled.predict(knee_study)
    for series_before, series_after in zip(before.segmentations, after.segmentations):
        plane = series_after.plane
        assert torch.allclose(weighted[plane], plain[plane] * factor, rtol=1e-5, atol=1e-7)
        assert (series_after.mask == meniscus).sum() > (series_before.mask == meniscus).sum()
        assert np.array_equal(series_after.mask, weighted[plane].max(dim=0).indices.numpy())
    assert [f.probability for f in after.findings] == [f.probability for f in before.findings]


def test_findings_read_the_first_draw_unscaled_whatever_the_masks_use(evidence_predictor, knee_study):
    # The meniscal tears' structure evidence too: the readout was fitted on the first draw's unscaled maps.
    model = copy.deepcopy(evidence_predictor.model)
    model.card = dataclasses.replace(model.card, segmentation_draws=3, structure_scales=(1.0,) * 8 + (40.0,) * 4)
    drawn = Predictor(model, torch.device("cpu"), locate=locate)
    torch.testing.assert_close(drawn.evidence_inputs(knee_study), evidence_predictor.evidence_inputs(knee_study),
                               rtol=0, atol=0, equal_nan=True)
    single, averaged = evidence_predictor.predict(knee_study), drawn.predict(knee_study)
    # Equal up to float rounding: three draws run the backbone on a batch of three, whose convolutions may sum in
    # another order than a batch of one (about 1e-5 with the model shipped 2026-12-06).
    assert [f.probability for f in averaged.findings] == pytest.approx([f.probability for f in single.findings],
                                                                       abs=1e-4)
    meniscus = KNEE_STRUCTURES.index("medial meniscus")
    assert sum((s.mask >= meniscus).sum() for s in averaged.segmentations) > \
        sum((s.mask >= meniscus).sum() for s in single.segmentations)


def test_source_class_maps_of_a_canonical_card_are_what_its_masks_are_the_arg_max_of(model_dir, knee_study):
    # The bundle's structure-scale calibration reads these maps: for a left knee in the canonical layout they
    # come back to the stored grid through flips, and must still be the maps the masks are chosen from.
    card = load_system(model_dir).card
    canonical = _with_card(model_dir, preprocessing=dataclasses.replace(card.preprocessing,
                                                                        orientation=Orientation.CANONICAL))
    left = dataclasses.replace(knee_study, laterality=Laterality.LEFT)  # read as its mirror image: flips
    assert any(any(o.flips) for o in study_orientations(left, Orientation.CANONICAL).values())
    maps = source_maps(canonical, left)
    for segmentation in canonical.predict(left).segmentations:
        assert maps[segmentation.plane].shape[1:] == segmentation.mask.shape
        assert (maps[segmentation.plane].argmax(dim=0).numpy() == segmentation.mask).mean() > 0.999


def test_source_class_maps_are_refused_for_joints_without_masks(predictor, knee_study):
    with pytest.raises(PredictionError, match="does not segment ankle"):
        next(predictor.source_class_maps(dataclasses.replace(knee_study, joint=Joint.ANKLE)))
