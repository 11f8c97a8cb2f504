"""``generate_study``: one synthetic MSK MRI study (scene, findings, three planes) with exact ground truth."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from pydicom.uid import generate_uid

from ortho_node.labels import DIAGNOSIS_LABELS, MODEL_PLANES, Joint, Plane
from ortho_node.synthetic import acquisition, render
from ortho_node.synthetic.acquisition import SeriesGeometry
from ortho_node.synthetic.domain import DomainRandomization
from ortho_node.synthetic.findings import Finding, registry
from ortho_node.synthetic.protocol import PROTOCOLS, anatomy_module
from ortho_node.synthetic.render import SequenceParams, SequencePreset
from ortho_node.synthetic.scene import Grid, Scene
from ortho_node.synthetic.shapes import rotation
from ortho_node.synthetic.structures import ground_truth_lut

logger = logging.getLogger(__name__)

PLANE_ABBREVIATION = {Plane.SAGITTAL: "SAG", Plane.CORONAL: "COR", Plane.AXIAL: "AX"}
RANDOM_FINDING_RATE = 0.3


@dataclasses.dataclass(frozen=True)
class Patient:
    name: str
    patient_id: str
    sex: str  # "M" / "F"
    age_years: int
    height_m: float
    weight_kg: float
    birth_date: str  # YYYYMMDD


@dataclasses.dataclass
class SyntheticSeries:
    """One 2D multi-slice series. ``pixels`` (uint16) and ``labels`` (uint8, the joint's ground-truth label
    set, see ``structures.structure_names``) are indexed [slice, row, col] on ``geometry``'s grid."""

    plane: Plane
    number: int
    description: str
    uid: str
    geometry: SeriesGeometry
    sequence: SequenceParams
    pixels: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass
class SyntheticStudy:
    """A generated study: patient, findings (with regions), per-plane series, and the scene placement."""

    joint: Joint
    seed: int
    laterality: str  # "R" / "L"
    patient: Patient
    study_uid: str
    frame_of_reference_uid: str
    study_date: str
    findings: tuple[Finding, ...]
    series: list[SyntheticSeries]
    to_world: np.ndarray  # canonical anatomy frame -> patient LPS mm
    scene: Scene | None = None  # kept only when asked (it is large)

    @property
    def diagnosis(self) -> dict[str, int]:
        """Study-level labels: 1 for each injected finding, in the joint's official label order."""
        present = {f.label for f in self.findings}
        return {label: int(label in present) for label in DIAGNOSIS_LABELS[self.joint]}

    def series_for(self, plane: Plane) -> SyntheticSeries:
        return next(s for s in self.series if s.plane == plane)

    def finding_mask(self, label: str, series: SyntheticSeries, margin: float = 0.0) -> np.ndarray:
        """Voxels of ``series`` inside the region the finding ``label`` changed, grown by ``margin`` mm
        (bool, [slice, row, col]); a margin of half a slice plus a few pixels covers partial volume and blur."""
        finding = next(f for f in self.findings if f.label == label)
        to_canonical = np.linalg.inv(self.to_world)
        world = series.geometry.world_coordinates()
        inside = np.ones(series.geometry.shape, dtype=bool)
        for d in range(3):
            c = sum(float(to_canonical[d, e]) * world[e] for e in range(3)) + float(to_canonical[d, 3])
            inside &= (c >= finding.region[0][d] - margin) & (c <= finding.region[1][d] + margin)
        return inside


