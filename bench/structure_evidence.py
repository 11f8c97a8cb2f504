"""Structure evidence (ortho_node.model.evidence) for meniscal tears: the shipped readout, a refit, and the
ceiling with the true masks.

    python3 bench/structure_evidence.py [--model ortho_node/bundled] [--train 120] [--test 60] [--l2 0.1]

For each knee study the readout inputs the predictor builds (for a meniscal tear: the head's logit, then per
plane the statistics of the image inside the predicted meniscus, its grown mask and rim, the pixels a closing
adds, the local contrast) and the same with the statistics taken inside the true masks. Prints per label with
structure evidence, on the held-out seeds of bench/quality.py (900000+): the shipped model's AUC, its
diagnosis head's own AUC, and the readout refitted on training seeds 700000+ on the predicted masks and on the
true masks (how much better masks would give).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.model_args import add_model_arguments, cpu_predictor  # noqa: E402
from ortho_node.inference.predictor import Predictor  # noqa: E402
from ortho_node.labels import DIAGNOSIS_LABELS, MODEL_PLANES, Joint  # noqa: E402
from ortho_node.model.evidence import STATISTICS, EvidenceReadout, plane_statistics  # noqa: E402
from ortho_node.training.scores import roc_auc  # noqa: E402
from ortho_node.model.preprocessing import label_slices_to_model_grid, slices_to_model_grid  # noqa: E402
from ortho_node.training.taskdata import assembled_from_synthetic  # noqa: E402
from ortho_node.synthetic import generate_study  # noqa: E402

TRAIN_SEED, TEST_SEED = 700_000, 900_000  # the second: bench/quality.py's held-out studies


def _true_statistics(predictor: Predictor, generated, study, structures: list[int]) -> list[torch.Tensor]:
    """Per plane, [structures, STATISTICS] inside the true masks."""
    spec = predictor.card.preprocessing
    statistics = []
    for plane in MODEL_PLANES:
        truth = label_slices_to_model_grid(generated.series_for(plane).labels, spec).long()
        one_hot = F.one_hot(truth, len(predictor.card.structures)).permute(3, 0, 1, 2)  # its arg-max: the truth
        statistics.append(plane_statistics(slices_to_model_grid(study.planes[plane].pixels, spec), one_hot,
                                           structures))
    return statistics


def collect(predictor: Predictor, seeds: range) -> dict[str, torch.Tensor]:
    pairs = predictor.card.evidence_structures(Joint.KNEE)
    rows_with_structures = [k for k, _ in pairs]
    first = 1 + len(MODEL_PLANES) * predictor.model.diagnosis["knee"].width  # the statistics' first column
    rows: dict[str, list] = {"predicted": [], "true_masks": [], "shipped": [], "targets": []}
    for seed in seeds:
        generated = generate_study(Joint.KNEE, seed, findings="random", scene_spacing=1.0)
        study = assembled_from_synthetic(generated)
        inputs = predictor.evidence_inputs(study)
        truth = inputs.clone()
        for j, statistics in enumerate(_true_statistics(predictor, generated, study, [s for _, s in pairs])):
            truth[rows_with_structures, first + j * STATISTICS : first + (j + 1) * STATISTICS] = statistics
        rows["predicted"].append(inputs)
        rows["true_masks"].append(truth)
        with torch.no_grad():  # what predict() reports, without segmenting the study again
            rows["shipped"].append(torch.sigmoid(predictor.model.evidence["knee"](inputs)).tolist())
        rows["targets"].append([float(generated.diagnosis[label]) for label in DIAGNOSIS_LABELS[Joint.KNEE]])
    return {key: torch.stack(v) if key in ("predicted", "true_masks") else torch.tensor(v) for key, v in rows.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--train", type=int, default=120)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--l2", type=float, default=0.1)
    args = parser.parse_args(argv)
    predictor = cpu_predictor(args)
    if not predictor.card.evidence_structures(Joint.KNEE):
        parser.error(f"{args.model} reads no knee label from structure evidence")
    train = collect(predictor, range(TRAIN_SEED, TRAIN_SEED + args.train))
    test = collect(predictor, range(TEST_SEED, TEST_SEED + args.test))
    print(f"model {predictor.card.name} {predictor.card.version}; {args.train} training, {args.test} held-out knee "
          f"studies; refits: logistic regression, L2 {args.l2}")
    refits = {}
    for key in ("predicted", "true_masks"):
        module = EvidenceReadout(predictor.model.evidence["knee"].uses.clone())
        module.fit(train[key], train["targets"], args.l2)
        with torch.no_grad():
            refits[key] = module(test[key]).numpy()
    for k, _ in predictor.card.evidence_structures(Joint.KNEE):
        label, y = DIAGNOSIS_LABELS[Joint.KNEE][k], test["targets"][:, k].numpy()
        print(f"  {label:<4} positives {int(train['targets'][:, k].sum())}/{args.train}, {int(y.sum())}/{args.test}: "
              f"shipped {roc_auc(test['shipped'][:, k].numpy(), y):.3f}, "
              f"head alone {roc_auc(test['predicted'][:, k, 0].numpy(), y):.3f}, "
              f"refit on the model's masks {roc_auc(refits['predicted'][:, k], y):.3f}, "
              f"on the true masks {roc_auc(refits['true_masks'][:, k], y):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
