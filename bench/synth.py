"""Seconds and peak memory to generate one three-plane synthetic knee study (goal: under 5 s on one core).

Usage: python bench/synth.py [--seed S] [--repeat N] [--threads T] [--scene-spacing MM]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch / BLAS threads (1 = the one-core goal)")
    parser.add_argument("--scene-spacing", type=float, default=0.6)
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    from ortho_node.synthetic import generate_study

    torch.set_num_threads(args.threads)
    generate_study("knee", args.seed, findings="random", scene_spacing=args.scene_spacing)  # warm-up (imports)
    times = []
    tracemalloc.start()
    for i in range(args.repeat):
        start = time.perf_counter()
        study = generate_study("knee", args.seed + i, findings="random", scene_spacing=args.scene_spacing)
        times.append(time.perf_counter() - start)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    shapes = ", ".join(f"{s.description} {s.pixels.shape}" for s in study.series)
    print(f"knee study, {args.threads} thread(s), scene {args.scene_spacing} mm: last = {shapes}")
    print(f"seconds per study: min {min(times):.2f}  mean {sum(times) / len(times):.2f}  max {max(times):.2f}")
    print(f"peak memory: numpy/python traced {traced_peak / 2**20:.0f} MiB, process RSS {rss_peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
