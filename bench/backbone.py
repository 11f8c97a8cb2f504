"""Benchmark the OrthoDiffusion backbone: one feature extraction and one training step, CPU and CUDA.

Prints wall-clock seconds, peak memory and achieved TFLOP/s (no assertions). Example:

    python bench/backbone.py --device cpu --threads 2
    python bench/backbone.py --device cuda --train-batch 10 --peak-tflops 989 [--compile]

Seconds are the median of ``--repeats`` runs after a warm-up. CPU peak memory is the rise of the process's
resident set over its level before the operation (sampled every 5 ms); CUDA peak memory is
``torch.cuda.max_memory_allocated``. CUDA runs use bf16 autocast; the CPU runs float32. The load average is
printed because on a shared machine other processes' load shows directly in CPU timings. ``--compile`` runs
the UNet as one ``torch.compile`` graph (fuses GroupNorm, SiLU and the embedding add around the
convolutions); its compile time is printed apart from the timed runs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

from ortho_node.model.checkpoint import build_model
from ortho_node.model.diffusion import GaussianDiffusion
from ortho_node.model.features import extract_features
from ortho_node.model.runtime import autocast, match_memory_format, place_model, prepare_for_inference
from ortho_node.model.unet import UNetConfig


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Yields a dict that holds ``peak_mib`` once the block has run."""
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        yield result
        torch.cuda.synchronize()
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return
    process, stop = psutil.Process(), threading.Event()
    baseline = peak = process.memory_info().rss

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result["peak_mib"] = (max(peak, process.memory_info().rss) - baseline) / 2**20


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    """(median seconds over ``repeats`` runs, peak MiB of one more run), after a warm-up run.

    Memory is sampled in a separate run: the sampling thread would steal time from the compute threads.
    """
    fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    with peak_memory(device) as memory:
        fn()
    return statistics.median(seconds), memory["peak_mib"]


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def compile_unet(model: GaussianDiffusion, job: Callable[[], object], what: str) -> None:
    """Route the UNet's calls through one ``torch.compile`` graph, and compile it by running ``job`` once."""
    unet = model.denoise_fn
    unet.activations = torch.compile(unet.activations, fullgraph=True)  # type: ignore[method-assign]
    start = time.perf_counter()
    job()
    print(f"compiled the {what} in {time.perf_counter() - start:.1f} s", flush=True)


def feature_job(model: GaussianDiffusion, volume: torch.Tensor, block: str) -> Callable[[], object]:
    return lambda: extract_features(model, volume, t=100, block=block, noise_seed=0)


def train_job(model: GaussianDiffusion, batch: torch.Tensor, device: torch.device) -> Callable[[], object]:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        with autocast(device):
            loss = model.training_losses(batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    return step


def report(name: str, device: torch.device, seconds: float, peak_mib: float, flops: int, peak_tflops: float) -> None:
    achieved = flops / seconds / 1e12
    line = (
        f"{name:<28} {device.type:<5} {seconds:8.3f} s  peak {peak_mib:9.1f} MiB"
        f"  {flops / 1e9:9.1f} GFLOP  {achieved:7.2f} TFLOP/s"
    )
    if device.type == "cuda" and peak_tflops > 0:
        line += f"  ({100 * achieved / peak_tflops:.1f}% of {peak_tflops:g} bf16 peak)"
    print(line, flush=True)


def bench_device(device: torch.device, args: argparse.Namespace) -> None:
    config = UNetConfig.named(args.config)
    torch.manual_seed(0)
    base = build_model(config)
    model = prepare_for_inference(copy.deepcopy(base), device)
    volume = torch.rand(args.feature_batch, *config.input_shape, device=device) * 2 - 1
    job = feature_job(model, volume, args.block)
    flops = count_flops(job)
    suffix = ""
    if args.compile:
        compile_unet(model, job, "feature path")
        suffix = " compiled"
    seconds, peak = timed(job, device, args.repeats)
    report(f"features {args.block} x{args.feature_batch}{suffix}", device, seconds, peak, flops, args.peak_tflops)
    del model
    if args.train_batch <= 0:
        return
    model = place_model(base, device).train()
    batch = match_memory_format(torch.rand(args.train_batch, *config.input_shape, device=device) * 2 - 1, model)
    job = train_job(model, batch, device)
    flops = count_flops(job)
    if args.compile:
        compile_unet(model, job, "training step")
    seconds, peak = timed(job, device, args.repeats)
    report(f"train step x{args.train_batch}{suffix}", device, seconds, peak, flops, args.peak_tflops)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all", help="all: CPU, and CUDA if present")
    parser.add_argument("--config", choices=("official", "reduced"), default="official")
    parser.add_argument("--block", default="mid_2", help="feature block (default: the paper's mid_2)")
    parser.add_argument("--feature-batch", type=int, default=1)
    parser.add_argument("--train-batch", type=int, default=1, help="0 skips the training step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet first")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100 SXM: 989)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        parser.error("no CUDA device available")
    load = ", ".join(f"{v:.2f}" for v in psutil.getloadavg())
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} CPU threads, config {args.config}, load {load}", flush=True)
    for device in devices:
        bench_device(device, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
