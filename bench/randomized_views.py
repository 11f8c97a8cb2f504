"""A PNG grid of one knee study's middle slices (sagittal, coronal, axial): realistic, then randomised renders.

Usage: python bench/randomized_views.py OUT.png [--seed S] [--variants N] [--scene-spacing MM] [--outlines]

Rows: the realistic render, then ``--variants`` randomised renders (``randomize_study`` seeds 0, 1, ...).
``--outlines`` draws the ground-truth label borders in colour, to check that labels sit on the anatomy.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ortho_node.labels import MODEL_PLANES, Joint
from ortho_node.synthetic import SyntheticStudy, generate_study
from ortho_node.synthetic.randomized_study import randomize_study

logger = logging.getLogger("bench.randomized_views")

TILE = 256
LABEL_BAND = 18
#: One colour per knee label value 1-11 (bones warm, cartilage green, menisci blue, ligaments magenta).
COLOURS = [(255, 80, 80), (255, 160, 60), (255, 230, 60), (255, 120, 200), (60, 220, 90), (30, 160, 60),
           (150, 240, 120), (70, 140, 255), (60, 220, 255), (220, 80, 255), (160, 60, 200)]


def _tile(pixels: np.ndarray, labels: np.ndarray | None) -> Image.Image:
    lo, hi = np.percentile(pixels, [0.5, 99.5])
    grey = np.clip((pixels - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if labels is not None:
        # A label border: a pixel whose right or lower neighbour has another label.
        edge = np.zeros(labels.shape, dtype=bool)
        edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
        for value, colour in enumerate(COLOURS, start=1):
            rgb[edge & (labels == value)] = colour
    return Image.fromarray(rgb).resize((TILE, TILE), Image.Resampling.NEAREST if labels is not None
                                       else Image.Resampling.BILINEAR)


def _row(study: SyntheticStudy, outlines: bool) -> list[Image.Image]:
    tiles = []
    for plane in MODEL_PLANES:
        series = study.series_for(plane)
        middle = series.geometry.n_slices // 2
        tiles.append(_tile(series.pixels[middle].astype(np.float32), series.labels[middle] if outlines else None))
    return tiles


def render_grid(rows: list[tuple[str, list[Image.Image]]]) -> Image.Image:
    width = TILE * max(len(tiles) for _, tiles in rows)
    grid = Image.new("RGB", (width, len(rows) * (TILE + LABEL_BAND)), (0, 0, 0))
    draw = ImageDraw.Draw(grid)
    for r, (title, tiles) in enumerate(rows):
        top = r * (TILE + LABEL_BAND)
        draw.text((4, top + 3), title, fill=(255, 255, 255))
        for c, tile in enumerate(tiles):
            grid.paste(tile, (c * TILE, top + LABEL_BAND))
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--variants", type=int, default=3)
    parser.add_argument("--scene-spacing", type=float, default=1.0)
    parser.add_argument("--outlines", action="store_true", help="draw the ground-truth label borders")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    study = generate_study(Joint.KNEE, args.seed, scene_spacing=args.scene_spacing, keep_scene=True)
    rows = [(f"realistic  (seed {args.seed}; sagittal, coronal, axial)", _row(study, args.outlines))]
    for variant in range(args.variants):
        randomized = randomize_study(study, variant)
        rows.append((f"randomised variant {variant}", _row(randomized, args.outlines)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    render_grid(rows).save(args.output)
    logger.info("wrote %s (%d rows)", args.output, len(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
