"""``ortho-node infer DICOM_DIR --out DIR``: assembly + prediction on files, without a running node.

The files are catalogued in a throw-away SQLite database (the node's own schema and assembler, so the
choice of series is exactly the node's), the study is assembled and predicted, and DIR receives
``<plane>_mask.nii.gz`` per segmented series (on the source grid, NIfTI voxel order column, row, slice),
``findings.json`` and, with ``--dicom-results``, the DICOM result objects of ``reports.results``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import torch

from ortho_node.assembly.study import AssembledStudy
from ortho_node.inference.predictor import PredictionError, PredictionOutcome, Predictor
from ortho_node.prediction import StudyPrediction

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "bundled"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dicom_dir", type=Path, help="folder holding one study's DICOM files (searched recursively)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="task model folder (default: bundled)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--study", help="StudyInstanceUID to analyse when the folder holds several")
    parser.add_argument("--dicom-results", action="store_true", help="also write SEG/SR/summary objects")


def catalogue(files: list[Path], database: Path) -> tuple[object, Counter]:
    """Record every readable DICOM file in a fresh SQLite catalog; returns (session factory, studies)."""
    from ortho_node.intake.catalog import Catalog, NewInstance
    from ortho_node.db import migrations
    from ortho_node.db.engine import make_engine, make_session_factory
    from ortho_node.intake.header import InstanceHeader

    engine = make_engine(f"sqlite:///{database}")
    migrations.upgrade(engine)
    catalog, studies = Catalog(engine), Counter()
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError) as error:
            logger.info("skipping %s: %s", path, error)
            continue
        header = InstanceHeader.from_dataset(ds)
        if not (header.sop_uid and header.study_uid and header.series_uid):
            logger.info("skipping %s: no SOP, study or series UID", path)
            continue
        syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", "1.2.840.10008.1.2.1"))
        catalog.record(NewInstance(header, path=str(path.resolve()), size=path.stat().st_size, sha256="",
                                   transfer_syntax_uid=syntax, association_id=None, calling_ae=None))
        studies[header.study_uid] += 1
    return make_session_factory(engine), studies


def assemble(session_factory, study_uid: str) -> AssembledStudy:
    from ortho_node.assembly.assembler import Assembler
    from ortho_node.assembly.plan import AssemblyRules
    from ortho_node.config import Settings

    rules = AssemblyRules.from_settings(Settings().assembly)
    return Assembler(session_factory, Path, rules).assemble(study_uid, "offline: every file of the folder")


def write_outputs(out: Path, study: AssembledStudy, outcome: PredictionOutcome) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    prediction = outcome.prediction
    written = []
    for segmentation in prediction.segmentations:
        volume = study.planes[segmentation.plane]
        affine = LPS_TO_RAS @ volume.geometry.affine[:, [2, 1, 0, 3]]  # (col, row, slice) -> RAS
        image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(segmentation.mask, (2, 1, 0))), affine)
        path = out / f"{segmentation.plane.value}_mask.nii.gz"
        nib.save(image, path)
        written.append(path)
    path = out / "findings.json"
    path.write_text(json.dumps(findings_document(prediction, outcome), indent=2) + "\n", encoding="utf-8")
    return [*written, path]


def findings_document(prediction: StudyPrediction, outcome: PredictionOutcome) -> dict:
    return {
        "study_instance_uid": prediction.study_instance_uid, "joint": prediction.joint.value,
        "laterality": prediction.laterality,
        "model": {"name": prediction.model.name, "version": prediction.model.version,
                  "intended_use": prediction.model.card.get("intended_use", "")},
        "findings": [f.figures() for f in prediction.findings],
        "segmentations": [{"plane": s.plane.value, "series_instance_uid": s.series_instance_uid,
                           "shape": list(s.mask.shape), "structures": list(s.structures),
                           "voxels": {s.structures[k]: int(c) for k, c in enumerate(np.bincount(s.mask.ravel()))
                                      if c and k}} for s in prediction.segmentations],
        "analysed_planes": [p.value for p in outcome.analysed_planes],
        "skipped_planes": {p.value: reason for p, reason in outcome.skipped_planes.items()},
        "seconds": round(outcome.seconds, 3),
    }


def run(args: argparse.Namespace, *,
        write_dicom_results: Callable[[Path, StudyPrediction], None] | None = None) -> int:
    """``write_dicom_results`` (given by the CLI, which may import ``reports``) writes the result objects."""
    if args.threads:
        torch.set_num_threads(args.threads)
    files = sorted(p for p in Path(args.dicom_dir).rglob("*") if p.is_file())
    if not files:
        logger.error("no files under %s", args.dicom_dir)
        return EXIT_USAGE
    with tempfile.TemporaryDirectory(prefix="ortho-infer-") as scratch:
        session_factory, studies = catalogue(files, Path(scratch) / "catalog.sqlite")
        if not studies:
            logger.error("no DICOM instances under %s", args.dicom_dir)
            return EXIT_USAGE
        study_uid = args.study or (next(iter(studies)) if len(studies) == 1 else None)
        if study_uid is None or study_uid not in studies:
            logger.error("%s holds studies %s: choose one with --study", args.dicom_dir, sorted(studies))
            return EXIT_USAGE
        study = assemble(session_factory, study_uid)
        paths = {}
        from sqlalchemy import select

        from ortho_node.db.models import Instance

        with session_factory() as session:
            paths = {uid: path for uid, path in session.execute(select(Instance.sop_instance_uid, Instance.file_path))}
    try:
        predictor = Predictor.from_checkpoint(args.model, args.device, locate=lambda uid: Path(paths[uid]))
        outcome = predictor.analyse(study)
    except PredictionError as error:
        logger.error("study %s not analysed: %s", study_uid, error)
        return EXIT_FAILED
    written = write_outputs(args.out, study, outcome)
    if args.dicom_results:
        if write_dicom_results is None:
            logger.error("--dicom-results needs the result-object writer of the command line")
            return EXIT_USAGE
        write_dicom_results(args.out, outcome.prediction)
    logger.info("study %s: %d files written to %s", study_uid, len(written), args.out)
    return EXIT_OK