def stream(seed: int, *keys: str) -> np.random.Generator:
    """An independent random stream per purpose, so that e.g. adding a finding leaves the noise unchanged."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _uid(joint: Joint, seed: int, *keys: str) -> str:
    return generate_uid(entropy_srcs=["ortho-node-synthetic", joint.value, str(seed), *keys])


def _choose_findings(joint: Joint, seed: int, findings: Iterable[str] | str | None) -> list[str]:
    labels = DIAGNOSIS_LABELS[joint]
    if findings is None:
        return []
    if findings == "random":
        rng = stream(seed, "choose-findings")
        return [label for label in labels if rng.random() < RANDOM_FINDING_RATE]
    chosen = {str(f).upper() for f in findings}  # type: ignore[union-attr]
    unknown = chosen - set(labels)
    if unknown:
        raise ValueError(f"unknown {joint.value} findings {sorted(unknown)}; expected some of {labels}")
    return [label for label in labels if label in chosen]


def _patient(joint: Joint, seed: int, scale: float, study_date: datetime.date, child: bool = False) -> Patient:
    rng = stream(seed, "patient")
    sex = "M" if rng.random() < 0.5 else "F"
    age = int(rng.integers(16, 76))
    if child:  # open growth plates: 10 to 15 years old
        age = 10 + age % 6
    height = round(float(np.clip(1.72 * scale * (1.0 if sex == "M" else 0.95) + rng.normal(0, 0.03), 1.45, 2.05)), 2)
    weight = round(float(rng.uniform(19.0, 33.0) * height**2), 1)
    birth = study_date - datetime.timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
    return Patient(f"SYNTHETIC^{joint.value.upper()}^{seed:06d}", f"SYN-{joint.value[0].upper()}{seed:08d}", sex, age,
                   height, weight, birth.strftime("%Y%m%d"))


def _placement(joint: Joint, seed: int, laterality: str | None) -> tuple[str, np.ndarray, np.ndarray]:
    """Side, canonical -> LPS affine, and the proper rotation series orientations follow."""
    protocol, rng = PROTOCOLS[joint], stream(seed, "placement")
    side = laterality or ("R" if rng.random() < 0.5 else "L")
    mirror = np.diag([-1.0 if side == "R" else 1.0, 1.0, 1.0])  # canonical +x is lateral: patient left for "L"
    yaw = rotation((0, 0, 1), rng.normal(protocol.yaw[0], protocol.yaw[1] / 2.0))
    offset = np.array([mirror[0, 0] * rng.uniform(*protocol.table_x), rng.uniform(-20, 20), rng.uniform(-40, 40)])
    to_world = np.eye(4)
    to_world[:3, :3] = mirror @ yaw
    to_world[:3, 3] = offset
    return side, to_world, mirror @ yaw @ mirror


def _weightings(joint: Joint, weighting: SequencePreset | Mapping[Plane, SequencePreset] | None) -> dict[Plane, SequencePreset]:
    chosen = dict(PROTOCOLS[joint].default_weighting)
    if isinstance(weighting, (SequencePreset, str)):
        return {plane: SequencePreset(weighting) for plane in chosen}
    chosen.update(weighting or {})
    return chosen


def _acquire(study_seed: int, scene: Scene, plane: Plane, weighting: SequencePreset, field: float, centre: np.ndarray,
             limb_rotation: np.ndarray, bias: np.ndarray, dr: DomainRandomization, render_pixels: bool = True
             ) -> tuple[SeriesGeometry, SequenceParams, np.ndarray, np.ndarray]:
    """Prescribe, render and sample one series: geometry, sequence, uint16 pixels, scene labels (the last two
    empty without ``render_pixels``: the series' own stream, so nothing else changes)."""
    rng = stream(study_seed, "series", plane.value)
    geometry = acquisition.plan_series(plane, centre, limb_rotation, PROTOCOLS[scene.joint].coverage[plane], rng, dr)
    sequence = render.sample_sequence(weighting, field, rng)
    if not render_pixels:
        return geometry, sequence, np.zeros((0, 0, 0), np.uint16), np.zeros((0, 0, 0), np.uint8)
    lut = render.tissue_signal(sequence, rng, dr.contrast_jitter)
    image = acquisition.sample_intensity(scene, lut[scene.signal], geometry)
    labels, signal = acquisition.sample_nearest(scene, (scene.labels, scene.signal), geometry)
    image *= render.bias_field(geometry.world_coordinates(), centre, bias)
    snr = rng.uniform(*dr.snr) * (1.6 if field >= 2.0 else 1.0)
    image = render.finish_image(image, signal, rng, dr, snr, rng.uniform(*dr.blur_px))
    gain = rng.uniform(1800.0, 3000.0)  # scanners scale magnitude images differently
    pixels = np.clip(np.rint(image * gain), 0, 4095).astype(np.uint16)
    return geometry, sequence, pixels, labels


def generate_study(joint: Joint | str, seed: int, *, findings: Iterable[str] | str | None = "random",
                   weighting: SequencePreset | Mapping[Plane, SequencePreset] | None = None,
                   domain: DomainRandomization | None = None, laterality: str | None = None,
                   planes: Sequence[Plane] = MODEL_PLANES, scene_spacing: float = 0.6,
                   keep_scene: bool = False, render_pixels: bool = True) -> SyntheticStudy:
    """Generate one study deterministically from ``seed``.

    Args:
        joint: knee, ankle or shoulder.
        seed: everything (anatomy, findings, placement, scanner, noise, UIDs) derives from it.
        findings: diagnosis labels to inject (``DIAGNOSIS_LABELS[joint]`` keys), ``"random"`` (each with
            probability 0.3) or None for a normal study.
        weighting: one weighting for every plane, or per plane; default: the joint protocol's.
        domain: randomisation ranges (``DomainRandomization.fixed()`` for none).
        laterality: "R" or "L"; default: drawn from the seed.
        planes: series to acquire, one per plane.
        scene_spacing: voxel size (mm) of the 3D scene the series are resampled from.
        keep_scene: keep the 3D scene (labels, appearance) on the result.
        render_pixels: False leaves every series' pixels and labels empty (its geometry and sequence drawn as
            usual): for a study only ``randomize_study`` renders, which reads the scene and the geometries.
    """
    joint = Joint(joint)
    dr = domain or DomainRandomization()
    module, specs = anatomy_module(joint), registry(joint)
    params = module.sample_params(stream(seed, "anatomy"))
    chosen = _choose_findings(joint, seed, findings)
    finding_rngs = {label: stream(seed, "finding", label) for label in chosen}
    for label in chosen:
        if specs[label].adjust is not None:
            params = specs[label].adjust(params, finding_rngs[label])
    model = module.build(params)
    side, to_world, limb_rotation = _placement(joint, seed, laterality)
    scene = Scene.empty(joint, Grid.covering(*model.bounds, scene_spacing), to_world)
    scene.paint_all(model.paints)
    records = []
    for label in chosen:
        lesion = specs[label].lesion(model, finding_rngs[label])
        scene.paint_all(lesion.paints)
        records.append(Finding(label, lesion.description, lesion.region()))

    study_date = datetime.date(2020, 1, 1) + datetime.timedelta(days=seed % 1800)
    field = float(stream(seed, "scanner").choice(dr.field_strengths))
    centre = (to_world @ np.append(PROTOCOLS[joint].centre, 1.0))[:3]
    bias = render.sample_bias_coeffs(stream(seed, "bias"), dr)
    gt = ground_truth_lut(joint)
    weightings = _weightings(joint, weighting)
    series = []
    for number, plane in enumerate(planes, start=1):
        geometry, sequence, pixels, labels = _acquire(seed, scene, plane, weightings[plane], field, centre,
                                                      limb_rotation, bias, dr, render_pixels)
        description = f"{PLANE_ABBREVIATION[plane]} {sequence.weighting.label}"
        series.append(SyntheticSeries(plane, number, description, _uid(joint, seed, "series", plane.value),
                                      geometry, sequence, pixels, gt[labels]))
    logger.info("synthetic %s study seed=%d side=%s findings=%s", joint.value, seed, side, ",".join(chosen) or "none")
    child = bool(getattr(params, "physes_open", False))
    return SyntheticStudy(joint, seed, side, _patient(joint, seed, params.scale, study_date, child),
                          _uid(joint, seed, "study"), _uid(joint, seed, "frame-of-reference"),
                          study_date.strftime("%Y%m%d"), tuple(records), series, to_world,
                          scene if keep_scene else None)
