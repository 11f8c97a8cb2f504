"""Small bundled models of a training recipe (issue 21), for bench/real_knee.py: a look at a recipe's direction
on the real knee in about an hour, not a model to ship.

    python3 bench/recipe_trial.py realistic|randomised|full-scaled --out DIR [--workers 2] [--snapshots SNAP]
    python3 bench/real_knee.py --model DIR      # or --model SNAP/finetune-epoch-NNN

``realistic`` and ``randomised`` share every size (48 knee studies, 150 pretraining steps a plane, 10 joint and
10 decoder epochs, one noise draw: about 20 minutes on 2 cores); ``randomised`` adds half the training studies
as randomised renders, percentile normalisation and a 150 mm crop around the joint. ``full-scaled`` is the
``full`` profile's recipe as it stands (randomised share, PD without fat suppression, crop, canonical
orientation, decoder widths, noise draws) at a smaller size: 60 knee and 12 ankle and shoulder studies, 200
pretraining steps a plane, 20 joint and 8 decoder epochs (about 70 minutes on 2 cores). Its
ankle and shoulder validation splits hold 2-3 studies, so the joint phase's best mean validation epoch is
noise: compare recipes on the ``--snapshots`` of the same joint epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ortho_node.model.preprocessing import Normalisation  # noqa: E402
from ortho_node.training import bundle  # noqa: E402


def recipes() -> dict[str, bundle.Profile]:
    base = dataclasses.replace(bundle.PROFILES["quick"], knee=48, ankle=6, shoulder=6, test=6, pretrain_steps=150,
                               epochs=10, patience=4, decoder_epochs=10, decoder_patience=4, evidence=6,
                               segmentation_draws=1, decoder_widths=(32, 32, 16, 16))
    scaled = dataclasses.replace(bundle.PROFILES["full"], knee=60, ankle=12, shoulder=12, test=6, pretrain_steps=200,
                                 epochs=20, patience=20, decoder_epochs=8, decoder_patience=8, evidence=8)
    return {"realistic": base,
            "randomised": dataclasses.replace(base, randomized_ratio=0.5, normalisation=Normalisation.PERCENTILE,
                                              crop_mm=150.0),
            "full-scaled": scaled}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", choices=sorted(recipes()))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2, help="processes rendering the studies")
    parser.add_argument("--snapshots", type=Path, default=None, help="folder for the model after every epoch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    bundle.PROFILES["trial"] = recipes()[args.recipe]
    started = time.perf_counter()
    bundle.build_bundle(args.out, "trial", 0, 0, torch.device("cpu"), f"bench/recipe_trial.py {args.recipe}",
                        workers=args.workers, snapshots=args.snapshots)
    print(f"{args.recipe}: written to {args.out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":  # the rendering pool spawns processes that import this file
    raise SystemExit(main())
