"""``randomize_study``: a generated study re-rendered with random contrast, resolution, geometry and deformation.

The anatomy is the study's own scene, deformed once per study (the same deformation for every plane), then
sampled onto each series' randomised geometry (field of view, in-plane rotation, flip). Ground-truth labels
come from the very class map the image was rendered from, so they stay aligned voxel for voxel, and every
series keeps a valid geometry (its DICOM header describes where the pixels are).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np
import torch
from pydicom.uid import generate_uid

from ortho_node.labels import Joint, Plane
from ortho_node.synthetic.acquisition import SeriesGeometry
from ortho_node.synthetic.deformation import Deformation
from ortho_node.synthetic.protocol import PROTOCOLS
from ortho_node.synthetic.randomization import RandomizedAppearance, render_randomized
from ortho_node.synthetic.render import SequencePreset
from ortho_node.synthetic.scene import Scene
from ortho_node.synthetic.structures import MUSCLES, Structure, ground_truth_lut
from ortho_node.synthetic.generator import PLANE_ABBREVIATION, SyntheticSeries, SyntheticStudy, generate_study, stream

#: Step (mm) of the sub-slice samples through each slab: partial volume is resolved to about this.
SUB_SLICE_MM = 1.0
#: At most this many sub-slices per slice spacing (bounds the cost of thick-gap series).
MAX_SUB_SLICES = 6
#: Output gain range: scanners scale magnitude images differently; uint16 pixels stay below 4096.
_GAIN = (1000.0, 3000.0)
#: Fine slices sampled per block (bounds memory on 512-pixel matrices).
_BLOCK_SLICES = 16
#: Spacing (mm) of the lattice the deformed sampling positions are computed on exactly.
_LATTICE_MM = 4.0


def choose_randomized(seed: int, ratio: float) -> bool:
    """Whether the training example of ``seed`` is the randomised render, for a mix with ``ratio`` of them
    (deterministic per seed, independent of every other random stream)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    return bool(stream(seed, "randomized-recipe").random() < ratio)


def training_weightings(joint: Joint | str, seed: int, unsuppressed_ratio: float) -> dict[Plane, SequencePreset] | None:
    """The weighting of each series of the realistic training study of ``seed``: each plane, with probability
    ``unsuppressed_ratio``, PD without fat suppression, else the joint protocol's own; None (the protocol's, as
    ``generate_study`` draws by default) for a ratio of 0. Deterministic per seed, independent of every other
    stream. Why: every protocol renders with fat suppression, so a model trained on realistic renders alone
    learns dark marrow, and on a knee without it (fatty marrow bright, muscle the darkest tissue) paints muscle
    as bone."""
    if not 0.0 <= unsuppressed_ratio <= 1.0:
        raise ValueError(f"unsuppressed_ratio must be in [0, 1], got {unsuppressed_ratio}")
    if unsuppressed_ratio == 0.0:
        return None
    rng = stream(seed, "training-weighting")
    protocol = PROTOCOLS[Joint(joint)].default_weighting
    return {plane: SequencePreset.PD if rng.random() < unsuppressed_ratio else weighting
            for plane, weighting in sorted(protocol.items(), key=lambda item: item[0].value)}


def randomize_geometry(geometry: SeriesGeometry, rng: np.random.Generator,
                       appearance: RandomizedAppearance) -> SeriesGeometry:
    """Same matrix and slices, new field of view, centre shift, in-plane rotation and (row) flip."""
    g = geometry
    centre = (g.origin + (g.cols - 1) / 2 * g.pixel_spacing * g.row_dir + (g.rows - 1) / 2 * g.pixel_spacing * g.col_dir
              + (g.n_slices - 1) / 2 * g.slice_spacing * g.normal)
    limit = appearance.axial_rotation_deg if g.plane is Plane.AXIAL else appearance.rotation_deg
    angle = np.deg2rad(rng.uniform(-limit, limit))
    row = np.cos(angle) * g.row_dir + np.sin(angle) * g.col_dir
    col = -np.sin(angle) * g.row_dir + np.cos(angle) * g.col_dir  # turned about the normal: still orthonormal
    if rng.random() < appearance.flip_probability:
        row = -row  # mirrored left-right on screen; the normal flips with it and the slices reverse order
    pixel = rng.uniform(*appearance.fov_mm) / max(g.rows, g.cols)
    centre = centre + rng.uniform(-appearance.centre_shift_mm, appearance.centre_shift_mm, 2) @ np.stack([row, col])
    normal = np.cross(row, col)
    origin = (centre - (g.cols - 1) / 2 * pixel * row - (g.rows - 1) / 2 * pixel * col
              - (g.n_slices - 1) / 2 * g.slice_spacing * normal)
    return dataclasses.replace(g, origin=origin, row_dir=row, col_dir=col, pixel_spacing=float(pixel))


