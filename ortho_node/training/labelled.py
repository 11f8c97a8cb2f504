"""Labelled studies in the forms departments keep them: a folder of DICOM studies, a CSV of findings per study
(``StudyInstanceUID`` or ``AccessionNumber``, one column per label, 0 / 1 / blank for unknown), and masks as
DICOM-SEG referencing the source series or NIfTI on the source grid (``<SeriesInstanceUID>.nii.gz``).

Studies are read through the node's own catalogue and assembler (:mod:`ortho_node.inference.offline`), so the
planes and series are exactly those serving would choose; every mismatch between the inputs is collected and
raised at once (:class:`LabelledDataError`). Patients are told apart by a hash of PatientID (never logged, never
written); :func:`patient_folds` keeps each patient's studies in one split.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from ortho_node.assembly.study import AssembledStudy, PlaneVolume
from ortho_node.inference.orientation import study_orientations
from ortho_node.labels import DIAGNOSIS_LABELS, KNEE_STRUCTURES, UNLABELLED, Joint, Plane
from ortho_node.model.heads import clinical_from_facts
from ortho_node.model.preprocessing import PreprocessSpec
from ortho_node.training.taskdata import TaskData, _example, _stack

logger = logging.getLogger(__name__)

KEY_COLUMNS = ("StudyInstanceUID", "AccessionNumber")
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class LabelledDataError(ValueError):
    """Every problem found in a labelled data set, one per line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"{len(self.problems)} problem(s) in the labelled data:\n" +
                         "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True)
class StudyFiles:
    """The DICOM files labelled studies are read from, and where they are (for messages): a folder's files
    (:meth:`folder`) or the listed studies of a node's archive (:mod:`ortho_node.training.archive`)."""

    files: tuple[Path, ...]
    where: str

    @classmethod
    def folder(cls, data: Path) -> StudyFiles:
        return cls(tuple(sorted(p for p in Path(data).rglob("*") if p.is_file())), str(data))


@dataclass(frozen=True)
class Acquisition:
    """Header facts the validation report breaks results down by."""

    manufacturer: str
    model: str
    field_strength: str  # e.g. "1.5 T", "unknown"


@dataclass(frozen=True)
class LabelledStudy:
    """One assembled study with its findings (label -> 0 / 1 / None unknown) and masks per plane (label maps
    [slices, rows, cols] on the source series' grid, indices into the knee structures)."""

    study: AssembledStudy
    patient_key: str  # sha256 of PatientID (or of the study when the header has none)
    findings: Mapping[str, int | None]
    masks: Mapping[Plane, np.ndarray] = field(default_factory=dict)
    acquisition: Acquisition = Acquisition("unknown", "unknown", "unknown")
    #: SOP Instance UID -> its file, for the slice references of a prediction's masks (``train evaluate``).
    sources: Mapping[str, Path] = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return self.study.study_instance_uid


# -- the findings CSV -----------------------------------------------------------------------------------------
def read_findings(path: Path, joint: Joint, problems: list[str]) -> tuple[str, dict[str, dict[str, int | None]]]:
    """(key column, key -> {label: 0 / 1 / None}); problems are appended, not raised."""
    labels = DIAGNOSIS_LABELS[joint]
    with Path(path).open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        columns = [c.strip() for c in reader.fieldnames or []]
        keys = [c for c in columns if c in KEY_COLUMNS]
        if len(keys) != 1:
            problems.append(f"{path.name}: needs exactly one of the columns {', '.join(KEY_COLUMNS)}, has "
                            f"{', '.join(columns) or 'none'}")
            return "", {}
        key = keys[0]
        for column in columns:
            if column != key and column not in labels:
                problems.append(f"{path.name}: unknown label column {column!r} (the {joint.value} labels are "
                                f"{', '.join(labels)})")
        rows: dict[str, dict[str, int | None]] = {}
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            value = row.get(key, "")
            if not value:
                problems.append(f"{path.name} line {line}: no {key}")
                continue
            if value in rows:
                problems.append(f"{path.name} line {line}: {key} {value} appears twice")
            rows[value] = {label: _cell(row.get(label, ""), path.name, line, label, problems)
                           for label in labels if label in row}
    return key, rows


