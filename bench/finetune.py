"""A department's fine-tuning and validation, timed: ``train finetune``'s loop (train + validation per epoch)
on N studies, and ``train evaluate``'s work (prediction through the Predictor, figures, report) on M studies,
with the peak memory of each.

    python3 bench/finetune.py [--studies 100] [--epochs 2] [--task knee-dx|knee-seg|...] [--config reduced|official]
                              [--device cpu|cuda] [--threads 2] [--evaluate 200]

Issue 26's goals: 100 studies, reduced configuration, 2 CPU cores: <= 5 minutes an epoch and < 8 GB; evaluation
of 200 studies <= 10 minutes. The studies are synthetic knees (1 mm scene, 256 matrices: what the labelled
tests use), rendered before the clock starts; a department's DICOM folder adds the reading time of assembly.
Peak memory: the process's peak resident set (it includes the rendered studies), and on CUDA the peak
allocated device memory.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ortho_node.labels import Joint  # noqa: E402
from ortho_node.model.system import OrthoModel, new_card, save_system  # noqa: E402
from ortho_node.model.unet import UNetConfig  # noqa: E402
from ortho_node.synthetic import DomainRandomization, generate_study  # noqa: E402
from ortho_node.training.finetune import FinetuneSettings, Task, split, train_task  # noqa: E402
from ortho_node.training.taskdata import assembled_from_synthetic, generate_task_data  # noqa: E402

FAST = {"scene_spacing": 1.0, "domain": DomainRandomization(matrices=(256,), pixel_mm=(0.3, 0.7))}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux


def bench_finetune(args: argparse.Namespace, model: OrthoModel) -> None:
    task = Task(args.task)
    started = time.perf_counter()
    data = generate_task_data(task.joint, range(args.studies), model.card.preprocessing,
                              segmentation=task.segmentation, **FAST)
    print(f"rendered {args.studies} {task.joint.value} studies in {time.perf_counter() - started:.1f} s; "
          f"peak RSS {peak_rss_gb():.2f} GB")
    settings = FinetuneSettings(epochs=args.epochs, patience=args.epochs, device=args.device)
    train, val = split(len(data), settings.val_fraction, 1.0, settings.seed)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train_task(model, task, data.subset(train), data.subset(val), settings)
    seconds = (time.perf_counter() - started) / args.epochs
    device = (f"; peak CUDA memory {torch.cuda.max_memory_allocated() / 1024 ** 3:.2f} GB"
              if args.device == "cuda" else "")
    print(f"finetune {task.value} ({args.config}, {len(train)} train / {len(val)} validation studies, batch "
          f"{settings.batch_size}, {torch.get_num_threads()} threads, {args.device}): {seconds:.1f} s per epoch "
          f"(train + validation, {args.epochs} epochs), validation score {result.score:.3f}; peak RSS "
          f"{peak_rss_gb():.2f} GB{device}")


def bench_evaluate(args: argparse.Namespace, folder: Path, model: OrthoModel) -> None:
    """``train evaluate``'s work on assembled studies: prediction, figures, the report with its plots."""
    from ortho_node.inference.predictor import Predictor
    from ortho_node.training.evaluation import evaluation, predict_studies
    from ortho_node.training.evaluation_report import write_report
    from ortho_node.training.labelled import Acquisition, LabelledStudy

    studies = []
    for seed in range(args.evaluate):
        synthetic = generate_study(Joint.KNEE, 5000 + seed, findings="random", **FAST)
        assembled = assembled_from_synthetic(synthetic)
        uids = {uid: Path(uid) for v in assembled.planes.values() for uid in v.geometry.sop_instance_uids}
        studies.append(LabelledStudy(assembled, f"patient-{seed}", dict(synthetic.diagnosis), {},
                                     Acquisition("bench", "synthetic", "1.5 T"), uids))
    predictor = Predictor.from_checkpoint(folder, args.device)
    started = time.perf_counter()
    records, failed = predict_studies(predictor, studies, Joint.KNEE)
    predicted = time.perf_counter() - started
    figures = evaluation(records, predictor.card, Joint.KNEE)
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as out:
        write_report(Path(out), records, figures, {"model": {"name": "bench", "version": "bench",
                                                             "weights_sha256": ""},
                                                   "data": {"studies": len(studies), "patients": len(studies),
                                                            "not_analysed": failed},
                                                   "evaluated_at": "", "command": "bench/finetune.py"})
    total = time.perf_counter() - started
    print(f"evaluate {len(records)} knee studies ({args.config}, {args.device}): {total:.1f} s "
          f"({predicted / max(1, len(records)):.2f} s a study predicting, {total - predicted:.1f} s figures and "
          f"report); peak RSS {peak_rss_gb():.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--task", choices=[t.value for t in Task], default=Task.KNEE_DX.value)
    parser.add_argument("--config", choices=("reduced", "official"), default="reduced")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--evaluate", type=int, default=0, metavar="M", help="also time evaluation of M studies")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = OrthoModel(new_card(UNetConfig.named(args.config), name="bench", version="bench"))
    if args.studies:
        bench_finetune(args, model)
    if args.evaluate:
        with tempfile.TemporaryDirectory(prefix="bench-model-") as folder:
            save_system(Path(folder), model)
            bench_evaluate(args, Path(folder), model)


if __name__ == "__main__":
    main()
