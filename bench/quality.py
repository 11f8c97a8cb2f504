"""Quality benchmark: the bundled model on held-out synthetic studies, through the real predictor, with
masks compared on each source series' own grid, and a contrast sweep of the knee.

    python3 bench/quality.py [--model ortho_node/bundled] [--knee 20] [--ankle 20] [--shoulder 20] [--threads 2]
                             [--first-seed 900000] [--contrasts protocol,T1,T2,DESS,randomised]

The same held-out knee seeds are rendered once per contrast (``ortho_node.synthetic.StudyContrast``): the knee
protocol's own (PD FS, as the model was trained), T1 and T2 without fat suppression and a DESS with water
excitation on every plane (presets no protocol uses), and the SynthSeg-style randomised render. Per contrast it
prints mean Dice per knee structure, over bones and over cartilage, menisci and cruciate ligaments, and AUC per
diagnosis label with the macro AUC; at the end one row per contrast beside the goals. Ankle and shoulder are
scored on their protocol only.

Goals: issue 6 (protocol): bones >= 0.85, soft structures >= 0.70, macro AUC >= 0.90 per joint; issue 21 (every
contrast): bones >= 0.85, soft >= 0.65, macro AUC within 0.05 of the protocol's. Seeds start at 900000 by default,
far from every training and validation seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.model_args import add_model_arguments, cpu_predictor  # noqa: E402
from ortho_node.inference.predictor import Predictor  # noqa: E402
from ortho_node.labels import DIAGNOSIS_LABELS, KNEE_STRUCTURES, Joint  # noqa: E402
from ortho_node.synthetic import StudyContrast, generate_contrast_study  # noqa: E402
from ortho_node.training.scores import mean_dice, nanmean, roc_auc  # noqa: E402
from ortho_node.training.taskdata import assembled_from_synthetic  # noqa: E402

BONES = ("femur", "tibia", "fibula", "patella")
FIRST_SEED = 900_000
#: Issue 21's goals for every contrast: bones and soft-structure Dice, macro AUC drop from the protocol's.
GOAL_BONES, GOAL_SOFT, GOAL_AUC_DROP = 0.85, 0.65, 0.05


@dataclasses.dataclass(frozen=True)
class Scores:
    """One joint and contrast: AUC per diagnosis label and (knee) Dice per structure on the source grid."""

    aucs: dict[str, float]
    dice: dict[str, float]
    series: int

    @property
    def macro_auc(self) -> float:
        return nanmean(self.aucs.values())

    @property
    def bones(self) -> float:
        return nanmean(self.dice[name] for name in BONES) if self.dice else math.nan

    @property
    def soft(self) -> float:
        """Cartilage, menisci and cruciate ligaments."""
        return nanmean(v for name, v in self.dice.items() if name not in BONES) if self.dice else math.nan


def score(predictor: Predictor, joint: Joint, seeds: range, contrast: StudyContrast) -> Scores:
    pairs, scores, truth = [], [], []
    for seed in seeds:
        generated = generate_contrast_study(joint, seed, contrast, findings="random", scene_spacing=1.0)
        prediction = predictor.predict(assembled_from_synthetic(generated))
        scores.append([f.probability for f in prediction.findings])
        truth.append([generated.diagnosis[label] for label in DIAGNOSIS_LABELS[joint]])
        pairs += [(s.mask, generated.series_for(s.plane).labels) for s in prediction.segmentations
                  if len(s.structures) > 1]  # ankle and shoulder series carry empty maps, no masks
    scores_a, truth_a = np.array(scores), np.array(truth)
    aucs = {label: roc_auc(scores_a[:, k], truth_a[:, k]) for k, label in enumerate(DIAGNOSIS_LABELS[joint])}
    dice = dict(zip(KNEE_STRUCTURES[1:], mean_dice(pairs, len(KNEE_STRUCTURES)))) if pairs else {}
    return Scores(aucs, {name: float(v) for name, v in dice.items()}, len(pairs))


def report(joint: Joint, count: int, contrast: StudyContrast, result: Scores) -> None:
    print(f"\n{joint.value}, {contrast.label}: {count} held-out studies; macro AUC {result.macro_auc:.3f}")
    print("  " + "  ".join(f"{label} {auc:.3f}" for label, auc in result.aucs.items()))
    if result.dice:
        print(f"  Dice on the source grid ({result.series} series): bones {result.bones:.3f}, cartilage/menisci/"
              f"cruciates {result.soft:.3f}")
        print("  " + "  ".join(f"{name} {v:.3f}" for name, v in result.dice.items()))


def _mark(ok: bool) -> str:
    return " " if ok else "*"


def sweep_table(results: dict[StudyContrast, Scores]) -> list[str]:
    """One row per contrast: bones, soft, macro AUC and its change from the protocol's; '*' misses a goal."""
    reference = results.get(StudyContrast.PROTOCOL)
    lines = [f"knee contrast sweep (goals: bones >= {GOAL_BONES}, soft >= {GOAL_SOFT}, macro AUC within "
             f"{GOAL_AUC_DROP} of the protocol's; * misses)",
             f"  {'contrast':<11} {'bones':>7} {'soft':>7} {'macro AUC':>10} {'delta AUC':>10}"]
    for contrast, result in results.items():
        if reference is None or contrast is StudyContrast.PROTOCOL:
            delta = "-"
        else:
            change = result.macro_auc - reference.macro_auc
            delta = f"{change:+.3f}{_mark(not change < -GOAL_AUC_DROP)}"
        lines.append(f"  {contrast.label:<11} {result.bones:6.3f}{_mark(result.bones >= GOAL_BONES)} "
                     f"{result.soft:6.3f}{_mark(result.soft >= GOAL_SOFT)} {result.macro_auc:9.3f}  {delta:>10}")
    return lines


def parse_contrasts(text: str) -> list[StudyContrast]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    try:
        return list(dict.fromkeys(StudyContrast(name) for name in names))
    except ValueError:
        choices = ", ".join(c.value for c in StudyContrast)
        raise argparse.ArgumentTypeError(f"{text!r}: expected some of {choices}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--knee", type=int, default=20)
    parser.add_argument("--ankle", type=int, default=20)
    parser.add_argument("--shoulder", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED,
                        help="another set of held-out studies (e.g. 950000: seeds no choice was tuned on)")
    parser.add_argument("--contrasts", type=parse_contrasts, default=list(StudyContrast),
                        help="knee contrasts, comma-separated (default: all of "
                             f"{','.join(c.value for c in StudyContrast)}; protocol: the knee protocol's)")
    args = parser.parse_args(argv)
    predictor = cpu_predictor(args)
    print(f"model {predictor.card.name} {predictor.card.version}; seeds from {args.first_seed}")
    sweep: dict[StudyContrast, Scores] = {}
    for joint, count in ((Joint.KNEE, args.knee), (Joint.ANKLE, args.ankle), (Joint.SHOULDER, args.shoulder)):
        if count <= 0:
            continue
        seeds = range(args.first_seed, args.first_seed + count)
        for contrast in args.contrasts if joint is Joint.KNEE else [StudyContrast.PROTOCOL]:
            result = score(predictor, joint, seeds, contrast)
            report(joint, count, contrast, result)
            if joint is Joint.KNEE:
                sweep[contrast] = result
    if sweep:
        print("\n" + "\n".join(sweep_table(sweep)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
