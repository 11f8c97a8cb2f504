"""Experiment: can the knee masks guide diagnosis where the diagnosis head fails (meniscal tears)?

    python3 bench/structure_evidence.py [--model ortho_node/bundled] [--train 120] [--test 60] [--l2 0.01]

For each knee study, on the model grid (each series' slices resized as the model sees them, min-max to
[-1, 1]): intensity statistics inside each meniscus and cruciate ligament (size, quantiles 0.5 / 0.9 / 0.99,
maximum, voxels brighter than the median by 0.3 and 0.5), inside the mask grown by one pixel, and in that rim;
three planes side by side. The masks come from the model's own segmentation, and, as the approach's
ceiling, from the ground truth. A logistic regression per label (L2) is fitted on training seeds 700000+ and
scored on the held-out seeds of bench/quality.py (900000+); printed next to the model's own AUC.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ortho_node.config import BUNDLED_MODEL  # noqa: E402
from ortho_node.inference.predictor import Predictor  # noqa: E402
from ortho_node.labels import DIAGNOSIS_LABELS, KNEE_STRUCTURES, MODEL_PLANES, Joint  # noqa: E402
from ortho_node.model.metrics import roc_auc  # noqa: E402
from ortho_node.model.preprocessing import label_slices_to_model_grid, slices_to_model_grid  # noqa: E402
from ortho_node.model.taskdata import assembled_from_synthetic  # noqa: E402
from ortho_node.synthetic import generate_study  # noqa: E402

#: Each finding and the structure it lives in.
STRUCTURE = {"MM": "medial meniscus", "LM": "lateral meniscus", "ACL": "anterior cruciate ligament",
             "PCL": "posterior cruciate ligament"}
QUANTILES = torch.tensor([0.5, 0.9, 0.99])
STATISTICS = 8


def statistics(x: torch.Tensor, region: torch.Tensor) -> list[float]:
    values = x[region]
    if values.numel() < 3:
        return [0.0] * (STATISTICS - 1) + [1.0]  # last: "structure not found"
    q = torch.quantile(values, QUANTILES).tolist()
    bright = [float(np.log1p(int((values - q[0] > t).sum()))) for t in (0.3, 0.5)]
    return [float(np.log1p(values.numel())), *q, float(values.max()), *bright, 0.0]


def evidence(x: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """[slices, S, S] image and label map -> statistics per structure of :data:`STRUCTURE`."""
    out = []
    for name in STRUCTURE.values():
        inside = labels == KNEE_STRUCTURES.index(name)
        grown = F.max_pool3d(inside[None, None].float(), (1, 3, 3), 1, (0, 1, 1))[0, 0] > 0
        out += statistics(x, inside) + statistics(x, grown) + statistics(x, grown & ~inside)
    return out


def collect(predictor: Predictor, seeds: range) -> dict[str, np.ndarray]:
    spec = predictor.card.preprocessing
    rows: dict[str, list] = {"predicted": [], "truth_masks": [], "model": [], "labels": []}
    for seed in seeds:
        generated = generate_study(Joint.KNEE, seed, findings="random", scene_spacing=1.0)
        study = assembled_from_synthetic(generated)
        prediction = predictor.predict(study)
        masks = {s.plane: s.mask for s in prediction.segmentations}
        predicted, truth_masks = [], []
        for plane in MODEL_PLANES:
            x = slices_to_model_grid(study.planes[plane].pixels, spec)
            x = (x - x.min()) / (x.max() - x.min()) * 2 - 1
            predicted += evidence(x, label_slices_to_model_grid(masks[plane], spec))
            truth_masks += evidence(x, label_slices_to_model_grid(generated.series_for(plane).labels, spec))
        rows["predicted"].append(predicted)
        rows["truth_masks"].append(truth_masks)
        rows["model"].append([f.probability for f in prediction.findings])
        rows["labels"].append([generated.diagnosis[label] for label in DIAGNOSIS_LABELS[Joint.KNEE]])
    return {key: np.array(value, dtype=np.float64) for key, value in rows.items()}


def logistic_regression(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xs @ w + b, ys) + l2 * (w**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return w.detach().numpy(), float(b.detach())


def columns(label: str) -> list[int]:
    """The feature columns of ``label``'s structure, in every plane."""
    per_structure, k = 3 * STATISTICS, list(STRUCTURE).index(label)
    per_plane = per_structure * len(STRUCTURE)
    return [p * per_plane + k * per_structure + i for p in range(len(MODEL_PLANES)) for i in range(per_structure)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    parser.add_argument("--train", type=int, default=120)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--l2", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.model, "cpu", locate=lambda uid: Path(uid))
    train = collect(predictor, range(700_000, 700_000 + args.train))
    test = collect(predictor, range(900_000, 900_000 + args.test))
    print(f"model {predictor.card.name} {predictor.card.version}; {args.train} training, {args.test} held-out knee "
          f"studies; logistic regression, L2 {args.l2}")
    for label in STRUCTURE:
        j = DIAGNOSIS_LABELS[Joint.KNEE].index(label)
        y_train, y_test = train["labels"][:, j], test["labels"][:, j]
        line = f"  {label:<4} positives {int(y_train.sum())}/{args.train}, {int(y_test.sum())}/{args.test}: " \
               f"model AUC {roc_auc(test['model'][:, j], y_test):.3f}"
        for key, name in (("predicted", "model's masks"), ("truth_masks", "true masks")):
            x_train, x_test = train[key][:, columns(label)], test[key][:, columns(label)]
            mean, std = x_train.mean(0), x_train.std(0) + 1e-6
            w, b = logistic_regression((x_train - mean) / std, y_train, args.l2)
            line += f", evidence in the {name} {roc_auc((x_test - mean) / std @ w + b, y_test):.3f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