def _cell(text: str, name: str, line: int, label: str, problems: list[str]) -> int | None:
    if text == "":
        return None
    if text in ("0", "1"):
        return int(text)
    problems.append(f"{name} line {line} column {label}: {text!r} is not 0, 1 or blank")
    return None


# -- masks ----------------------------------------------------------------------------------------------------
def _series_index(studies: Sequence[AssembledStudy]) -> dict[str, tuple[AssembledStudy, PlaneVolume]]:
    return {v.geometry.series_instance_uid: (s, v) for s in studies for v in s.planes.values()}


def read_seg(path: Path, chosen: Mapping[str, tuple[AssembledStudy, PlaneVolume]], every_series: set[str],
             structures: Sequence[str], problems: list[str]) -> tuple[str, Plane, np.ndarray] | None:
    """A DICOM-SEG's label map on its source series' grid: (study UID, plane, [slices, rows, cols])."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    referenced = {series for _, series, _ in seg.get_source_image_uids()}
    if len(referenced) != 1:
        problems.append(f"{path.name}: references {len(referenced)} series; one SEG per source series")
        return None
    series_uid = referenced.pop()
    if series_uid not in chosen:
        why = ("is in the folder but assembly did not choose it for a plane" if series_uid in every_series
               else "is not in the folder")
        problems.append(f"{path.name}: references series {series_uid}, which {why}")
        return None
    study, volume = chosen[series_uid]
    numbers, structure_of = [], {}
    for segment in seg.SegmentSequence:
        name = str(segment.SegmentLabel).strip().lower()
        if name not in structures or name == structures[0]:
            problems.append(f"{path.name}: segment {segment.SegmentNumber} {segment.SegmentLabel!r} is not a "
                            f"structure the model segments ({', '.join(structures[1:])})")
            continue
        numbers.append(int(segment.SegmentNumber))
        structure_of[int(segment.SegmentNumber)] = structures.index(name)
    if (int(seg.Rows), int(seg.Columns)) != volume.pixels.shape[1:]:
        problems.append(f"{path.name}: mask grid {seg.Rows} x {seg.Columns} does not match series {series_uid} "
                        f"({volume.pixels.shape[1]} x {volume.pixels.shape[2]})")
        return None
    if not numbers:
        return None
    sources = [uid for _, _, uid in seg.get_source_image_uids()]
    order = {uid: k for k, uid in enumerate(volume.geometry.sop_instance_uids)}
    # A source slice the SEG has no frame for was not labelled (sparse labels): unknown, not background.
    labels = np.full(volume.pixels.shape, UNLABELLED, np.uint8)
    covered = [uid for uid in sources if uid in order]
    pixels = seg.get_pixels_by_source_instance(covered, segment_numbers=numbers, combine_segments=True,
                                               relabel=False, skip_overlap_checks=True)
    lookup = np.zeros(max(numbers) + 1, np.uint8)
    for number, index in structure_of.items():
        lookup[number] = index
    for k, uid in enumerate(covered):
        labels[order[uid]] = lookup[pixels[k]]
    return study.study_instance_uid, volume.plane, labels


def read_nifti_mask(path: Path, chosen: Mapping[str, tuple[AssembledStudy, PlaneVolume]], classes: int,
                    problems: list[str]) -> tuple[str, Plane, np.ndarray] | None:
    """``<SeriesInstanceUID>.nii.gz`` on that series' grid (voxel order column, row, slice, as ``infer`` writes)."""
    series_uid = path.name.removesuffix(".gz").removesuffix(".nii")
    if series_uid not in chosen:
        problems.append(f"{path.name}: no assembled series {series_uid} in the folder")
        return None
    study, volume = chosen[series_uid]
    image = nib.load(path)
    labels = np.transpose(np.asarray(image.dataobj), (2, 1, 0))
    expected = LPS_TO_RAS @ volume.geometry.affine[:, [2, 1, 0, 3]]
    if labels.shape != volume.pixels.shape or not np.allclose(image.affine, expected, atol=1e-3):
        problems.append(f"{path.name}: mask grid {tuple(labels.shape)} (slices, rows, columns) with its affine "
                        f"does not match series {series_uid} {tuple(volume.pixels.shape)}")
        return None
    whole = np.all(np.equal(np.mod(labels, 1), 0))
    if not whole or labels.min() < 0 or np.any((labels >= classes) & (labels != UNLABELLED)):
        problems.append(f"{path.name}: labels must be whole numbers 0..{classes - 1} ({UNLABELLED}: not labelled)")
        return None
    return study.study_instance_uid, volume.plane, labels.astype(np.uint8)


