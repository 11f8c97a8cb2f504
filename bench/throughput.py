"""Serving throughput: studies per hour the node's way (job threads: assembly from the stored files -> the
device batcher -> masks, findings and the DICOM result objects written), all studies queued at once, per number
of studies sharing a device pass, against the same studies one at a time in the same run.

    python3 bench/throughput.py [--studies 200] [--batch 1 2 4 8 16] [--device cpu|cuda] [--config bundled|official]
                                [--window-batch 4] [--unique 8] [--threads 2] [--model DIR] [--result-workers N]

Each line: studies/hour and its ratio to one study at a time (above 1: the stages overlapped, the device
batched), turnaround from the moment all were queued to the study's results written (p50/p95), each stage's
seconds per study and how many device passes carried the studies. On a GPU the device's utilisation is sampled every 100 ms (needs
pynvml; otherwise n/a) and the card, driver, torch and CUDA versions are printed.

Building a study's SEG, SR and summary is pure Python (about 1.4 s of CPU a study): one thread caps a node near
2,500 studies an hour whatever the GPU does, so ``--result-workers N`` builds them in N processes.

The knee studies are synthetic, three planes of about 24 slices at 320-512 pixels; ``--unique`` of them are
written as DICOM files and queued round-robin (assembly reads the files every time). On 2 CPU cores use e.g.
``--studies 12 --batch 1 2 4`` (issue 27; the GPU goals are for the official configuration on an H100).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.inference import model_dir  # noqa: E402
from ortho_node.app.result_builders import ResultBuilders  # noqa: E402
from ortho_node.config import BUNDLED_MODEL, Settings, load_settings  # noqa: E402
from ortho_node.inference.offline import assemble, catalogue  # noqa: E402
from ortho_node.inference.predictor import Predictor  # noqa: E402
from ortho_node.inference.batching import DeviceBatcher  # noqa: E402
from ortho_node.labels import Joint  # noqa: E402
from ortho_node.prediction import StudyPrediction  # noqa: E402
from ortho_node.synthetic import generate_study  # noqa: E402
from ortho_node.synthetic.dicom_writer import write_series  # noqa: E402
from reports.results import build_and_write  # noqa: E402


def write_studies(folder: Path, count: int) -> list[Path]:
    files = []
    for seed in range(count):
        study = generate_study(Joint.KNEE, 1000 + seed)
        for series in study.series:
            files += write_series(study, series, folder / f"study{seed}" / series.uid)
    return files


class GpuSampler:
    """Device utilisation sampled every 100 ms on a thread (pynvml through torch.cuda.utilization)."""

    def __init__(self, device: torch.device) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = None
        if device.type == "cuda":
            try:
                torch.cuda.utilization(device)
            except Exception:  # noqa: BLE001 - pynvml missing or no NVML: say n/a
                return
            self._thread = threading.Thread(target=self._run, args=(device,), daemon=True)
            self._thread.start()

    def _run(self, device: torch.device) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(torch.cuda.utilization(device))

    def stop(self) -> str:
        self._stop.set()
        if self._thread is None:
            return "n/a"
        self._thread.join()
        return f"{statistics.mean(self.samples):.0f}%" if self.samples else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="studies per device pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", choices=("bundled", "official"), default="bundled")
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL, help="the folder --config bundled measures")
    parser.add_argument("--window-batch", type=int, default=4, help="windows per backbone pass")
    parser.add_argument("--unique", type=int, default=8, help="distinct studies written as files")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--result-workers", type=int, default=1,
                        help="results.build_processes (1: on each job's thread, the node's default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    describe(device, args)
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as scratch:
        root = Path(scratch)
        files = write_studies(root / "studies", min(args.unique, args.studies))
        sessions, studies = catalogue(files, root / "catalog.sqlite")
        paths = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
        uids = sorted(studies)
        queue = [uids[k % len(uids)] for k in range(args.studies)]
        predictor = Predictor.from_checkpoint(model_dir(args.config, root, args.model), args.device,
                                              locate=paths.__getitem__, window_batch=args.window_batch)
        predictor.analyse(assemble(sessions, uids[0]))  # warm-up (kernels, allocator)
        out = root / "results"
        serial = one_at_a_time(predictor, sessions, queue[: max(2, args.studies // 4)], out, device)
        print(f"one at a time ({serial['studies']} studies): {serial['per_hour']:.0f} studies/h; stage seconds per "
              f"study: assembly {serial['prepare']:.2f}, model {serial['model']:.2f}, results {serial['finish']:.2f}")
        builders = ResultBuilders(load_settings(environ={}, overrides={
            "results.build_processes": args.result_workers if args.result_workers > 1 else 0}))
        try:
            for batch in args.batch:
                batched(predictor, sessions, queue, out, batch, device, builders, serial["per_hour"])
        finally:
            builders.close()
    return 0


def build(prediction: StudyPrediction, folder: Path) -> None:
    """The result objects of one study written (fsync), as the node writes them before delivery."""
    build_and_write(prediction, Settings(), folder)


def describe(device: torch.device, args: argparse.Namespace) -> None:
    line = f"torch {torch.__version__}, {args.config} model, window batch {args.window_batch}"
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        driver = "n/a"
        try:
            import pynvml

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
        except Exception:  # noqa: BLE001
            pass
        line += f"; {properties.name}, driver {driver}, CUDA {torch.version.cuda}"
    else:
        line += f"; CPU, {torch.get_num_threads()} threads"
    print(line)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_at_a_time(predictor, sessions, queue, out: Path, device) -> dict:
    """The serial reference: each study assembled, predicted and its results written before the next."""
    seconds = {"prepare": 0.0, "model": 0.0, "finish": 0.0}
    start = time.perf_counter()
    for key, uid in enumerate(queue):
        t0 = time.perf_counter()
        study = assemble(sessions, uid)
        t1 = time.perf_counter()
        outcome = predictor.analyse(study)
        _sync(device)
        t2 = time.perf_counter()
        build(outcome.prediction, out / f"serial{key}")
        t3 = time.perf_counter()
        seconds["prepare"] += t1 - t0
        seconds["model"] += t2 - t1
        seconds["finish"] += t3 - t2
    wall = time.perf_counter() - start
    n = len(queue)
    return {"studies": n, "per_hour": 3600 * n / wall, **{k: v / n for k, v in seconds.items()}}


def batched(predictor, sessions, queue, out: Path, batch: int, device: torch.device,
            builders: ResultBuilders, serial_per_hour: float) -> None:
    """The node's way: ``2 * batch`` job threads each assemble a study, share the device through one
    :class:`DeviceBatcher` (up to ``batch`` studies a pass) and build its results (the node's
    :class:`ResultBuilders`: on the thread, or in processes)."""
    batcher = DeviceBatcher(predictor, batch)
    done: list[float] = []
    failures: list[str] = []
    stage = {"assembly": 0.0, "model": 0.0, "results": 0.0}

    def job(key: int, uid: str) -> None:
        try:
            t0 = time.perf_counter()
            study = assemble(sessions, uid)
            t1 = time.perf_counter()
            outcome = batcher.analyse(study)
            t2 = time.perf_counter()
            folder = out / f"b{batch}-{key}"
            builders(outcome.prediction, folder)
            t3 = time.perf_counter()
            stage["assembly"] += t1 - t0
            stage["model"] += t2 - t1
            stage["results"] += t3 - t2
        except Exception as error:  # noqa: BLE001 - counted and printed, the run goes on
            failures.append(f"{key}: {type(error).__name__}: {error}")
        done.append(time.perf_counter())

    sampler = GpuSampler(device)
    start = time.perf_counter()
    with ThreadPoolExecutor(2 * batch) as threads:
        for key, uid in enumerate(queue):
            threads.submit(job, key, uid)
    wall = time.perf_counter() - start
    utilisation = sampler.stop()
    turnaround = sorted(t - start for t in done)
    p95 = turnaround[min(len(turnaround) - 1, round(0.95 * (len(turnaround) - 1)))]
    per_hour = 3600 * len(queue) / wall
    n = len(queue)
    print(f"batch {batch:2d}: {per_hour:7.0f} studies/h ({per_hour / serial_per_hour:.2f}x one at a time), "
          f"turnaround p50 {statistics.median(turnaround):.1f} s p95 {p95:.1f} s; per study (threads overlap): "
          f"assembly {stage['assembly'] / n:.2f} s, model incl. waiting {stage['model'] / n:.2f} s, results "
          f"{stage['results'] / n:.2f} s; {batcher.passes} device passes for {batcher.studies} studies; "
          f"GPU utilisation {utilisation}; {len(failures)} failed" + (f" ({failures[0]})" if failures else ""))


if __name__ == "__main__":
    raise SystemExit(main())
