"""Quality benchmark: the bundled model on held-out synthetic studies, through the real predictor, with
masks compared on each source series' own grid.

    python3 bench/quality.py [--model ortho_node/bundled] [--knee 20] [--ankle 20] [--shoulder 20] [--threads 2]
                             [--first-seed 900000]

Prints mean Dice per knee structure and over bones / cartilage, menisci and cruciate ligaments, and AUC per
diagnosis label with the macro AUC per joint. Goals (issue 6): bones >= 0.85, soft structures >= 0.70,
macro AUC >= 0.90 per joint. Seeds start at 900000 by default, far from every training and validation seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.model_args import add_model_arguments, cpu_predictor  # noqa: E402
from ortho_node.labels import DIAGNOSIS_LABELS, KNEE_STRUCTURES, Joint  # noqa: E402
from ortho_node.training.scores import mean_dice, nanmean, roc_auc  # noqa: E402
from ortho_node.training.taskdata import assembled_from_synthetic  # noqa: E402
from ortho_node.synthetic import generate_study  # noqa: E402

BONES = ("femur", "tibia", "fibula", "patella")
FIRST_SEED = 900_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--knee", type=int, default=20)
    parser.add_argument("--ankle", type=int, default=20)
    parser.add_argument("--shoulder", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED,
                        help="another set of held-out studies (e.g. 950000: seeds no choice was tuned on)")
    args = parser.parse_args(argv)
    predictor = cpu_predictor(args)
    print(f"model {predictor.card.name} {predictor.card.version}; seeds from {args.first_seed}")
    for joint, count in ((Joint.KNEE, args.knee), (Joint.ANKLE, args.ankle), (Joint.SHOULDER, args.shoulder)):
        if count <= 0:
            continue
        pairs, scores, truth = [], [], []
        for seed in range(args.first_seed, args.first_seed + count):
            generated = generate_study(joint, seed, findings="random", scene_spacing=1.0)
            prediction = predictor.predict(assembled_from_synthetic(generated))
            scores.append([f.probability for f in prediction.findings])
            truth.append([generated.diagnosis[label] for label in DIAGNOSIS_LABELS[joint]])
            pairs += [(s.mask, generated.series_for(s.plane).labels) for s in prediction.segmentations
                      if len(s.structures) > 1]  # ankle and shoulder series carry empty maps, no masks
        scores_a, truth_a = np.array(scores), np.array(truth)
        aucs = {label: roc_auc(scores_a[:, k], truth_a[:, k]) for k, label in enumerate(DIAGNOSIS_LABELS[joint])}
        print(f"\n{joint.value}: {count} held-out studies; macro AUC {nanmean(aucs.values()):.3f}")
        print("  " + "  ".join(f"{label} {auc:.3f}" for label, auc in aucs.items()))
        if pairs:
            dice = dict(zip(KNEE_STRUCTURES[1:], mean_dice(pairs, len(KNEE_STRUCTURES))))
            bones = nanmean(dice[name] for name in BONES)
            soft = nanmean(v for name, v in dice.items() if name not in BONES)
            print(f"  Dice on the source grid ({len(pairs)} series): bones {bones:.3f}, cartilage/menisci/"
                  f"cruciates {soft:.3f}")
            print("  " + "  ".join(f"{name} {v:.3f}" for name, v in dice.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