def _fine_geometry(geometry: SeriesGeometry, appearance: RandomizedAppearance) -> tuple[SeriesGeometry, slice]:
    """The series' slab sampled every ~``SUB_SLICE_MM`` along the normal, padded by half the thickest slice
    at both ends, and which of its slices are the series' own."""
    sub = int(np.clip(np.ceil(geometry.slice_spacing / SUB_SLICE_MM), 1, MAX_SUB_SLICES))
    step = geometry.slice_spacing / sub
    pad = int(np.ceil(appearance.slice_thickness_mm[1] / 2 / step))
    n_fine = (geometry.n_slices - 1) * sub + 1 + 2 * pad
    fine = dataclasses.replace(geometry, origin=geometry.origin - pad * step * geometry.normal,
                               slice_spacing=step, n_slices=n_fine)
    return fine, slice(pad, pad + (geometry.n_slices - 1) * sub + 1, sub)


def _scene_indices(scene: Scene, block: SeriesGeometry, deformation: Deformation, centre: np.ndarray) -> np.ndarray:
    """Fractional scene indices [3, slices, rows, cols] of the deformed position of every voxel of ``block``.

    The map is smooth (affine + a field with control points ~40 mm apart), so it is evaluated on a lattice
    about ``_LATTICE_MM`` apart and interpolated trilinearly: sub-voxel error at a fraction of the cost.
    """
    spacing = (block.slice_spacing, block.pixel_spacing, block.pixel_spacing)
    counts = [max(2, int(np.ceil((n - 1) * s / _LATTICE_MM)) + 1) for n, s in zip(block.shape, spacing)]
    k, j, i = (np.linspace(0.0, n - 1.0, m, dtype=np.float32) for n, m in zip(block.shape, counts))
    a = block.index_to_world().astype(np.float32)
    local = [a[d, 3] - np.float32(centre[d]) + a[d, 2] * k[:, None, None] + a[d, 1] * j[None, :, None]
             + a[d, 0] * i[None, None, :] for d in range(3)]
    moved = [m + np.float32(c) for m, c in zip(deformation.source_points(*local), centre)]
    to_index = np.linalg.inv(scene.index_to_world()).astype(np.float32)
    lattice = np.stack([sum(to_index[d, e] * moved[e] for e in range(3)) + to_index[d, 3] for d in range(3)])
    with torch.inference_mode():
        dense = torch.nn.functional.interpolate(torch.from_numpy(lattice)[None], size=block.shape, mode="trilinear",
                                                align_corners=True)
    return dense[0].numpy()


