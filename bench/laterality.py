"""Medial/lateral confusion of a model on synthetic left and right knees (issue 21).

For each synthetic knee (``--seeds`` of each side, realistic render) and each series, the share of the true
medial meniscus voxels the model paints "medial meniscus" and the share it paints "lateral meniscus", and the
same for the lateral meniscus; the ACL/PCL pair as a control that does not depend on the side. Prints one line
per (side, plane, structure), pooled over the studies.

    python3 bench/laterality.py [--model DIR] [--seeds 6] [--first 9000]
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ortho_node.inference.offline import DEFAULT_MODEL  # noqa: E402
from ortho_node.inference.predictor import Predictor  # noqa: E402
from ortho_node.labels import Joint  # noqa: E402
from ortho_node.synthetic.generator import generate_study  # noqa: E402
from ortho_node.synthetic.structures import structure_names  # noqa: E402
from ortho_node.training.taskdata import assembled_from_synthetic  # noqa: E402

PAIRS = (("medial meniscus", "lateral meniscus"), ("anterior cruciate ligament", "posterior cruciate ligament"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--seeds", type=int, default=6, help="knees of each side")
    parser.add_argument("--first", type=int, default=9000, help="first seed (past the training seeds)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.model, "cpu", locate=lambda uid: Path(uid))
    names = list(structure_names(Joint.KNEE))
    counts: dict[tuple[str, str, str], np.ndarray] = collections.defaultdict(lambda: np.zeros(3))
    for seed in range(args.first, args.first + args.seeds):
        for side in ("R", "L"):
            study = generate_study(Joint.KNEE, seed, laterality=side)
            truth = {series.uid: series.labels for series in study.series}
            for seg in predictor.predict(assembled_from_synthetic(study)).segmentations:
                labels = truth[seg.series_instance_uid]
                for pair in PAIRS:
                    for own, other in (pair, pair[::-1]):
                        inside = seg.mask[labels == names.index(own)]
                        counts[(side, seg.plane.value, own)] += [inside.size, (inside == names.index(own)).sum(),
                                                                 (inside == names.index(other)).sum()]
    print(f"model {args.model}, {args.seeds} knees of each side (seeds {args.first}-{args.first + args.seeds - 1})")
    for (side, plane, name), (voxels, right, swapped) in sorted(counts.items()):
        print(f"{'right' if side == 'R' else 'left':5} {plane:8} {name:28} {int(voxels):7d} voxels: "
              f"{right / voxels:.2f} as itself, {swapped / voxels:.2f} as its counterpart")


if __name__ == "__main__":
    main()
