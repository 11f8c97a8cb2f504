"""Label efficiency (the paper's claim, in kind): diffusion-pretrained vs from-scratch backbones, each
fine-tuned with 10% and 100% of the labels, on knee segmentation (mean Dice) and knee diagnosis (macro AUC).

    python3 bench/label_efficiency.py [--studies 60] [--test 20] [--pretrain-steps 300] [--epochs 10] [--lr 2e-3]
                                      [--out bench/label_efficiency.png]

Prints a table and writes a bar chart (PNG, drawn with Pillow). Expected: pretrained at 10% beats scratch at
10% by >= 0.05. Report whatever the numbers are.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ortho_node.training.bundle import PROFILES, pretrain_backbones  # noqa: E402
from ortho_node.training.finetune import FinetuneSettings, Task, evaluate, split, train_task  # noqa: E402
from ortho_node.model.system import OrthoModel, new_card  # noqa: E402
from ortho_node.training.taskdata import generate_task_data  # noqa: E402
from ortho_node.model.unet import UNetConfig  # noqa: E402
from ortho_node.labels import Joint  # noqa: E402

FIRST_SEED, TEST_SEED = 700_000, 800_000


def plot(results: dict[tuple[str, str, float], float], path: Path) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (640, 360), "white")
    draw = ImageDraw.Draw(image)
    keys = sorted(results)
    width = 560 // max(1, len(keys))
    for i, key in enumerate(keys):
        value = max(0.0, results[key])
        x0, height = 40 + i * width, int(260 * value)
        draw.rectangle([x0 + 4, 300 - height, x0 + width - 4, 300], fill="#3465a4" if key[1] == "pretrained" else "#cc0000")
        draw.text((x0 + 4, 305), f"{key[0]}\n{key[1][:7]} {int(key[2] * 100)}%", fill="black")
        draw.text((x0 + 4, 285 - height), f"{value:.2f}", fill="black")
    draw.text((40, 10), "label efficiency: pretrained (blue) vs scratch (red)", fill="black")
    image.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=PROFILES["full"].lr, help="head learning rate (bundle's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/label_efficiency.png"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    scratch = OrthoModel(new_card(UNetConfig.reduced(), joints=(Joint.KNEE,)))
    spec = scratch.card.preprocessing
    data = generate_task_data(Joint.KNEE, range(FIRST_SEED, FIRST_SEED + args.studies), spec, workers=2)
    test = generate_task_data(Joint.KNEE, range(TEST_SEED, TEST_SEED + args.test), spec, workers=2)
    pretrained = copy.deepcopy(scratch)
    profile = PROFILES["quick"].__class__(**{**PROFILES["quick"].__dict__, "pretrain_steps": args.pretrain_steps})
    pretrain_backbones(pretrained, data, profile, 0, device)
    results: dict[tuple[str, str, float], float] = {}
    for task in (Task.KNEE_SEG, Task.KNEE_DX):
        for name, start in (("pretrained", pretrained), ("scratch", scratch)):
            for fraction in (0.1, 1.0):
                model = copy.deepcopy(start)
                train, val = split(len(data), 0.2, fraction, 0)
                settings = FinetuneSettings(epochs=args.epochs, patience=args.epochs,
                                            label_fraction=fraction, lr=args.lr)
                train_task(model, task, data.subset(train), data.subset(val), settings)
                score, _, _ = evaluate(model, task, test, device)
                results[(task.value, name, fraction)] = score
                print(f"{task.value:8s} {name:10s} {int(fraction * 100):3d}% labels ({len(train):3d} studies): "
                      f"{'mean Dice' if task.segmentation else 'macro AUC'} {score:.3f}", flush=True)
    for task in (Task.KNEE_SEG, Task.KNEE_DX):
        gap = results[(task.value, "pretrained", 0.1)] - results[(task.value, "scratch", 0.1)]
        print(f"{task.value}: pretrained - scratch at 10% labels = {gap:+.3f} (claim: >= +0.05)")
    plot(results, args.out)
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