# -- the folder -----------------------------------------------------------------------------------------------
def _header_facts(files: Sequence[Path]) -> tuple[str, str, Acquisition]:
    """(patient key, accession number, acquisition) from the first readable image header."""
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    patient = str(ds.get("PatientID", "") or "")
    key = hashlib.sha256(f"ortho-node patient:{patient or ds.StudyInstanceUID}".encode()).hexdigest()[:16]
    strength = ds.get("MagneticFieldStrength")
    acquisition = Acquisition(str(ds.get("Manufacturer", "") or "unknown"),
                              str(ds.get("ManufacturerModelName", "") or "unknown"),
                              f"{float(strength):g} T" if strength not in (None, "") else "unknown")
    return key, str(ds.get("AccessionNumber", "") or ""), acquisition


def read_labelled(data: Path | StudyFiles, labels_csv: Path, joint: Joint, *, masks: Path | None = None,
                  structures: Sequence[str] = KNEE_STRUCTURES) -> list[LabelledStudy]:
    """Every study of ``data`` (a folder, or :class:`StudyFiles`) with its CSV findings and masks;
    :class:`LabelledDataError` lists every problem."""
    from sqlalchemy import select

    from ortho_node.db.models import Instance, Series, Study
    from ortho_node.inference.offline import assemble, catalogue

    problems: list[str] = []
    key_column, rows = read_findings(labels_csv, joint, problems)
    source = data if isinstance(data, StudyFiles) else StudyFiles.folder(data)
    files = list(source.files)
    with tempfile.TemporaryDirectory(prefix="ortho-labelled-") as scratch:
        session_factory, counts = catalogue(files, Path(scratch) / "catalog.sqlite")
        with session_factory() as session:
            paths: dict[str, dict[str, Path]] = {}
            for study_uid, sop_uid, path in session.execute(
                    select(Study.study_instance_uid, Instance.sop_instance_uid, Instance.file_path)
                    .join(Series, Series.study_id == Study.id).join(Instance, Instance.series_id == Series.id)):
                paths.setdefault(study_uid, {})[sop_uid] = Path(path)
            every_series = set(session.scalars(select(Series.series_instance_uid)))
        assembled = [assemble(session_factory, uid) for uid in sorted(counts)]
    studies = []
    for study in assembled:
        if study.skipped or study.joint is not joint:
            problems.append(f"study {study.study_instance_uid}: assembled as {study.joint.value}"
                            f"{' (skipped: ' + str(study.skip_reason) + ')' if study.skipped else ''}, "
                            f"not a {joint.value} study")
            continue
        patient, accession, acquisition = _header_facts(sorted(paths[study.study_instance_uid].values()))
        key = study.study_instance_uid if key_column == "StudyInstanceUID" else accession
        studies.append((study, patient, key, acquisition))
    found = {key for _, _, key, _ in studies}
    problems += [f"{labels_csv.name}: {key_column} {key} is not a study in {source.where}" for key in rows if key not in found]
    mask_maps = _read_masks(masks, [s for s, *_ in studies], every_series, structures, problems)
    labelled = []
    for study, patient, key, acquisition in studies:
        study_masks = mask_maps.get(study.study_instance_uid, {})
        if key not in rows and not study_masks:
            problems.append(f"study {study.study_instance_uid}: neither a row in {labels_csv.name} nor a mask")
            continue
        findings = rows.get(key, {})
        labelled.append(LabelledStudy(study, patient, {label: findings.get(label) for label in DIAGNOSIS_LABELS[joint]},
                                      study_masks, acquisition, paths[study.study_instance_uid]))
    if problems:
        raise LabelledDataError(problems)
    logger.info("%d labelled %s studies read from %s", len(labelled), joint.value, source.where)
    return labelled


