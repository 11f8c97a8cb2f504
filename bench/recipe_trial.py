"""A mid-sized bundled model of today's recipe or of the randomised one (issue 21), for bench/real_knee.py.

    python3 bench/recipe_trial.py realistic|randomised --out DIR [--workers 2]
    python3 bench/real_knee.py --model DIR

Both recipes share every size (48 knee studies, 150 pretraining steps a plane, 10 joint and 10 decoder epochs,
one noise draw: about 20 minutes on 2 cores); ``randomised`` adds half the training studies as randomised
renders, percentile normalisation and a 150 mm crop around the joint. A quick look at the direction of the
next retrain, not a model to ship.
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
    return {"realistic": base,
            "randomised": dataclasses.replace(base, randomized_ratio=0.5, normalisation=Normalisation.PERCENTILE,
                                              crop_mm=150.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", choices=sorted(recipes()))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2, help="processes rendering the studies")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    bundle.PROFILES["trial"] = recipes()[args.recipe]
    started = time.perf_counter()
    bundle.build_bundle(args.out, "trial", 0, 0, torch.device("cpu"), f"bench/recipe_trial.py {args.recipe}",
                        workers=args.workers)
    print(f"{args.recipe}: written to {args.out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":  # the rendering pool spawns processes that import this file
    raise SystemExit(main())