def _sample_scene(scene: Scene, geometry: SeriesGeometry, deformation: Deformation,
                  centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest scene (labels, signal) at the deformed position of every voxel of ``geometry`` (0 outside)."""
    labels = np.zeros(geometry.shape, dtype=np.uint8)
    signal = np.zeros(geometry.shape, dtype=np.uint8)
    for start in range(0, geometry.n_slices, _BLOCK_SLICES):
        count = min(_BLOCK_SLICES, geometry.n_slices - start)
        block = dataclasses.replace(geometry, origin=geometry.slice_position(start), n_slices=count)
        idx = np.rint(_scene_indices(scene, block, deformation, centre)).astype(np.int32)
        inside = np.ones(block.shape, dtype=bool)
        for d, n in enumerate(scene.grid.shape):
            inside &= (idx[d] >= 0) & (idx[d] < n)
            np.clip(idx[d], 0, n - 1, out=idx[d])
        flat = np.ravel_multi_index(tuple(idx), scene.grid.shape)
        labels[start : start + count] = np.where(inside, scene.labels.ravel()[flat], 0)
        signal[start : start + count] = np.where(inside, scene.signal.ravel()[flat], 0)
    return labels, signal


def intensity_classes(structures: np.ndarray, signal: np.ndarray, rng: np.random.Generator,
             appearance: RandomizedAppearance) -> np.ndarray:
    """The intensity class of every voxel: its (structure, appearance) pair, with the muscle compartments
    merged into one structure in a share of the series."""
    classes = structures.astype(np.uint16)
    if rng.random() < appearance.shared_muscle_probability:
        merge = np.arange(256, dtype=np.uint16)
        merge[[int(m) for m in MUSCLES]] = int(Structure.MUSCLE)
        classes = merge[structures]
    return classes * 256 + signal


def _randomize_series(series: SyntheticSeries, scene: Scene, deformation: Deformation, centre: np.ndarray,
                      rng: np.random.Generator, appearance: RandomizedAppearance, uid: str) -> SyntheticSeries:
    geometry = randomize_geometry(series.geometry, rng, appearance)
    fine, own = _fine_geometry(geometry, appearance)
    structures, signal = _sample_scene(scene, fine, deformation, centre)
    # Every (structure, appearance) pair is a class of its own: the femur's cortex, marrow and oedema differ.
    classes = intensity_classes(structures, signal, rng, appearance)
    spacing = (fine.slice_spacing, geometry.pixel_spacing, geometry.pixel_spacing)
    image = render_randomized(classes, spacing, rng, appearance, keep_slices=own)
    pixels = np.clip(np.rint(image * rng.uniform(*_GAIN)), 0, 4095).astype(np.uint16)
    labels = ground_truth_lut(scene.joint)[structures[own]]
    description = f"{PLANE_ABBREVIATION[series.plane]} RANDOMIZED"
    return dataclasses.replace(series, description=description, uid=uid, geometry=geometry, pixels=pixels,
                               labels=labels)


def _study_centre(study: SyntheticStudy) -> np.ndarray:
    return (study.to_world @ np.append(PROTOCOLS[study.joint].centre, 1.0))[:3]


def _moved_to_world(study: SyntheticStudy, deformation: Deformation, centre: np.ndarray) -> np.ndarray:
    """The placement of the deformed anatomy, up to the small non-linear part: the content at x comes from
    centre + M (x - centre), so canonical point c now sits at centre + M^-1 (to_world(c) - centre)."""
    inverse = np.eye(4)
    inverse[:3, :3] = np.linalg.inv(deformation.matrix)
    inverse[:3, 3] = centre - inverse[:3, :3] @ centre
    return inverse @ study.to_world


def randomize_study(study: SyntheticStudy, seed: int, appearance: RandomizedAppearance | None = None
                    ) -> SyntheticStudy:
    """A randomised version of ``study`` (generated with ``keep_scene=True``; its pixels are not read, so
    ``render_pixels=False`` may skip them): same patient, findings, planes, matrices and slices; new UIDs,
    geometry, deformed anatomy, random contrast; ``scene`` is not kept.

    ``seed`` picks the randomisation (different seeds: different renders of one study). Finding regions
    follow the affine part of the deformation (``to_world``), not its few-mm non-linear part.
    """
    if study.scene is None:
        raise ValueError("randomize_study needs the study's scene: generate it with keep_scene=True")
    appearance = appearance or RandomizedAppearance()
    deformation = appearance.deformation.sample(stream(study.seed, "randomized", str(seed), "deformation"))
    centre = _study_centre(study)

    def uid(*keys: str) -> str:
        return generate_uid(entropy_srcs=["ortho-node-synthetic-randomized", study.study_uid, str(seed), *keys])

    series = [_randomize_series(s, study.scene, deformation, centre,
                                stream(study.seed, "randomized", str(seed), "series", s.plane.value), appearance,
                                uid("series", s.plane.value))
              for s in study.series]
    return dataclasses.replace(study, study_uid=uid("study"), frame_of_reference_uid=uid("frame-of-reference"),
                               series=series, to_world=_moved_to_world(study, deformation, centre), scene=None)


def generate_randomized_study(joint: Joint | str, seed: int, *, variant: int = 0,
                              appearance: RandomizedAppearance | None = None, **generate_kwargs: Any
                              ) -> SyntheticStudy:
    """``generate_study(joint, seed, **generate_kwargs)`` rendered by :func:`randomize_study` (``variant`` is its
    seed); the realistic study of the same seed has the same anatomy and findings."""
    generate_kwargs.pop("keep_scene", None)
    study = generate_study(joint, seed, keep_scene=True, render_pixels=False, **generate_kwargs)
    return randomize_study(study, variant, appearance)


class StudyContrast(str, enum.Enum):
    """How a study of a seed is rendered for the benches' contrast sweeps: the joint protocol's own weightings,
    one realistic preset on every plane (presets no protocol uses), or the SynthSeg-style randomised render."""

    PROTOCOL = "protocol"
    T1 = "T1"
    T2 = "T2"  # without fat suppression
    DESS = "DESS"  # double echo steady state, water excitation
    RANDOMISED = "randomised"

    @property
    def preset(self) -> SequencePreset | None:
        """The preset every plane gets; None for the protocol's weightings and the randomised render."""
        return {StudyContrast.T1: SequencePreset.T1, StudyContrast.T2: SequencePreset.T2,
                StudyContrast.DESS: SequencePreset.DESS_WE}.get(self)

    @property
    def label(self) -> str:
        """For a printed table: 'protocol', 'T1', 'T2 no FS', 'DESS WE', 'randomised'."""
        return {StudyContrast.T2: "T2 no FS", StudyContrast.DESS: "DESS WE"}.get(self, self.value)


def generate_contrast_study(joint: Joint | str, seed: int, contrast: StudyContrast | str,
                            **generate_kwargs: Any) -> SyntheticStudy:
    """``generate_study(joint, seed, **generate_kwargs)`` rendered with ``contrast``: the same anatomy, findings
    and series geometry for every contrast but the randomised one (which also deforms and re-plans the series)."""
    contrast = StudyContrast(contrast)
    if contrast is StudyContrast.RANDOMISED:
        return generate_randomized_study(joint, seed, **generate_kwargs)
    if contrast is not StudyContrast.PROTOCOL:
        generate_kwargs["weighting"] = contrast.preset
    return generate_study(joint, seed, **generate_kwargs)
