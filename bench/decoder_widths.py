"""Segmentation decoder widths on frozen backbones: fresh decoders of each width, trained with the bundle's
refinement recipe on the bundled model's backbones, and their validation Dice (model grid).

    python3 bench/decoder_widths.py [--widths 32-16-8-8,32-32-16-16] [--epochs 20] [--model DIR]

A cheap way to compare decoder widths before a full retrain: the backbones and the data (the bundle's 160
training knees, its 128/32 split) stay fixed, only the decoder changes. Prints Dice per structure, seconds
per epoch and parameter count per width.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.model_args import add_model_arguments, start  # noqa: E402
from ortho_node.labels import Joint  # noqa: E402
from ortho_node.training.bundle import DECODER_LR, PROFILES  # noqa: E402
from ortho_node.training.finetune import FinetuneSettings, Task, split, train_task  # noqa: E402
from ortho_node.model.system import OrthoModel, load_system  # noqa: E402
from ortho_node.training.taskdata import generate_task_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="32-16-8-8,32-32-16-16", help="comma-separated, stages joined by -")
    parser.add_argument("--epochs", type=int, default=20)
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    start(args)
    base = load_system(args.model)
    # The bundle's knee training seeds (data seed 0), so that the backbones have seen these studies.
    data = generate_task_data(Joint.KNEE, range(PROFILES["full"].knee), base.card.preprocessing, workers=2)
    train_index, val_index = split(len(data), 0.2, 1.0, 0)
    train, val = data.subset(train_index), data.subset(val_index)
    frozen = {k: v for k, v in base.state_dict().items() if not k.startswith("segmentation.")}
    for arm in args.widths.split(","):
        widths = tuple(int(w) for w in arm.split("-"))
        torch.manual_seed(0)
        model = OrthoModel(dataclasses.replace(base.card, segmentation_widths=widths))
        model.load_state_dict(frozen, strict=False)  # every decoder weight starts fresh
        settings = FinetuneSettings(epochs=args.epochs, patience=args.epochs,
                                    lr=DECODER_LR, backbone_lr_factor=0.0, balance_classes=True, device="cpu")
        started = time.perf_counter()
        result = train_task(model, Task.KNEE_SEG, train, val, settings)
        per_epoch = (time.perf_counter() - started) / args.epochs
        params = sum(p.numel() for p in model.segmentation.parameters())
        dice = " ".join(f"{k.removeprefix('dice/')[:10]} {v:.2f}" for k, v in result.metrics.items()
                        if k.startswith("dice/"))
        print(f"widths {arm:<12} Dice {result.score:.3f} (epoch {result.epoch}), {per_epoch:.0f} s/epoch, "
              f"{params} decoder parameters | {dice}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
