"""The predictor: an :class:`AssembledStudy` -> :class:`StudyPrediction` (masks on each source series' grid,
findings at the model card's thresholds with its operating points, per-label plane weights).

Per analysed plane the series is covered by overlapping windows of the model's depth (the official centre
window, then stride depth / 2 on either side, the outermost flush with the series' ends), so every source
slice is segmented; softmax maps of overlapping windows (and of the card's noise draws) are averaged on the
model grid (each window's slices weighted by a Gaussian around its centre), restored onto the source grid
(bilinear), each structure's map multiplied by its card scale, and arg-maxed. Diagnosis reads the official centre
window of each plane and the first noise draw alone (its findings do not depend on the draws or scales);
where the card names an evidence readout, each label's final logit comes from it (the head's logit and plane
descriptors, or the statistics of the label's structure in the first draw's class maps:
:mod:`ortho_node.model.evidence`). Planes that are absent or carry no image (a single intensity, e.g.
all zero) are left out of the fusion and reported in :class:`PredictionOutcome`.

A prediction runs in three parts, so a serving loop can overlap them and batch across studies:
:meth:`Predictor.prepare` (CPU: checks, model-grid slices and windows), :meth:`Predictor.run` (the device: the
windows of every prepared study of a plane go through its backbone ``window_batch`` at a time) and
:meth:`Predictor.finish` (masks restored onto the source grids, findings). Every window's noise draw is fixed,
so a study's result does not depend on the studies it was batched with, beyond the float rounding of kernels
that differ between batch sizes (about 1e-6 in the class maps on the CPU).

Where the card's preprocessing names a ``crop_mm``, each series is first cropped in-plane to that physical extent
around its foreground centroid (:func:`~ortho_node.model.preprocessing.plan_crop`; one box for every window of
the series), and its masks come back onto every source pixel, background outside the crop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ortho_node.assembly.study import AssembledStudy, PlaneVolume
from ortho_node.inference.orientation import IDENTITY, Reorientation, study_orientations
from ortho_node.inference.windows import WindowAverage, window_starts
from ortho_node.labels import MODEL_PLANES, Joint, Plane
from ortho_node.model.evidence import STATISTICS, plane_statistics, stack_inputs
from ortho_node.model.heads import DiagnosisOutput, clinical_from_facts
from ortho_node.model.preprocessing import (
    ConstantVolumeError,
    CropBox,
    GridMapping,
    PreprocessSpec,
    plan_crop,
    preprocess_volume,
    restore_argmax,
    restore_probabilities,
    scale_intensity,
    slices_to_model_grid,
)
from ortho_node.model.runtime import (
    DeviceChoice,
    autocast,
    prepare_for_inference,
    resolve_device,
)
from ortho_node.model.system import (
    SEGMENTATION_JOINT,
    OrthoModel,
    SystemCard,
    load_system,
)
from ortho_node.prediction import (
    Finding,
    ModelIdentity,
    SeriesSegmentation,
    SliceRef,
    StudyNotAnalysable,
    StudyPrediction,
)

logger = logging.getLogger(__name__)

Locate = Callable[[str], Path]
NOISE_SEED = 0
#: Source slices restored to full resolution at a time (bounds memory on 512 x 512 series).
RESTORE_CHUNK = 4
#: Windows per backbone pass by default (CPU: larger batches are no faster; a GPU takes many more).
WINDOW_BATCH = 4


class PredictionError(StudyNotAnalysable):
    """The study cannot be analysed by this model; the message says why."""


@dataclass(frozen=True)
class PredictionOutcome:
    """The prediction and how it was reached."""

    prediction: StudyPrediction
    analysed_planes: tuple[Plane, ...]
    skipped_planes: Mapping[Plane, str]  # plane -> reason (absent, no image)
    windows: Mapping[Plane, tuple[int, ...]]  # first source slice of each window
    seconds: float


@dataclass(frozen=True)
class _PlanePlan:
    """One plane of one study ready for the device: its windows as (first slice, noise draw, input [1, D, S, S]),
    the centre window's first slice, the number of source slices and the in-plane crop (None: the whole field of
    view); for a segmented plane its slices on the model grid [max(n, D), S, S] (None: diagnosis reads the
    centre window alone)."""

    plane: Plane
    windows: tuple[tuple[int, int, torch.Tensor], ...]
    window_starts: tuple[int, ...]
    centre_start: int
    slices_count: int
    draws: int
    crop: CropBox | None
    slices: torch.Tensor | None = None
    orientation: Reorientation = IDENTITY


@dataclass(frozen=True)
class PreparedStudy:
    """A study checked and preprocessed for one predictor (:meth:`Predictor.prepare`), waiting for the device."""

    study: AssembledStudy
    joint: Joint
    plans: tuple[_PlanePlan, ...]
    skipped: Mapping[Plane, str]
    started: float  # time.perf_counter() when preparation began


@dataclass(frozen=True)
class _PlaneRun:
    """One plane's pass: centre-window features [1, C, d, h, w], the windows' first slices and, when segmented,
    the class probabilities [K, n, S, S] averaged over windows and noise draws (the masks') and over the first
    draw's windows alone (what the structure evidence reads), the slices [n, S, S] on the model grid, and the
    in-plane crop the grid covers (None: the whole field of view)."""

    features: torch.Tensor
    window_starts: tuple[int, ...]
    class_maps: torch.Tensor | None = None
    first_draw_maps: torch.Tensor | None = None
    slices: torch.Tensor | None = None
    crop: CropBox | None = None
    orientation: Reorientation = IDENTITY


class Predictor:
    """Ready to predict once built. ``from_checkpoint`` is the usual way to make one."""

    def __init__(self, model: OrthoModel, device: torch.device, *, locate: Locate | None = None,
                 use_autocast: bool = True, window_stride: int | None = None,
                 window_batch: int = WINDOW_BATCH) -> None:
        if window_batch < 1:
            raise ValueError(f"window_batch must be at least 1, not {window_batch}")
        self.model = prepare_for_inference(model, device)
        self.window_batch = window_batch
        self.device = device
        self.card: SystemCard = model.card
        self.locate = locate
        self.use_autocast = use_autocast
        self.window_stride = window_stride
        spec = self.card.preprocessing
        # Fixed eps draws for every window and study (the first as features.extract_features): results do not
        # depend on batching, and CPU runs are bit-reproducible.
        generator = torch.Generator().manual_seed(NOISE_SEED)
        self._noise = torch.cat([torch.randn((1, 1, spec.depth, spec.size, spec.size), generator=generator)
                                 for _ in range(self.card.segmentation_draws)]).to(device)
        scales = self.card.structure_scales or (1.0,) * len(self.card.structures)
        self._scales = torch.tensor(scales, dtype=torch.float32, device=device)[:, None, None, None]

    @classmethod
    def from_checkpoint(cls, path: Path | str, device: DeviceChoice | str = "auto", *, locate: Locate | None = None,
                        deterministic: bool = False, window_stride: int | None = None,
                        window_batch: int = WINDOW_BATCH) -> Predictor:
        """Load a task model folder (``model.safetensors`` + ``model_card.json``) onto ``device``.

        Args:
            device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
            locate: SOP Instance UID -> stored file path, for the mask slices' references (e.g. the
                catalog's ``stored_path``); may instead be passed to each ``predict`` call.
            deterministic: ask torch for deterministic kernels and run in float32 without bf16 autocast
                (matters on CUDA; CPU results are deterministic anyway: the diffusion noise is seeded).
            window_stride: slices between overlapping segmentation windows (default: depth / 2).
            window_batch: windows per backbone pass (of one study or of several prepared together).
        """
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        resolved = resolve_device(device)
        return cls(load_system(Path(path)), resolved, locate=locate, use_autocast=not deterministic,
                   window_stride=window_stride, window_batch=window_batch)

    def predict(self, study: AssembledStudy, *, locate: Locate | None = None) -> StudyPrediction:
        return self.analyse(study, locate=locate).prediction

    def analyse(self, study: AssembledStudy, *, locate: Locate | None = None) -> PredictionOutcome:
        """Predict, and say which planes were analysed, which skipped (and why), and the windows used."""
        self.check_locate(study, locate)
        prepared = self.prepare(study)
        return self.finish(prepared, self.run([prepared])[0], locate=locate)

    def analyse_batch(self, studies: Sequence[AssembledStudy], *, locate: Locate | None = None
                      ) -> list[PredictionOutcome | PredictionError]:
        """:meth:`analyse` for several studies with one device pass: each study's outcome, or why it could not
        be analysed, in the order given."""
        prepared: list[PreparedStudy | PredictionError] = []
        for study in studies:
            try:
                self.check_locate(study, locate)
                prepared.append(self.prepare(study))
            except PredictionError as error:
                prepared.append(error)
        ready = [p for p in prepared if isinstance(p, PreparedStudy)]
        runs = iter(self.run(ready))
        return [p if isinstance(p, PredictionError) else self.finish(p, next(runs), locate=locate) for p in prepared]

    def prepare(self, study: AssembledStudy, *, draws: int | None = None) -> PreparedStudy:
        """The CPU part before the device: check the study, put each analysable plane on the model grid and cut
        its windows (segmented over the first ``draws`` noise draws, default all). Raises
        :class:`PredictionError` when the study cannot be analysed."""
        started = time.perf_counter()
        joint = self._check(study)
        segment = self._segments(joint)
        skipped: dict[Plane, str] = {p: "plane absent from the study" for p in MODEL_PLANES if p not in study.planes}
        plans = []
        orientations = study_orientations(study, self.card.preprocessing.orientation)
        for plane in MODEL_PLANES:
            volume = study.planes.get(plane)
            if volume is None:
                continue
            if float(volume.pixels.min()) == float(volume.pixels.max()):
                skipped[plane] = f"no image: every pixel is {float(volume.pixels.min())}"
                continue
            plans.append(self._plan(plane, volume, segment, draws or len(self._noise), orientations[plane]))
        if not plans:
            raise PredictionError("no analysable plane: " + "; ".join(f"{p.value}: {r}" for p, r in skipped.items()))
        return PreparedStudy(study, joint, tuple(plans), skipped, started)

    def run(self, prepared: Sequence[PreparedStudy]) -> list[dict[Plane, _PlaneRun]]:
        """The device part: every window of the prepared studies, plane by plane, ``window_batch`` at a time
        whichever study it belongs to; each study's plane runs, in the order given."""
        plans = [plan for study in prepared for plan in study.plans]
        averages = {k: WindowAverage(plan.draws, len(self.card.structures), plan.slices_count,
                                     self.card.preprocessing.depth, self.card.preprocessing.size, self.device)
                    for k, plan in enumerate(plans) if plan.slices is not None}
        centres: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            for plane in MODEL_PLANES:
                for segmented in (True, False):
                    work = [(k, start, draw, x) for k, plan in enumerate(plans)
                            if plan.plane is plane and (plan.slices is not None) is segmented
                            for start, draw, x in plan.windows]
                    for i in range(0, len(work), self.window_batch):
                        self._pass(plane, segmented, work[i : i + self.window_batch], plans, averages, centres)
            runs: list[dict[Plane, _PlaneRun]] = [{} for _ in prepared]
            owners = [i for i, study in enumerate(prepared) for _ in study.plans]
            for k, plan in enumerate(plans):
                if k not in centres:  # the centre window always holds an image (min < max was checked)
                    raise RuntimeError(f"{plan.plane.value}: the centre window was not among the windows run")
                if plan.slices is None:
                    runs[owners[k]][plan.plane] = _PlaneRun(centres[k], plan.window_starts, crop=plan.crop,
                                                            orientation=plan.orientation)
                    continue
                maps = averages[k].average()
                runs[owners[k]][plan.plane] = _PlaneRun(centres[k], plan.window_starts, maps.mean(dim=0), maps[0],
                                                        plan.slices[: plan.slices_count], plan.crop,
                                                        plan.orientation)
        return runs

    def finish(self, prepared: PreparedStudy, runs: Mapping[Plane, _PlaneRun], *, locate: Locate | None = None
               ) -> PredictionOutcome:
        """The part after the device: masks restored onto each source series' grid, findings, the outcome."""
        study, joint = prepared.study, prepared.joint
        locate = locate or self.locate
        with torch.inference_mode():
            segmentations = []
            for plane, run in runs.items():
                volume = study.planes[plane]
                if run.class_maps is not None:
                    if locate is None:  # refused before preparing, for every segmenting joint
                        raise RuntimeError("segmented plane without a locate callable")
                    segmentations.append(self._segmentation(plane, volume, run, locate))
                elif locate is not None:
                    segmentations.append(self._analysed_series(plane, volume, locate))
            findings = self._findings(joint, runs, study)
        prediction = StudyPrediction(
            study_instance_uid=study.study_instance_uid, joint=joint,
            laterality=study.laterality.value if study.laterality.value in ("R", "L") else None,
            segmentations=tuple(segmentations), findings=findings,
            model=ModelIdentity(self.card.name, self.card.version, json.loads(self.card.to_json())),
        )
        for plane, reason in prepared.skipped.items():
            logger.warning("study %s: %s plane not analysed: %s", study.study_instance_uid, plane.value, reason)
        windows = {plane: run.window_starts for plane, run in runs.items()}
        return PredictionOutcome(prediction, tuple(runs), prepared.skipped, windows,
                                 time.perf_counter() - prepared.started)

    def evidence_inputs(self, study: AssembledStudy) -> torch.Tensor:
        """[labels, inputs] of the study's evidence readout (:mod:`ortho_node.model.evidence`): what the card's
        readout reads for each label of the study's joint; fitting it starts here."""
        joint = self._check(study)
        if joint not in self.card.evidence:
            raise PredictionError(f"this model has no evidence readout for {joint.value}")
        with torch.inference_mode():
            runs, _ = self._run_planes(study, draws=1)  # the rows read the first draw
            return self._evidence_rows(joint, self._head(joint, runs, study), runs)

    def _run_planes(self, study: AssembledStudy, draws: int | None = None
                    ) -> tuple[dict[Plane, _PlaneRun], Mapping[Plane, str]]:
        """Each analysable plane's run (over the first ``draws`` noise draws, default all), and why the others
        were skipped; raises when none is analysable."""
        prepared = self.prepare(study, draws=draws)
        return self.run([prepared])[0], prepared.skipped

    def check_locate(self, study: AssembledStudy, locate: Locate | None) -> None:
        """Refuse, before any work, a study whose masks could not name their source files."""
        if self._segments(self._check(study)) and (locate or self.locate) is None:
            raise PredictionError("knee masks need a locate(sop_instance_uid) -> Path callable for their references")

    def _segments(self, joint: Joint) -> bool:
        return joint is SEGMENTATION_JOINT and len(self.card.structures) > 1

    def _check(self, study: AssembledStudy) -> Joint:
        if study.skipped:
            raise PredictionError(f"study was skipped by assembly: {study.skip_reason}")
        if study.joint not in self.card.diagnosis:
            known = ", ".join(j.value for j in self.card.diagnosis)
            raise PredictionError(f"no model for joint {study.joint.value!r} (this model knows: {known})")
        return study.joint

    def _plan(self, plane: Plane, volume: PlaneVolume, segment: bool, draws: int,
              orientation: Reorientation) -> _PlanePlan:
        spec = self.card.preprocessing
        pixels = orientation.apply(volume.pixels)
        n = pixels.shape[0]
        crop = plan_crop(pixels, spec, orientation.pixel_spacing(volume.geometry.pixel_spacing))
        if not segment:  # diagnosis reads the centre window alone
            centre_input, mapping = preprocess_volume(pixels, spec, crop=crop)
            return _PlanePlan(plane, ((mapping.start, 0, centre_input),), (mapping.start,), mapping.start, n, 1, crop,
                              orientation=orientation)
        # Every slice resized once, then cut into windows (the training data's way): equal to preprocessing each
        # window on its own, without resizing the overlaps again.
        slices = slices_to_model_grid(pixels, spec, crop=crop)
        if n < spec.depth:
            slices = torch.cat([slices, slices.new_zeros((spec.depth - n, *slices.shape[1:]))])
        centre_start = GridMapping(pixels.shape, spec).start
        starts = window_starts(n, spec.depth, self.window_stride)
        windows = []
        for start in starts:
            try:
                window = scale_intensity(slices[start : start + spec.depth], spec)
            except ConstantVolumeError:
                logger.debug("%s window at slice %d carries no image: background", plane.value, start)
                continue
            windows += [(start, draw, window) for draw in range(draws)]
        return _PlanePlan(plane, tuple(windows), starts, centre_start, n, draws, crop, slices, orientation)

    def _pass(self, plane: Plane, segmented: bool, batch: Sequence[tuple[int, int, int, torch.Tensor]],
              plans: Sequence[_PlanePlan], averages: Mapping[int, WindowAverage], centres: dict[int, torch.Tensor]
              ) -> None:
        """One backbone pass over (plan index, first slice, noise draw, input) windows of ``plane``: class maps
        into each plan's average, the centre window's first-draw features kept (diagnosis reads them)."""
        x_0 = torch.stack([x for *_, x in batch])
        if self.device.type == "cuda":
            x_0 = x_0.pin_memory()
        x_0 = x_0.to(self.device, non_blocking=True)
        noise = self._noise[[draw for _, _, draw, _ in batch]]
        with autocast(self.device, self.use_autocast):
            if segmented:
                logits, features = self.model.segment_with_features(plane, x_0, noise)
            else:
                logits, features = None, self.model.features(plane, x_0, noise)
        probabilities = None if logits is None else torch.softmax(logits.float(), dim=1)
        for j, (k, start, draw, _) in enumerate(batch):
            if start == plans[k].centre_start and draw == 0:
                centres[k] = features[j : j + 1].float()
            if probabilities is not None:
                averages[k].add(start, draw, probabilities[j])

    @staticmethod
    def _slice_refs(volume: PlaneVolume, locate: Locate) -> tuple[SliceRef, ...]:
        g = volume.geometry
        return tuple(SliceRef(uid, Path(locate(uid)), frame) for uid, frame in zip(g.sop_instance_uids, g.frame_numbers))

    def _analysed_series(self, plane: Plane, volume: PlaneVolume, locate: Locate) -> SeriesSegmentation:
        """A series analysed for diagnosis only (ankle, shoulder): an empty mask, so the result objects still
        take the study's attributes from, and anchor the findings on, the images the model read; no SEG."""
        mask = np.zeros(volume.pixels.shape, dtype=np.uint8)
        return SeriesSegmentation(volume.geometry.series_instance_uid, plane, self._slice_refs(volume, locate), mask,
                                  ("background",))

    def source_class_maps(self, study: AssembledStudy) -> Iterator[tuple[Plane, int, torch.Tensor]]:
        """(plane, first slice, class maps [K, slices, rows, cols]) on each segmented series' own grid, a few
        slices at a time: what the masks are the arg-max of. Choosing the structure scales reads them."""
        if not self._segments(self._check(study)):
            raise PredictionError(f"this model does not segment {study.joint.value} studies")
        with torch.inference_mode():  # not held across the yields: the caller's code runs in its own mode
            runs, _ = self._run_planes(study)
        for plane, run in runs.items():
            if run.class_maps is None:  # every run of a segmenting joint has its maps
                raise RuntimeError(f"{plane.value}: a segmenting run without class maps")
            n = study.planes[plane].pixels.shape[0]
            for chunk, mapping in self._restore_chunks(study.planes[plane], run):
                maps = restore_probabilities(run.class_maps[:, chunk] * self._scales, mapping)
                stored = run.orientation.stored_slices(chunk.start, chunk.stop - chunk.start, n)
                yield plane, stored.start, torch.from_numpy(run.orientation.invert(maps))

    def _restore_chunks(self, volume: PlaneVolume, run: _PlaneRun) -> Iterator[tuple[slice, GridMapping]]:
        """(slices, mapping) of each RESTORE_CHUNK slices of ``volume`` laid out as the run read it, model grid
        (covering the run's crop) -> that layout's grid."""
        n, rows, cols = run.orientation.shape(volume.pixels.shape)
        spec, crop = self.card.preprocessing, run.crop
        for start in range(0, n, RESTORE_CHUNK):
            count = min(n, start + RESTORE_CHUNK) - start
            chunk = PreprocessSpec(count, spec.size, spec.rot90_k)
            yield slice(start, start + count), GridMapping((count, rows, cols), chunk, crop)

    def _segmentation(self, plane: Plane, volume: PlaneVolume, run: _PlaneRun, locate: Locate) -> SeriesSegmentation:
        if run.class_maps is None:
            raise RuntimeError(f"{plane.value}: a segmenting run without class maps")
        mask = np.zeros(run.orientation.shape(volume.pixels.shape), dtype=np.uint8)
        for chunk, mapping in self._restore_chunks(volume, run):
            mask[chunk] = restore_argmax(run.class_maps[:, chunk] * self._scales, mapping)
        return SeriesSegmentation(volume.geometry.series_instance_uid, plane, self._slice_refs(volume, locate),
                                  run.orientation.invert(mask), tuple(self.card.structures))

    def _head(self, joint: Joint, runs: Mapping[Plane, _PlaneRun], study: AssembledStudy) -> DiagnosisOutput:
        clinical = clinical_from_facts(study.clinical)[None].to(self.device)
        features = [runs[p].features if p in runs else None for p in MODEL_PLANES]
        return self.model.diagnosis[joint.value](features, clinical)

    def _evidence_rows(self, joint: Joint, out: DiagnosisOutput, runs: Mapping[Plane, _PlaneRun]) -> torch.Tensor:
        logits = out.logits.float()[0]
        descriptors = {p: out.descriptors[0, i] for i, p in enumerate(MODEL_PLANES) if p in runs}
        pairs = self.card.evidence_structures(joint)
        statistics = None
        if pairs:
            statistics = {}
            for plane, run in runs.items():
                if run.first_draw_maps is None or run.slices is None:
                    continue
                rows = torch.full((len(logits), STATISTICS), float("nan"))
                rows[[label for label, _ in pairs]] = plane_statistics(run.slices, run.first_draw_maps,
                                                                      [structure for _, structure in pairs])
                statistics[plane] = rows
        return stack_inputs(logits, descriptors, out.descriptors.shape[-1], statistics)

    def _findings(self, joint: Joint, runs: Mapping[Plane, _PlaneRun], study: AssembledStudy) -> tuple[Finding, ...]:
        out = self._head(joint, runs, study)
        logits = out.logits.float()[0]
        weights = None if out.plane_weights is None else out.plane_weights[0].float().cpu().numpy()
        if joint in self.card.evidence:
            logits = self.model.evidence[joint.value](self._evidence_rows(joint, out, runs).to(self.device))
        # Labels read from structure statistics: the head's plane weights no longer say how the planes were
        # weighed. The others keep them: the readout recalibrates the head on its own plane descriptors.
        from_structures = [label for label, _ in self.card.evidence_structures(joint)]
        probabilities = torch.sigmoid(logits.float()).cpu().numpy()
        findings = []
        for k, label in enumerate(self.card.diagnosis[joint].labels):
            plane_weights = None if weights is None or k in from_structures else {
                p: float(weights[i, k]) for i, p in enumerate(MODEL_PLANES) if p in runs}
            findings.append(Finding(label, float(np.clip(probabilities[k], 0.0, 1.0)),
                                    self.card.threshold(joint, label), plane_weights,
                                    self.card.operating_point(joint, label)))
        return tuple(findings)
