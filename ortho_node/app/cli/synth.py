"""``ortho-node synth``: generate N synthetic studies of one joint with their labels CSV."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ortho_node.labels import DIAGNOSIS_LABELS, MODEL_JOINTS, Joint
from ortho_node.synthetic.export import OutputFormat, label_row, write_labels_csv, write_study
from ortho_node.synthetic.generator import generate_study

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--joint", required=True, choices=[joint.value for joint in MODEL_JOINTS])
    parser.add_argument("--n", type=int, default=1, help="number of studies (seeds S, S+1, ...)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first study")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--findings", default="random",
                        help="'random', 'none', or a comma-separated list of diagnosis labels (e.g. ACL,MM)")
    parser.add_argument("--format", default=OutputFormat.BOTH.value, choices=[f.value for f in OutputFormat])
    parser.add_argument("--scene-spacing", type=float, default=0.6, help="3D scene voxel size in mm")


def _findings(text: str, joint: Joint) -> list[str] | str | None:
    if text == "random":
        return "random"
    if text in ("", "none"):
        return None
    labels = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = sorted(set(labels) - set(DIAGNOSIS_LABELS[joint]))
    if unknown:
        raise ValueError(f"unknown {joint.value} findings {unknown}; choose from {','.join(DIAGNOSIS_LABELS[joint])}")
    return labels


def run(args: argparse.Namespace) -> int:
    joint = Joint(args.joint)
    if args.n < 1:
        logger.error("--n must be at least 1")
        return 2
    try:
        findings = _findings(args.findings, joint)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    rows = []
    for seed in range(args.seed, args.seed + args.n):
        study = generate_study(joint, seed, findings=findings, scene_spacing=args.scene_spacing)
        write_study(study, args.out, args.format)
        rows.append(label_row(study))
    path = write_labels_csv(rows, joint, args.out / "labels.csv")
    logger.info("wrote %d %s studies and %s", len(rows), joint.value, path)
    return 0

