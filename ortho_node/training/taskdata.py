"""Labelled examples for the task heads: synthetic studies (generated, or read from an ``ortho-node synth``
folder) -> model-grid tensors, and a synthetic study as the :class:`AssembledStudy` the predictor consumes.

Every example goes through the same ``AssembledStudy`` pixels and ``preprocess_volume`` as inference, so
training and prediction see one input convention (slices ascending along the normal, centre window, the card's
crop and intensity normalisation). Generated data mixes today's realistic renders with SynthSeg-style randomised
ones (``randomized_ratio``; :func:`~ortho_node.synthetic.choose_randomized` picks per seed).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import torch
from pydicom.uid import generate_uid

from ortho_node.assembly.anatomy import Laterality
from ortho_node.assembly.contrast import Contrast, Weighting
from ortho_node.assembly.study import AssembledStudy, ClinicalFacts, PlaneVolume, VolumeGeometry
from ortho_node.inference.orientation import Reorientation, study_orientations
from ortho_node.labels import DIAGNOSIS_LABELS, MODEL_PLANES, Joint, Plane
from ortho_node.model.heads import CLINICAL_INPUTS, clinical_from_facts
from ortho_node.model.preprocessing import (
    ConstantVolumeError,
    CropBox,
    Orientation,
    PreprocessSpec,
    label_slices_to_model_grid,
    labels_to_model_grid,
    plan_crop,
    preprocess_volume,
    scale_intensity,
    slices_to_model_grid,
)
from ortho_node.synthetic import (
    DomainRandomization,
    RandomizedAppearance,
    SyntheticStudy,
    choose_randomized,
    generate_study,
    randomize_study,
    training_weightings,
)
from ortho_node.training.augmentation import WindowAugmentation

logger = logging.getLogger(__name__)


def assembled_from_synthetic(study: SyntheticStudy, planes: Sequence[Plane] | None = None) -> AssembledStudy:
    """The study as assembly would deliver it: float32 pixels, per-slice SOP UIDs as the DICOM writer makes."""
    chosen = [s for s in study.series if planes is None or s.plane in planes]
    volumes = {}
    for series in chosen:
        g = series.geometry
        geometry = VolumeGeometry(
            series_instance_uid=series.uid,
            sop_instance_uids=tuple(generate_uid(entropy_srcs=[series.uid, str(k)]) for k in range(g.n_slices)),
            frame_numbers=(None,) * g.n_slices,
            image_orientation_patient=(*map(float, g.row_dir), *map(float, g.col_dir)),  # type: ignore[arg-type]
            image_positions=tuple(tuple(map(float, g.slice_position(k))) for k in range(g.n_slices)),  # type: ignore[misc]
            pixel_spacing=(g.pixel_spacing, g.pixel_spacing), slice_spacing=g.slice_spacing,
            slice_thickness=g.slice_thickness, frame_of_reference_uid=study.frame_of_reference_uid,
        )
        contrast = Contrast(Weighting.UNKNOWN, False, None, "synthetic")
        volumes[series.plane] = PlaneVolume(series.plane, series.pixels.astype(np.float32), geometry, contrast,
                                            series.description, "synthetic study")
    p = study.patient
    return AssembledStudy(
        study_instance_uid=study.study_uid, joint=study.joint, joint_reason="synthetic",
        laterality=Laterality(study.laterality), laterality_reason="synthetic",
        clinical=ClinicalFacts(f"{p.age_years:03d}Y", p.sex, p.height_m, p.weight_kg),
        planes=volumes, missing_planes=tuple(pl for pl in MODEL_PLANES if pl not in volumes),
        completeness_reason="synthetic",
    )


@dataclass
class SliceStacks:
    """Every slice of each plane on the model grid, for segmentation training on windows anywhere in a series.

    images [N, P, L, S, S] float32 (rotated and resized, not scaled; zero after a plane's last slice);
    labels [N, P, L, S, S] uint8; lengths [N, P] int64 (0: plane absent). L >= the model depth.
    """

    images: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor

    def subset(self, index: torch.Tensor) -> SliceStacks:
        return SliceStacks(self.images[index], self.labels[index], self.lengths[index])

    def series_labels(self) -> torch.Tensor:
        """The label slices the series really have, [M, S, S]: not the padding after a series' last slice,
        nor absent planes."""
        within = torch.arange(self.labels.shape[2])[None, None, :] < self.lengths[:, :, None]  # [N, P, L]
        return self.labels[within]

    def random_windows(self, index: torch.Tensor, depth: int, generator: torch.Generator,
                       spec: PreprocessSpec | None = None, augmentation: WindowAugmentation | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(images [B, P, 1, D, S, S], labels [B, P, D, S, S]): one window of ``depth`` slices per study and
        plane, starting anywhere in the series, each through ``augmentation`` (if given) and then scaled as
        :func:`preprocess_volume` scales a window by ``spec`` (default: the official min-max).

        Inference covers a series with overlapping windows; a model that only ever saw the centre window
        learns where in the window the joint sits and segments shifted windows poorly.
        """
        b, p = len(index), self.images.shape[1]
        size = self.images.shape[-2:]
        images = torch.zeros((b, p, 1, depth, *size))
        labels = torch.zeros((b, p, depth, *size), dtype=torch.uint8)
        for row, n in enumerate(index.tolist()):
            for plane in range(p):
                length = int(self.lengths[n, plane])
                if not length:
                    continue
                start = int(torch.randint(max(1, length - depth + 1), (1,), generator=generator))
                window = self.images[n, plane, start : start + depth]
                window_labels = self.labels[n, plane, start : start + depth]
                if augmentation is not None:
                    window, window_labels = augmentation.apply(window, window_labels, length - start, generator)
                try:
                    images[row, plane] = scale_intensity(window, spec)
                except ConstantVolumeError:
                    continue  # an image-less window: learnt as background on a blank input
                labels[row, plane] = window_labels
        return images, labels

    @staticmethod
    def stack(planes: list[dict[int, tuple[torch.Tensor, torch.Tensor]]], depth: int, size: int) -> SliceStacks:
        """Per study {plane index: (slices [n, S, S], labels [n, S, S])} -> zero-padded stacks."""
        length = max([depth, *(len(images) for study in planes for images, _ in study.values())])
        images = torch.zeros((len(planes), len(MODEL_PLANES), length, size, size))
        labels = torch.zeros((len(planes), len(MODEL_PLANES), length, size, size), dtype=torch.uint8)
        lengths = torch.zeros((len(planes), len(MODEL_PLANES)), dtype=torch.int64)
        for n, study in enumerate(planes):
            for i, (slices, plane_labels) in study.items():
                images[n, i, : len(slices)] = slices
                labels[n, i, : len(slices)] = plane_labels.to(torch.uint8)
                lengths[n, i] = len(slices)
        return SliceStacks(images, labels, lengths)


@dataclass
class TaskData:
    """N studies of one joint on the model grid (CPU tensors).

    images [N, P, 1, D, S, S] float32 (centre window); present [N, P] bool; segmentation [N, P, D, S, S] uint8
    (centre window; knee, else None); diagnosis [N, K] float32; clinical [N, 8] float32; stacks: every slice
    with its labels (knee, else None).
    """

    joint: Joint
    images: torch.Tensor
    present: torch.Tensor
    segmentation: torch.Tensor | None
    diagnosis: torch.Tensor
    clinical: torch.Tensor
    study_uids: tuple[str, ...]
    stacks: SliceStacks | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: Sequence[int] | torch.Tensor) -> TaskData:
        index = torch.as_tensor(index, dtype=torch.long)
        seg = None if self.segmentation is None else self.segmentation[index]
        stacks = None if self.stacks is None else self.stacks.subset(index)
        return TaskData(self.joint, self.images[index], self.present[index], seg, self.diagnosis[index],
                        self.clinical[index], tuple(self.study_uids[int(i)] for i in index), stacks)

    def segmentation_batch(self, index: torch.Tensor, generator: torch.Generator | None,
                           spec: PreprocessSpec | None = None, augmentation: WindowAugmentation | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) to train segmentation on: random windows (through ``augmentation`` if given, and
        scaled by ``spec``'s normalisation, the one the data was made with) where the stacks are kept (and a
        generator is given), else the centre windows as stored."""
        if self.segmentation is None:
            raise ValueError(f"{self.joint.value} data carries no segmentation labels")
        if self.stacks is None or generator is None:
            return self.images[index], self.segmentation[index]
        return self.stacks.random_windows(index, self.images.shape[3], generator, spec, augmentation)

    def save(self, path: Path) -> None:
        stacks = None if self.stacks is None else {
            "images": self.stacks.images, "labels": self.stacks.labels, "lengths": self.stacks.lengths}
        torch.save({"joint": self.joint.value, "images": self.images, "present": self.present,
                    "segmentation": self.segmentation, "diagnosis": self.diagnosis, "clinical": self.clinical,
                    "study_uids": [str(uid) for uid in self.study_uids],  # plain str: weights_only load
                    "stacks": stacks}, path)

    @classmethod
    def load(cls, path: Path) -> TaskData:
        data = torch.load(path, map_location="cpu", weights_only=True)
        stacks = data.get("stacks")
        return cls(Joint(data["joint"]), data["images"], data["present"], data["segmentation"], data["diagnosis"],
                   data["clinical"], tuple(data["study_uids"]), None if stacks is None else SliceStacks(**stacks))


@dataclass(frozen=True)
class _Example:
    images: torch.Tensor
    present: torch.Tensor
    segmentation: torch.Tensor | None
    diagnosis: torch.Tensor
    clinical: torch.Tensor
    uid: str
    slices: dict[int, tuple[torch.Tensor, torch.Tensor]]  # plane index -> every slice and its labels (knee)


def _example(joint: Joint, uid: str, volumes: Mapping[Plane, np.ndarray], labels: Mapping[Plane, np.ndarray] | None,
             diagnosis: Mapping[str, int], clinical: torch.Tensor, spec: PreprocessSpec,
             spacings: Mapping[Plane, tuple[float, float]] | None = None,
             orientations: Mapping[Plane, Reorientation] | None = None) -> _Example:
    """One study on the model grid; ``spacings`` (per plane, DICOM pixel spacing in mm) place the crop of a spec
    with ``crop_mm``; ``orientations`` (per plane, from :func:`study_orientations`) lay the series out as a spec
    with the canonical orientation reads them."""
    if spec.crop_mm is not None and (spacings is None or not set(volumes) <= set(spacings)):
        raise ValueError("a cropping preprocessing needs every series' pixel spacing")
    if spec.orientation is not Orientation.STORED:
        if orientations is None or not set(volumes) <= set(orientations):
            raise ValueError(f"a {spec.orientation.value} orientation needs every series' geometry")
        volumes = {p: orientations[p].apply(v) for p, v in volumes.items()}
        labels = None if labels is None else {p: orientations[p].apply(v) for p, v in labels.items()}
        spacings = None if spacings is None else {p: orientations[p].pixel_spacing(v) for p, v in spacings.items()}
    shape = (spec.depth, spec.size, spec.size)
    images = torch.zeros((len(MODEL_PLANES), 1, *shape))
    segmentation = torch.zeros((len(MODEL_PLANES), *shape), dtype=torch.uint8) if labels is not None else None
    present = torch.zeros(len(MODEL_PLANES), dtype=torch.bool)
    slices = {}
    for i, plane in enumerate(MODEL_PLANES):
        if plane not in volumes:
            continue
        crop: CropBox | None = None if spacings is None else plan_crop(volumes[plane], spec, spacings[plane])
        try:
            images[i] = preprocess_volume(volumes[plane], spec, crop=crop)[0]
        except ConstantVolumeError:
            continue
        present[i] = True
        if segmentation is not None and labels is not None:
            segmentation[i] = labels_to_model_grid(labels[plane], spec, crop=crop).to(torch.uint8)
            slices[i] = (slices_to_model_grid(volumes[plane], spec, crop=crop),
                         label_slices_to_model_grid(labels[plane], spec, crop=crop).to(torch.uint8))
    target = torch.tensor([float(diagnosis.get(label, 0)) for label in DIAGNOSIS_LABELS[joint]])
    return _Example(images, present, segmentation, target, clinical, uid, slices)


def _stack(joint: Joint, examples: list[_Example]) -> TaskData:
    if not examples:
        raise ValueError(f"no {joint.value} examples")
    images = torch.stack([e.images for e in examples])
    seg, stacks = None, None
    if examples[0].segmentation is not None:
        seg = torch.stack([e.segmentation for e in examples])  # type: ignore[misc]
        stacks = SliceStacks.stack([e.slices for e in examples], images.shape[3], images.shape[-1])
    return TaskData(joint, images, torch.stack([e.present for e in examples]), seg,
                    torch.stack([e.diagnosis for e in examples]), torch.stack([e.clinical for e in examples]),
                    tuple(e.uid for e in examples), stacks)


def example_from_synthetic(study: SyntheticStudy, spec: PreprocessSpec, segmentation: bool) -> _Example:
    assembled = assembled_from_synthetic(study)
    volumes = {p: v.pixels for p, v in assembled.planes.items()}
    labels = {s.plane: s.labels for s in study.series} if segmentation else None
    spacings = {p: v.geometry.pixel_spacing for p, v in assembled.planes.items()}
    return _example(study.joint, study.study_uid, volumes, labels, study.diagnosis,
                    clinical_from_facts(assembled.clinical), spec, spacings,
                    study_orientations(assembled, spec.orientation))


def synthetic_training_study(joint: Joint, seed: int, *, domain: DomainRandomization | None = None,
                             scene_spacing: float = 1.0, randomized_ratio: float = 0.0,
                             appearance: RandomizedAppearance | None = None,
                             unsuppressed_ratio: float = 0.0) -> SyntheticStudy:
    """The training study of ``seed``: the randomised render of the realistic study's scene (``randomize_study``
    with ``seed``) when :func:`choose_randomized` picks it for this ratio, else the realistic study itself, its
    series without fat suppression as :func:`training_weightings` draws them for ``unsuppressed_ratio`` (both
    ratios 0: exactly today's ``generate_study`` call)."""
    weighting = training_weightings(joint, seed, unsuppressed_ratio)
    if choose_randomized(seed, randomized_ratio):
        scene = generate_study(joint, seed, findings="random", domain=domain, scene_spacing=scene_spacing,
                               keep_scene=True, weighting=weighting, render_pixels=False)
        return randomize_study(scene, seed, appearance)
    return generate_study(joint, seed, findings="random", domain=domain, scene_spacing=scene_spacing,
                          weighting=weighting)


def _synthetic_example(joint: Joint, seed: int, spec: PreprocessSpec, domain: DomainRandomization | None,
                       segmentation: bool, scene_spacing: float, randomized_ratio: float,
                       appearance: RandomizedAppearance | None, unsuppressed_ratio: float) -> _Example:
    study = synthetic_training_study(joint, seed, domain=domain, scene_spacing=scene_spacing,
                                     randomized_ratio=randomized_ratio, appearance=appearance,
                                     unsuppressed_ratio=unsuppressed_ratio)
    return example_from_synthetic(study, spec, segmentation)


def _single_threaded() -> None:
    torch.set_num_threads(1)  # the pool's processes share the cores; one thread each avoids oversubscription


def rendering_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes of one torch thread each, for rendering synthetic studies. (Spawned, not
    forked: a fork after torch has started its thread pool can hang.)"""
    return ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_single_threaded)


def generate_task_data(joint: Joint, seeds: Iterable[int], spec: PreprocessSpec, *,
                       domain: DomainRandomization | None = None, segmentation: bool | None = None,
                       scene_spacing: float = 1.0, workers: int = 1, randomized_ratio: float = 0.0,
                       appearance: RandomizedAppearance | None = None, unsuppressed_ratio: float = 0.0) -> TaskData:
    """Generate one synthetic study per seed (random findings, domain randomisation) and preprocess it.

    ``randomized_ratio`` of the studies (chosen per seed, :func:`synthetic_training_study`) are SynthSeg-style
    randomised renders with ``appearance``'s ranges (default ``RandomizedAppearance()``); 0: today's data,
    bit for bit. ``unsuppressed_ratio``: the share of the realistic series rendered without fat suppression.
    ``workers`` > 1 renders in that many processes (:func:`rendering_pool`); a study depends only on its seed,
    so the result is the same.
    """
    if not 0.0 <= randomized_ratio <= 1.0:
        raise ValueError(f"randomized_ratio must be in [0, 1], got {randomized_ratio}")
    segmentation = joint is Joint.KNEE if segmentation is None else segmentation
    jobs = [(joint, seed, spec, domain, segmentation, scene_spacing, randomized_ratio, appearance, unsuppressed_ratio)
            for seed in seeds]
    if workers > 1 and len(jobs) > 1:
        with rendering_pool(min(workers, len(jobs))) as pool:
            examples = list(pool.map(_synthetic_example, *zip(*jobs)))
    else:
        examples = [_synthetic_example(*job) for job in jobs]
    logger.info("generated %d %s studies (randomised ratio %g, without fat suppression %g)", len(examples),
                joint.value, randomized_ratio, unsuppressed_ratio)
    return _stack(joint, examples)


def _nifti_volume(path: Path) -> np.ndarray:
    """Our synthetic NIfTI (i=col, j=row, k=slice) -> (slice, row, col), the DICOM/assembly order."""
    return np.ascontiguousarray(np.transpose(np.asarray(nib.load(path).dataobj), (2, 1, 0)))


def _nifti_pixel_spacing(path: Path) -> tuple[float, float]:
    """DICOM's (between rows, between columns) of our synthetic NIfTI: its (j, i) voxel sizes."""
    zooms = nib.load(path).header.get_zooms()
    return (float(zooms[1]), float(zooms[0]))


def _clinical_from_dicom(root: Path) -> torch.Tensor:
    first = next(iter(sorted(root.glob("dicom/*/*.dcm"))), None)
    if first is None:
        return torch.tensor([0.0] * (CLINICAL_INPUTS // 2) + [1.0] * (CLINICAL_INPUTS // 2))
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    facts = ClinicalFacts(ds.get("PatientAge"), ds.get("PatientSex"),
                          float(ds.PatientSize) if ds.get("PatientSize") else None,
                          float(ds.PatientWeight) if ds.get("PatientWeight") else None)
    return clinical_from_facts(facts)


def read_synth_folder(root: Path, joint: Joint, spec: PreprocessSpec, *, segmentation: bool | None = None) -> TaskData:
    """Every ``<joint>_<seed>/`` study written by ``ortho-node synth`` (NIfTI + findings.json) under ``root``."""
    if spec.orientation is not Orientation.STORED:
        raise ValueError(f"a model whose card reads series in the {spec.orientation.value} orientation needs their "
                         f"DICOM geometry and laterality, which NIfTI folders do not carry: use the DICOM studies")
    segmentation = joint is Joint.KNEE if segmentation is None else segmentation
    examples = []
    for summary_path in sorted(Path(root).glob(f"{joint.value}_*/findings.json")):
        study_dir = summary_path.parent
        summary = json.loads(summary_path.read_text())
        volumes, labels, spacings = {}, {}, {}
        for plane in MODEL_PLANES:
            image = study_dir / "nifti" / f"{plane.value}.nii.gz"
            if image.is_file():
                volumes[plane] = _nifti_volume(image).astype(np.float32)
                spacings[plane] = _nifti_pixel_spacing(image)
                labels[plane] = _nifti_volume(study_dir / "nifti" / f"{plane.value}_labels.nii.gz")
        if not volumes:
            logger.warning("skipping %s: no NIfTI volumes (write with --format nifti or both)", study_dir)
            continue
        examples.append(_example(joint, summary["study_instance_uid"], volumes, labels if segmentation else None,
                                 summary["labels"], _clinical_from_dicom(study_dir), spec, spacings))
    return _stack(joint, examples)
