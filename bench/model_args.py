"""What the benchmarks of a trained model share: its folder and thread arguments, and a CPU predictor of it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ortho_node.config import BUNDLED_MODEL
from ortho_node.inference.predictor import Predictor


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    parser.add_argument("--threads", type=int, default=2)


def start(args: argparse.Namespace) -> None:
    """Quiet logging and the requested torch threads."""
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)


def cpu_predictor(args: argparse.Namespace) -> Predictor:
    """:func:`start`, then the model on the CPU (mask slice references name their UIDs: no files here)."""
    start(args)
    return Predictor.from_checkpoint(args.model, "cpu", locate=lambda uid: Path(uid))