def _read_masks(masks: Path | None, studies: Sequence[AssembledStudy], every_series: set[str],
                structures: Sequence[str], problems: list[str]) -> dict[str, dict[Plane, np.ndarray]]:
    if masks is None:
        return {}
    chosen = _series_index(studies)
    found: dict[str, dict[Plane, np.ndarray]] = {}
    for path in sorted(p for p in Path(masks).rglob("*") if p.is_file()):
        if path.name.endswith((".nii", ".nii.gz")):
            read = read_nifti_mask(path, chosen, len(structures), problems)
        else:
            try:
                sop_class = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
                                .get("SOPClassUID", ""))
            except (pydicom.errors.InvalidDicomError, OSError) as error:
                problems.append(f"{path.name}: neither NIfTI nor DICOM ({error})")
                continue
            if sop_class != SEG_SOP_CLASS:
                problems.append(f"{path.name}: a DICOM object but not a Segmentation (SOP Class {sop_class})")
                continue
            read = read_seg(path, chosen, every_series, structures, problems)
        if read is not None:
            study_uid, plane, labels = read
            if plane in found.setdefault(study_uid, {}):
                problems.append(f"{path.name}: a second mask for the {plane.value} series of study {study_uid}")
            found[study_uid][plane] = labels
    return found


# -- splits and tensors ---------------------------------------------------------------------------------------
def patient_folds(studies: Sequence[LabelledStudy], folds: int, seed: int) -> list[np.ndarray]:
    """Study indices of ``folds`` groups, every patient's studies in one group (patients shuffled by ``seed``,
    then dealt to the group with the fewest studies so far)."""
    patients = sorted({s.patient_key for s in studies})
    if folds < 2 or folds > len(patients):
        raise ValueError(f"{folds} folds need at least 2 and at most {len(patients)} (the number of patients)")
    order = np.random.default_rng(seed).permutation(len(patients))
    groups: list[list[int]] = [[] for _ in range(folds)]
    for p in order:
        smallest = min(range(folds), key=lambda g: len(groups[g]))
        groups[smallest] += [k for k, s in enumerate(studies) if s.patient_key == patients[p]]
    return [np.array(sorted(g), dtype=np.int64) for g in groups]


def patient_split(studies: Sequence[LabelledStudy], val_fraction: float, seed: int, *,
                  fold: int | None = None, folds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) study indices with no patient in both: fold ``fold`` of ``folds`` as validation,
    or about ``val_fraction`` of the patients."""
    count = folds if folds is not None else max(2, round(1 / val_fraction)) if val_fraction > 0 else 0
    if count == 0:
        return np.arange(len(studies)), np.array([], dtype=np.int64)
    groups = patient_folds(studies, count, seed)
    chosen = 0 if fold is None else fold
    if not 0 <= chosen < count:
        raise ValueError(f"--fold must be in 0..{count - 1}, got {chosen}")
    train = np.sort(np.concatenate([g for k, g in enumerate(groups) if k != chosen]))
    return train, groups[chosen]


def task_data(studies: Sequence[LabelledStudy], joint: Joint, spec: PreprocessSpec, *,
              segmentation: bool) -> TaskData:
    """The studies on the model grid, as serving preprocesses them (unknown findings NaN; for ``segmentation``
    only the planes with a mask). Voxels nobody labelled keep :data:`~ortho_node.labels.UNLABELLED`: the
    segmentation loss leaves them out."""
    examples = []
    for s in studies:
        # Segmentation learns only from planes that have a mask: an unmasked plane is not all background.
        planes = [p for p in s.study.planes if not segmentation or p in s.masks]
        volumes = {p: s.study.planes[p].pixels for p in planes}
        spacings = {p: s.study.planes[p].geometry.pixel_spacing for p in planes}
        labels = {p: s.masks[p] for p in planes} if segmentation else None
        findings = {label: math.nan if value is None else value for label, value in s.findings.items()}
        examples.append(_example(joint, s.uid, volumes, labels, findings, clinical_from_facts(s.study.clinical), spec,
                                 spacings, study_orientations(s.study, spec.orientation)))
    return _stack(joint, examples)
