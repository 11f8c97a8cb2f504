"""The synthetic knee looks like a knee: published adult sizes (scaled per seed), flexion between femur and tibia,
the patella in the trochlear groove, menisci between the bones, cartilage 1-4 mm, and determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from ortho_node.labels import Joint
from ortho_node.synthetic.anatomy import knee
from ortho_node.synthetic.generator import stream
from ortho_node.synthetic.scene import Grid, Paint, Partition, Scene, Septa
from ortho_node.synthetic.shapes import Ellipsoid
from ortho_node.synthetic.structures import MUSCLES, Signal, Structure as S

#: Extension, deep flexion, a child with open physes, patella baja and alta.
SEEDS = (5, 8, 4, 7, 20)
SPACING = 0.6


def _params(seed: int) -> knee.KneeParams:
    return knee.sample_params(stream(seed, "anatomy"))


def _joint_scene(model, spacing: float = SPACING) -> Scene:
    """The scene painted on a box around the joint only (keeps the test fast)."""
    lo, hi = np.array([-60.0, -75.0, -50.0]), np.array([60.0, 55.0, 75.0])
    scene = Scene.empty(Joint.KNEE, Grid.covering(lo, hi, spacing), np.eye(4))
    scene.paint_all(model.paints)
    return scene


@pytest.fixture(scope="module")
def knees() -> dict[int, tuple[knee.KneeParams, object, Scene]]:
    out = {}
    for seed in SEEDS:
        p = _params(seed)
        model = knee.build(p)
        out[seed] = (p, model, _joint_scene(model))
    return out


def _coords(scene: Scene, mask: np.ndarray) -> np.ndarray:
    """Canonical mm of the voxels of ``mask`` [N, 3]."""
    return np.asarray(scene.grid.origin) + SPACING * np.argwhere(mask)


def _sdf_points(shape, pts: np.ndarray) -> np.ndarray:
    return shape.sdf(*(pts[:, d].astype(np.float32) for d in range(3)))


def test_parameters_cover_children_to_large_adults_and_flexion_0_to_30():
    ps = [_params(seed) for seed in range(300)]
    scale = np.array([p.scale for p in ps])
    assert 0.75 <= scale.min() < 0.8 and 1.1 < scale.max() <= 1.15
    assert any(p.physes_open for p in ps) and not all(p.physes_open for p in ps)
    flex = np.array([p.flexion for p in ps])
    assert flex.min() < 2 and flex.max() > 28 and flex.max() <= 30
    ratio = np.array([p.insall_salvati for p in ps])
    assert (ratio < 0.8).any() and (ratio > 1.2).any()  # baja and alta both occur
    for name in ("femoral_cartilage", "tibial_cartilage", "patellar_cartilage"):
        values = np.array([getattr(p, name) for p in ps])
        assert 1.0 <= values.min() and values.max() <= 4.0
    assert np.mean([p.patellar_cartilage for p in ps]) > np.mean([p.femoral_cartilage for p in ps])


def test_every_knee_structure_is_present(knees):
    for seed, (_, _, scene) in knees.items():
        present = set(np.unique(scene.labels).tolist())
        assert set(range(1, 12)) <= present, (seed, sorted(set(range(1, 12)) - present))


def test_bone_sizes_match_published_adult_dimensions_per_scale(knees):
    for seed, (p, model, scene) in knees.items():
        s = p.scale
        femur = _coords(scene, scene.labels == S.FEMUR)
        distal = femur[femur[:, 2] < 45]
        bicondylar = np.ptp(distal[:, 0]) / s
        assert 68 <= bicondylar <= 95, (seed, bicondylar)
        lateral = distal[distal[:, 0] > 15]
        assert 50 <= np.ptp(lateral[:, 1]) / s <= 72, (seed, np.ptp(lateral[:, 1]) / s)
        tibia = _coords(scene, scene.labels == S.TIBIA)
        height = (tibia - model.points["plateau_centre"]) @ model.points["leg_axes"][:, 2]
        plateau = np.ptp(tibia[(height > -8) & (height < 0), 0]) / s
        assert 66 <= plateau <= 86, (seed, plateau)
        patella = (_coords(scene, scene.labels == S.PATELLA) - model.points["patella"]) @ model.points["patella_axes"]
        assert 34 <= np.ptp(patella[:, 2]) / s <= 50, (seed, np.ptp(patella[:, 2]) / s)  # height ~40-45 mm
        assert 17 <= np.ptp(patella[:, 1]) / s <= 28, (seed, np.ptp(patella[:, 1]) / s)  # thickness ~20-25 mm
        fibula = _coords(scene, scene.labels == S.FIBULA)
        leg = (fibula - model.points["plateau_centre"]) @ model.points["leg_axes"]  # the tibia's own frame
        head = leg[leg[:, 2] > leg[:, 2].max() - 15]
        assert head[:, 0].mean() > 20 and head[:, 1].mean() > 10  # posterolateral
        assert -25 < head[:, 2].max() < -3  # just below the lateral plateau


def test_insall_salvati_ratio_is_the_sampled_one(knees):
    for seed, (p, model, _) in knees.items():
        tendon = np.linalg.norm(model.points["patella_apex"] - model.points["tuberosity"])
        ratio = tendon / (2 * model.points["patella_half"][2])
        assert 0.7 <= ratio <= 1.4 and abs(ratio - p.insall_salvati) < 0.12, (seed, ratio, p.insall_salvati)


def _shaft_axis(shape, z_range: tuple[float, float]) -> np.ndarray:
    axes = np.meshgrid(np.arange(-40, 40, 2.0), np.arange(-60, 120, 2.0), np.arange(*z_range, 2.0), indexing="ij")
    pts = np.stack([a.ravel() for a in axes], axis=1)
    inside = pts[_sdf_points(shape, pts) < 0]
    centred = inside - inside.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    return direction * np.sign(direction[2])


def test_flexion_turns_the_tibia_against_the_femur():
    base = _params(5)
    angles = {}
    for flexion in (0.0, 25.0):
        model = knee.build(dataclasses.replace(base, flexion=flexion))
        femur = _shaft_axis(model.parts["femur"], (80.0, 160.0))
        tibia = _shaft_axis(model.parts["tibia"], (-150.0, -70.0))
        angles[flexion] = np.degrees(np.arccos(np.clip(femur @ tibia, -1, 1)))
        if flexion:
            assert tibia[1] < 0  # the leg swings posteriorly: its shaft leans back going down
    assert angles[0.0] < 5.0
    assert abs(angles[25.0] - angles[0.0] - 25.0) < 4.0, angles


def test_patella_sits_in_the_trochlear_groove_anterior_to_the_femur(knees):
    for seed, (p, model, scene) in knees.items():
        patella = _coords(scene, scene.labels == S.PATELLA)
        groove = model.points["trochlear_groove_x"][0]
        assert abs(patella[:, 0].mean() - groove) < 8.0, seed
        assert (_sdf_points(model.parts["femur"], patella) > 0).all(), seed  # no bone overlap
        femur = _coords(scene, scene.labels == S.FEMUR)
        column = femur[np.abs(femur[:, 0] - groove) < 3]
        ahead = 0
        for z in np.arange(patella[:, 2].min(), patella[:, 2].max(), 2.0):
            bone = column[np.abs(column[:, 2] - z) < 1.0]
            layer = patella[(np.abs(patella[:, 2] - z) < 1.0) & (np.abs(patella[:, 0] - groove) < 3)]
            if len(bone) and len(layer):
                assert layer[:, 1].max() < bone[:, 1].min(), (seed, z)  # anterior to the femur at each height
                ahead += 1
        assert ahead >= 2, seed  # in deep flexion the lower pole hangs over the notch outlet
        trochlea = _coords(scene, scene.labels == S.FEMORAL_CARTILAGE)
        trochlea = trochlea[trochlea[:, 1] < patella[:, 1].max() + 5]
        assert patella[:, 2].min() < trochlea[:, 2].max(), seed  # engaged over the trochlear cartilage


def test_menisci_lie_between_femur_and_tibia(knees):
    for seed, (p, model, scene) in knees.items():
        bone_below = np.isin(scene.labels, [S.TIBIA, S.TIBIAL_CARTILAGE])
        bone_above = np.isin(scene.labels, [S.FEMUR, S.FEMORAL_CARTILAGE])
        n = int(15 / SPACING)
        extents = {}
        for label in (S.MEDIAL_MENISCUS, S.LATERAL_MENISCUS):
            mask = scene.labels == label
            below = np.zeros_like(mask)
            above = np.zeros_like(mask)
            for k in range(1, n):
                below[:, :, k:] |= bone_below[:, :, :-k]
                above[:, :, :-k] |= bone_above[:, :, k:]
            # On the tibia everywhere; under the femur except the horn roots below the notch and, in flexion,
            # the anterior horns the condyles have rolled off.
            assert below[mask].mean() > 0.8 and above[mask].mean() > 0.4, (seed, label.name)
            pts = _coords(scene, mask)
            height = (pts - model.points["plateau_centre"]) @ model.points["leg_axes"][:, 2]
            assert 0 < np.median(height) < 5, (seed, label.name)
            assert (pts[:, 0] < 0).all() if label is S.MEDIAL_MENISCUS else (pts[:, 0] > 0).all()
            volume = mask.sum() * SPACING**3 / 1000.0 / p.scale**3
            assert 0.7 < volume < 4.5, (seed, label.name, volume)  # cm3 at adult size
            extents[label] = np.ptp(pts[:, 1])
        assert extents[S.MEDIAL_MENISCUS] > extents[S.LATERAL_MENISCUS], seed  # medial: the larger, open C


def test_meniscal_tear_sites_lie_inside_the_menisci():
    for seed in range(12):
        model = knee.build(_params(seed))
        for side in ("medial", "lateral"):
            for horn in ("anterior", "posterior"):
                point = model.points[f"{side}_meniscus_{horn}"][None]
                assert _sdf_points(model.parts[f"{side}_meniscus"], point)[0] < -0.5, (seed, side, horn)


def test_cartilage_is_1_to_4_mm_thick(knees):
    for seed, (p, _, scene) in knees.items():
        for label, nominal in ((S.FEMORAL_CARTILAGE, p.femoral_cartilage), (S.TIBIAL_CARTILAGE, p.tibial_cartilage),
                               (S.PATELLAR_CARTILAGE, p.patellar_cartilage)):
            depth = ndimage.distance_transform_edt(scene.labels == label, sampling=SPACING)
            thickest = 2 * depth.max() - SPACING  # a slab n voxels thick has its deepest voxel ceil(n/2) deep
            assert 1.0 <= thickest <= 4.6, (seed, label.name, thickest, nominal)


def test_bones_do_not_overlap(knees):
    for seed, (_, model, scene) in knees.items():
        pts = _coords(scene, np.isin(scene.labels, [S.TIBIA, S.PATELLA, S.FIBULA]))
        assert (_sdf_points(model.parts["femur"], pts) > 0).mean() > 0.999, seed
        fibula = _coords(scene, scene.labels == S.FIBULA)
        assert (_sdf_points(model.parts["tibia"], fibula) > 0).mean() > 0.99, seed


def test_anatomy_is_deterministic_per_seed():
    a, b = (_joint_scene(knee.build(_params(9)), 2.0) for _ in range(2))
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.signal, b.signal)
    assert _params(9) == _params(9) and _params(9) != _params(10)


def test_septa_separate_touching_compartments_only():
    scene = Scene.empty(Joint.KNEE, Grid.covering(np.zeros(3), np.full(3, 19.0), 1.0), np.eye(4))
    scene.paint_all([Paint(Ellipsoid((10, 10, 10), (30, 30, 30)), S.FAT),
                     Paint(Ellipsoid((0, 10, 10), (8, 30, 30)), S.SOLEUS),  # x 0-7
                     Paint(Ellipsoid((14, 10, 10), (7, 30, 30)), S.POPLITEUS),  # x 8-19: touches the soleus
                     Paint(Ellipsoid((4, 10, 10), (2, 30, 30)), S.TIBIA),  # x 3-5, inside the soleus
                     Septa(MUSCLES, S.FAT)])
    row = list(scene.labels[:, 10, 10])
    # One voxel of each compartment turns to fat where they touch; bone next to muscle is left alone.
    assert row[:10] == [S.SOLEUS] * 3 + [S.TIBIA] * 3 + [S.SOLEUS] + [S.FAT] * 2 + [S.POPLITEUS]
    assert scene.signal[7, 10, 10] == scene.signal[8, 10, 10] == Signal.FAT


def test_partition_gives_each_voxel_the_nearest_part_within_reach():
    scene = Scene.empty(Joint.KNEE, Grid.covering(np.zeros(3), np.array([39.0, 0.0, 0.0]), 1.0), np.eye(4))
    scene.paint_all([Paint(Ellipsoid((20, 0, 0), (30, 5, 5)), S.FAT), Paint(Ellipsoid((39, 0, 0), (2, 5, 5)), S.TIBIA),
                     Partition(Ellipsoid((20, 0, 0), (30, 5, 5)),
                               ((S.SOLEUS, Ellipsoid((5, 0, 0), (3, 3, 3))),
                                (S.POPLITEUS, Ellipsoid((21, 0, 0), (3, 3, 3)))),
                               reach=10.0, within=frozenset({S.FAT}))])
    row = list(scene.labels[:, 0, 0])
    # Soleus surface at 2 and 8, popliteus at 18 and 24: they meet half-way (13); beyond 24 + 10 fat remains,
    # and bone is not within the partition's reach.
    assert row[:13] == [S.SOLEUS] * 13 and row[14:34] == [S.POPLITEUS] * 20
    assert row[35:38] == [S.FAT] * 3 and row[38:] == [S.TIBIA] * 2


def test_muscle_compartments_fill_the_limb_with_fat_between_them(knees):
    for p, _, scene in knees.values():
        labels = scene.labels
        compartments = np.isin(labels, list(MUSCLES))
        assert len(np.unique(labels[compartments])) >= 8
        for axis in range(3):  # no two different compartments are face neighbours: a septum lies between
            a, b = np.moveaxis(labels, axis, 0)[:-1], np.moveaxis(labels, axis, 0)[1:]
            both = np.isin(a, list(MUSCLES)) & np.isin(b, list(MUSCLES))
            assert not np.any(both & (a != b))
        # Below the joint line a lean limb is mostly muscle (the fat is subcutaneous and in septa).
        calf = scene.grid.axes()[2][0, 0] < -30.0
        if p.fat < 10.0:
            assert compartments[:, :, calf].sum() > (labels[:, :, calf] == S.FAT).sum()


def test_an_ellipsoid_contains_its_centre():
    # The distance estimate is 0 / 0 there: a scene voxel on an ellipsoid's centre used to stay unpainted.
    shape = Ellipsoid((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    centre = [np.array([v], dtype=np.float32) for v in (1.0, 2.0, 3.0)]
    assert float(shape.sdf(*centre)[0]) == -4.0
