"""Inference benchmark: seconds and peak memory per three-plane knee study (3 series of ~24 slices at
320-512 pixels), bundled (reduced) model and the official configuration (random weights, same code path).

    python3 bench/inference.py [--config bundled|official|both] [--model DIR] [--device cpu|cuda] [--threads 2]
                               [--repeats 3]

Goals (issue 6): bundled <= 20 s per study on 2 CPU cores; official <= 1 s per study on an H100.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ortho_node.config import BUNDLED_MODEL  # noqa: E402
from ortho_node.inference.predictor import Predictor  # noqa: E402
from ortho_node.model.system import OrthoModel, new_card, save_system  # noqa: E402
from ortho_node.training.taskdata import assembled_from_synthetic  # noqa: E402
from ortho_node.model.unet import UNetConfig  # noqa: E402
from ortho_node.synthetic import generate_study  # noqa: E402


def model_dir(config: str, scratch: Path, bundled: Path = BUNDLED_MODEL) -> Path:
    if config == "bundled" and (bundled / "model_card.json").exists():
        return bundled
    directory = scratch / config
    save_system(directory, OrthoModel(new_card(UNetConfig.named("official" if config == "official" else "reduced"))))
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", choices=("bundled", "official", "both"), default="bundled")
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL, help="the folder --config bundled measures")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    study = assembled_from_synthetic(generate_study("knee", args.seed))
    shapes = {p.value: v.pixels.shape for p, v in study.planes.items()}
    print(f"study: {shapes}; device {args.device}, {torch.get_num_threads()} threads")
    configs = ("bundled", "official") if args.config == "both" else (args.config,)
    with tempfile.TemporaryDirectory() as scratch:
        for config in configs:
            predictor = Predictor.from_checkpoint(model_dir(config, Path(scratch), args.model), args.device,
                                                  locate=lambda uid: Path(uid))
            predictor.predict(study)  # warm-up
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                predictor.predict(study)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds.append(time.perf_counter() - start)
            peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            gpu = f", GPU peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if args.device.startswith("cuda") else ""
            print(f"{config}: {min(seconds):.2f} s per study (median {sorted(seconds)[len(seconds) // 2]:.2f} s), "
                  f"process peak RSS {peak_rss:.0f} MiB{gpu}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
