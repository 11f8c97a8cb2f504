"""``ortho-node train evaluate MODEL --data DIR --labels CSV [--masks DIR] --out REPORT_DIR [--write-card]``:
a task model run on a department's labelled studies, its validation report written
(:mod:`~ortho_node.training.evaluation` for the figures, :mod:`~ortho_node.training.evaluation_report` for the
page); with ``--write-card`` a copy of the model whose card holds the figures (``<out>/model``)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
from pathlib import Path

from ortho_node.clock import utcnow
from ortho_node.labels import DIAGNOSIS_LABELS, MODEL_JOINTS, Joint
from ortho_node.model.runtime import DeviceChoice
from ortho_node.training import archive

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_USAGE = 0, 2
CARD_COPY = "model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL", help="task model folder (model_card.json + weights)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="folder of DICOM studies")
    archive.add_arguments(parser, source)
    parser.add_argument("--labels", required=True, type=Path, help="findings CSV (StudyInstanceUID or "
                                                                   "AccessionNumber, one column per label, 0/1/blank)")
    parser.add_argument("--masks", type=Path, help="DICOM-SEG files or <SeriesInstanceUID>.nii.gz masks")
    parser.add_argument("--out", required=True, type=Path, help="folder for report.html and report.json")
    parser.add_argument("--joint", choices=[j.value for j in MODEL_JOINTS],
                        help="the studies' joint (default: the one whose labels the CSV's columns name)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    parser.add_argument("--device", choices=[d.value for d in DeviceChoice], default=DeviceChoice.AUTO.value)
    parser.add_argument("--write-card", action="store_true",
                        help=f"also write <out>/{CARD_COPY}: a copy of the model whose card's metrics hold the figures")


def joint_of_csv(path: Path) -> Joint:
    """The joint whose labels the CSV's header names (knee when it names none: read_labelled then says so)."""
    with Path(path).open(newline="", encoding="utf-8-sig") as stream:
        columns = {c.strip() for c in next(csv.reader(stream), [])}
    for joint in MODEL_JOINTS:
        if columns & set(DIAGNOSIS_LABELS[joint]):
            return joint
    return Joint.KNEE


def write_card_copy(model_dir: Path, target: Path, figures: dict) -> Path:
    """``target``: the model's weights with a card whose metrics add the report's figures (``evaluation/...``);
    written by the one card saver, so the copy verifies and imports like any model folder."""
    from ortho_node.model.system import load_system, save_system
    from ortho_node.training.evaluation import card_metrics

    model = load_system(model_dir)
    card = dataclasses.replace(model.card, metrics={**model.card.metrics, **card_metrics(figures)})
    save_system(target, model, card)
    return target


def run(args: argparse.Namespace) -> int:
    from ortho_node.inference.predictor import Predictor
    from ortho_node.training.evaluation import evaluation, predict_studies
    from ortho_node.training.evaluation_report import write_report
    from ortho_node.training.labelled import LabelledDataError, read_labelled

    joint = Joint(args.joint) if args.joint else joint_of_csv(args.labels)
    try:
        predictor = Predictor.from_checkpoint(args.model, args.device)
        if joint not in predictor.card.diagnosis:
            raise ValueError(f"model {predictor.card.name} {predictor.card.version} has no {joint.value} head")
        source = args.data if args.archive is None else archive.archive_files(args)
        studies = read_labelled(source, args.labels, joint, masks=args.masks,
                                structures=predictor.card.structures)
    except LabelledDataError as error:
        logger.error("nothing evaluated: %s", error)
        return EXIT_USAGE
    except (OSError, ValueError) as error:  # model folder unusable (CheckpointError is a ValueError), CSV unreadable
        logger.error("nothing evaluated: %s", error)
        return EXIT_USAGE
    records, failed = predict_studies(predictor, studies, joint)
    figures = evaluation(records, predictor.card, joint, seed=args.seed)
    card = predictor.card
    about = {"model": {"name": card.name, "version": card.version, "weights_sha256": card.weights_sha256},
             "data": {"studies": len(studies), "patients": len({s.patient_key for s in studies}),
                      "masked_studies": sum(1 for s in studies if s.masks), "not_analysed": failed},
             "evaluated_at": utcnow().isoformat(timespec="seconds"),
             "command": f"ortho-node train evaluate {args.model.name} "
                        f"{f'--data {args.data.name}' if args.data else f'--archive {args.archive.name}'} "
                        f"--labels {args.labels.name}" + (f" --masks {args.masks.name}" if args.masks else "")}
    html, json_path = write_report(args.out, records, figures, about)
    logger.info("validation report of %d studies written: %s, %s", len(records), html, json_path)
    if args.write_card:
        copy = write_card_copy(args.model, args.out / CARD_COPY, figures)
        logger.info("model copy with the figures in its card written to %s", copy)
    return EXIT_OK
