"""The model on a real knee: Dice of the node's SEG against hand-made labels on the GE series, and overlays.

    python3 bench/real_knee.py [--model DIR] [--out bench/figures] [--threads 2]

Runs ``ortho-node infer SERIES --out TMP --dicom-results`` in-process (the node's own assembly chooses the echo
it analyses), reads the written DICOM-SEG, and compares it on every slice of
``tests/data/ge_knee_labels/labels.json`` (polygons on the first echo; the analysed echo at the same
ImagePositionPatient is the same slice). Prints Dice per structure per slice and the mean over slices; writes
one overlay PNG per chosen slice (medial, central, lateral): the image with the hand-made outlines, and the SEG
blended in with the same outlines. Issue 21's goal: bones Dice >= 0.85 on these slices.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw
from pydicom import dcmread

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ortho_node.app.cli.main import main as node_main
from ortho_node.inference.offline import DEFAULT_MODEL
from reports import codes
from tests.conftest import GE_SERIES

LABELS = REPO / "tests" / "data" / "ge_knee_labels" / "labels.json"
#: Label-file keys -> the model's structure names.
STRUCTURES = {"femur": "femur", "tibia": "tibia", "patella": "patella", "femoral_cartilage": "femoral cartilage"}
BONES = ("femur", "tibia", "patella")
ZOOM, ALPHA = 2, 0.55


def rasterise(polygons: list[list[list[int]]], shape: tuple[int, int]) -> np.ndarray:
    """Fill [column, row] polygons (PIL ImageDraw: outline pixels included) into a boolean mask."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon([tuple(vertex) for vertex in polygon], fill=1)
    return np.asarray(canvas, dtype=bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 2.0 * int((a & b).sum()) / total if total else float("nan")


def infer_seg(series: Path, model: Path, threads: int, scratch: Path) -> hd.seg.Segmentation:
    """The same code path as ``ortho-node infer ... --dicom-results``; returns the SEG it wrote."""
    argv = ["infer", str(series), "--out", str(scratch), "--model", str(model), "--device", "cpu",
            "--threads", str(threads), "--dicom-results"]
    status = node_main(argv)
    if status != 0:
        raise SystemExit(f"ortho-node {' '.join(argv)} exited {status}")
    [path] = sorted(scratch.glob("SEG_*.dcm"))
    return hd.seg.segread(path)


def seg_by_position(seg: hd.seg.Segmentation, series: Path) -> dict[tuple[float, ...], np.ndarray]:
    """The SEG's label map (0 background, else segment number) per source ImagePositionPatient (0.01 mm)."""
    wanted = {uids[2] for uids in seg.get_source_image_uids()}
    headers = [ds for ds in (dcmread(p, stop_before_pixels=True) for p in sorted(series.rglob("*.dcm")))
               if ds.SOPInstanceUID in wanted]
    maps = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in headers], combine_segments=True,
        skip_overlap_checks=True)
    return {position_key(ds.ImagePositionPatient): maps[k] for k, ds in enumerate(headers)}


def position_key(position) -> tuple[float, ...]:
    return tuple(round(float(v), 2) for v in position)


def source_pixels(series: Path, position: tuple[float, ...], sop_uids: set[str]) -> np.ndarray:
    """The analysed echo's pixels at one position (the image the model saw)."""
    for path in sorted(series.rglob("*.dcm")):
        ds = dcmread(path)
        if ds.SOPInstanceUID in sop_uids and position_key(ds.ImagePositionPatient) == position:
            return ds.pixel_array.astype(np.float32)
    raise KeyError(f"no analysed image at {position}")


def grey(pixels: np.ndarray) -> np.ndarray:
    low, high = np.percentile(pixels, (1, 99.5))
    return (np.clip((pixels - low) / max(float(high - low), 1e-6), 0, 1) * 255).astype(np.uint8)


