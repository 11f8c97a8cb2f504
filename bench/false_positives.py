"""False positives per normal study: a model's knee findings on synthetic knees without any finding, rendered
in turn with the knee protocol's own contrasts, T1, T2 without fat suppression and the SynthSeg-style
randomised render, through the real predictor at the card's thresholds.

    python3 bench/false_positives.py [--model ortho_node/bundled] [--studies 100] [--workers 2] [--threads 2]
                                     [--first-seed 970000]

Prints the false positives per normal study (mean, per label and per contrast) beside what the card's
validation specificities promise (the sum of 1 - specificity over the labels) and its operating points.
Goal (issue 21): <= 0.3 per normal study. Seeds start at 970000, apart from every training, validation and
held-out seed of the bundle and from bench/quality.py's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.model_args import add_model_arguments, cpu_predictor  # noqa: E402
from ortho_node.assembly.study import AssembledStudy  # noqa: E402
from ortho_node.labels import DIAGNOSIS_LABELS, Joint  # noqa: E402
from ortho_node.synthetic import StudyContrast, generate_contrast_study  # noqa: E402
from ortho_node.training.taskdata import assembled_from_synthetic, rendering_pool  # noqa: E402

FIRST_SEED = 970_000
#: The contrasts the normal studies cycle through: the protocol's (PD/T2 with fat suppression), two presets
#: no knee protocol uses, and the randomised render.
CONTRASTS = (StudyContrast.PROTOCOL, StudyContrast.T1, StudyContrast.T2, StudyContrast.RANDOMISED)
LABELS = DIAGNOSIS_LABELS[Joint.KNEE]


def normal_study(seed: int, contrast: StudyContrast) -> AssembledStudy:
    """A knee without findings (``findings=None``), rendered with ``contrast``, as assembly delivers it."""
    study = generate_contrast_study(Joint.KNEE, seed, contrast, findings=None, scene_spacing=1.0)
    if any(study.diagnosis.values()):
        raise RuntimeError(f"seed {seed}: a normal study holds findings {study.diagnosis}")
    return assembled_from_synthetic(study)


def normal_studies(count: int, first_seed: int, workers: int) -> Iterator[tuple[StudyContrast, AssembledStudy]]:
    """(contrast, study) of ``count`` seeds, the contrasts in turn, rendered by ``workers`` processes."""
    seeds = range(first_seed, first_seed + count)
    contrasts = [CONTRASTS[i % len(CONTRASTS)] for i in range(count)]
    with rendering_pool(workers) as pool:
        yield from zip(contrasts, pool.map(normal_study, seeds, contrasts))


def _promise(card) -> str:
    """What the card says of its thresholds: the expected false positives and the operating points used."""
    points = [card.operating_point(Joint.KNEE, label) for label in LABELS]
    specificities = [None if p is None else p.validation.specificity for p in points]
    expected = "unknown" if None in specificities else f"{sum(1 - s for s in specificities):.2f}"
    rules = sorted({"none" if p is None else p.rule.value for p in points})
    budgets = sorted({p.fp_budget for p in points if p is not None and p.fp_budget is not None})
    return (f"card: {expected} false positives per normal study expected from its validation specificities; "
            f"rules {', '.join(rules)}" + (f"; budget {', '.join(f'{b:g}' for b in budgets)}" if budgets else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="processes rendering the studies")
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    args = parser.parse_args(argv)
    predictor = cpu_predictor(args)
    card = predictor.card
    print(f"model {card.name} {card.version}; {args.studies} normal knees from seed {args.first_seed}")
    print(_promise(card))
    print("thresholds: " + ", ".join(f"{label} {card.threshold(Joint.KNEE, label):.3f}" for label in LABELS))
    started = time.perf_counter()
    called: dict[StudyContrast, list[np.ndarray]] = {c: [] for c in CONTRASTS}
    for contrast, study in normal_studies(args.studies, args.first_seed, args.workers):
        findings = predictor.predict(study).findings
        called[contrast].append(np.array([f.present for f in findings]))
    every = np.array([row for rows in called.values() for row in rows])  # [studies, labels]
    print(f"\n{len(every)} studies in {time.perf_counter() - started:.0f} s")
    print(f"false positives per normal study: {every.sum(1).mean():.3f} (goal <= 0.3); "
          f"studies with any: {every.any(1).mean():.0%}")
    print("per label (share of normal studies called): "
          + ", ".join(f"{label} {every[:, k].mean():.3f}" for k, label in enumerate(LABELS)))
    for contrast, rows in called.items():
        if rows:
            stacked = np.array(rows)
            worst = ", ".join(f"{LABELS[k]} {stacked[:, k].mean():.2f}" for k in np.argsort(-stacked.sum(0))[:3]
                              if stacked[:, k].any())
            print(f"  {contrast.label:<10} {len(rows):4d} studies: {stacked.sum(1).mean():.3f} per study"
                  + (f" (most: {worst})" if worst else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
