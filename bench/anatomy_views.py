"""Three-plane middle slices (image with the ground-truth label outlines) of a few normal synthetic knees.

Usage: python bench/anatomy_views.py OUT.png [--seeds 5,8,4,20] [--scene-spacing MM] [--weighting T1|PD_FS|T2|T2_FS]

One row per seed: sagittal, coronal and axial middle slices of the realistic render, each structure's border in
its colour (bones warm, cartilage green, menisci blue, cruciates magenta), titled with the seed's anatomy
(size, flexion, Insall-Salvati ratio, open physes). Shows what the generator's anatomy looks like and that the
labels sit on it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.randomized_views import _row, render_grid  # noqa: E402

from ortho_node.labels import Joint  # noqa: E402
from ortho_node.synthetic import SequencePreset, generate_study  # noqa: E402
from ortho_node.synthetic.anatomy import knee  # noqa: E402
from ortho_node.synthetic.generator import stream  # noqa: E402

logger = logging.getLogger("bench.anatomy_views")


def _title(seed: int, weighting: SequencePreset) -> str:
    p = knee.sample_params(stream(seed, "anatomy"))
    child = ", open physes" if p.physes_open else ""
    return (f"seed {seed}: scale {p.scale:.2f}, flexion {p.flexion:.0f} deg, Insall-Salvati {p.insall_salvati:.2f}"
            f"{child}; {weighting.value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--seeds", default="5,8,4,20")
    parser.add_argument("--scene-spacing", type=float, default=0.6)
    parser.add_argument("--weighting", default=SequencePreset.T1.value,
                        choices=[w.value for w in SequencePreset])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    weighting = SequencePreset(args.weighting)
    rows: list[tuple[str, list[Image.Image]]] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        study = generate_study(Joint.KNEE, seed, findings=None, weighting=weighting, scene_spacing=args.scene_spacing)
        rows.append((_title(seed, weighting), _row(study, outlines=True)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    render_grid(rows).save(args.output)
    logger.info("wrote %s (%d rows)", args.output, len(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