def overlay(pixels: np.ndarray, labels: np.ndarray, names: dict[int, str], manual: dict[str, list],
            title: str) -> Image.Image:
    """Two panels: the image with the hand-made outlines; the SEG blended in (reports' colours), same outlines."""
    base = np.repeat(grey(pixels)[..., None], 3, axis=2).astype(np.float32)
    blended = base.copy()
    for number, name in names.items():
        inside = labels == number
        blended[inside] = (1 - ALPHA) * blended[inside] + ALPHA * np.asarray(codes.structure(name).rgb)
    panels = []
    for rgb in (base, blended):
        image = Image.fromarray(rgb.astype(np.uint8)).resize((pixels.shape[1] * ZOOM, pixels.shape[0] * ZOOM),
                                                             Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(image)
        for polygons in manual.values():
            for polygon in polygons:
                points = [((c + 0.5) * ZOOM, (r + 0.5) * ZOOM) for c, r in polygon]
                draw.line(points + points[:1], fill=(255, 255, 255), width=1)
        panels.append(image)
    shown = [name for number, name in names.items() if (labels == number).any()]
    legend_height = 22 + 18 * ((len(shown) + 3) // 4)
    sheet = Image.new("RGB", (2 * panels[0].width, panels[0].height + legend_height), "black")
    sheet.paste(panels[0], (0, 0))
    sheet.paste(panels[1], (panels[0].width, 0))
    draw = ImageDraw.Draw(sheet)
    y = panels[0].height + 4
    draw.text((6, y), f"{title}   white: hand-made outlines; colour: the model's SEG", fill=(255, 255, 255))
    for i, name in enumerate(shown):
        x, row = 6 + (i % 4) * (sheet.width // 4), y + 18 + 18 * (i // 4)
        draw.rectangle((x, row + 2, x + 11, row + 13), fill=codes.structure(name).rgb)
        draw.text((x + 16, row + 1), name, fill=(255, 255, 255))
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=Path, default=GE_SERIES)
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="task model folder (default: bundled)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "figures", help="folder for the overlay PNGs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--figures", default="57,97,121",
                        help="InstanceNumbers (first echo) of the labelled slices to draw (default: medial, central, lateral)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    document = json.loads(args.labels.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="real-knee-") as scratch:
        seg = infer_seg(args.series, args.model, args.threads, Path(scratch))
    names = {s.SegmentNumber: s.SegmentLabel for s in seg.SegmentSequence}
    number_of = {name: number for number, name in names.items()}
    by_position = seg_by_position(seg, args.series)
    print(f"model {args.model}; {args.series}: {len(by_position)} analysed slices, "
          f"{len(document['slices'])} hand-labelled")
    scores: dict[str, list[float]] = {key: [] for key in STRUCTURES}
    print(f"{'instance':>8} {'position':>8}  " + "  ".join(f"{key:>17}" for key in STRUCTURES))
    for entry in document["slices"]:
        labels = by_position[position_key(entry["image_position_patient"])]
        row = []
        for key, name in STRUCTURES.items():
            if key not in entry["labels"]:
                row.append(f"{'-':>17}")
                continue
            truth = rasterise(entry["labels"][key], labels.shape)
            value = dice(truth, labels == number_of[name]) if name in number_of else 0.0
            scores[key].append(value)
            row.append(f"{value:>17.3f}")
        print(f"{entry['instance_number']:>8} {entry['position']:>8}  " + "  ".join(row))
    means = {key: float(np.mean(values)) for key, values in scores.items() if values}
    print("mean over slices: " + ", ".join(f"{key} {value:.3f} ({len(scores[key])})" for key, value in means.items()))
    print(f"bones mean (femur, tibia, patella): {np.mean([means[k] for k in BONES if k in means]):.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    analysed = {uids[2] for uids in seg.get_source_image_uids()}
    drawn = {int(number) for number in args.figures.split(",") if number}
    for entry in (e for e in document["slices"] if e["instance_number"] in drawn):
        side = entry["position"]
        position = position_key(entry["image_position_patient"])
        pixels = source_pixels(args.series, position, analysed)
        title = f"GE knee, {side} (instance {entry['instance_number']} position)"
        path = args.out / f"real_knee_{side}.png"
        overlay(pixels, by_position[position], names, entry["labels"], title).save(path, optimize=True)
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
