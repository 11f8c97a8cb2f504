"""Assembly benchmark: a three-plane knee study (3 x 40 slices of 512x512) sent to an in-process node.

Prints the time from the last instance's C-STORE response to the ready decision (the job row, default
settings: complete by the sender's signals, then the 2 s settle time), and the assembly time and peak memory
of the study (volumes read from the stored files into float32). Goal: assembly < 2 s, < 1 GB on 2 cores.

    python3 bench/assembly.py [--slices 40] [--size 512]
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ortho_node.app.node import Node  # noqa: E402
from ortho_node.config import load_settings  # noqa: E402
from ortho_node.db.models import Job  # noqa: E402
from tests.assembly.factory import series, store  # noqa: E402

log = logging.getLogger("bench.assembly")


def build_study(slices: int, size: int):
    study_uid = generate_uid()
    rng = np.random.default_rng(0)
    datasets = []
    for number, plane in enumerate(("sagittal", "coronal", "axial"), start=1):
        for ds in series(study_uid, plane, number=number, slices=slices, PixelSpacing=[0.3, 0.3]):
            ds.Rows = ds.Columns = size
            ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
            datasets.append(ds)
    return study_uid, datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    study_uid, datasets = build_study(args.slices, args.size)
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings(environ={}, overrides={
            "storage.data_dir": folder, "storage.min_free_mb": 0, "storage.fsync": False,
            "dicom.host": "127.0.0.1", "dicom.port": 0})
        node = Node(settings)
        node.prepare()
        node.start()
        try:
            store(node.scp.port, datasets)
            last_instance = time.monotonic()
            while True:
                with node.session_factory() as session:
                    if session.scalar(select(Job.id)) is not None:
                        break
                time.sleep(0.01)
            ready = time.monotonic() - last_instance
            node.scheduler.pool.wait_idle(60)
            tracemalloc.start()
            started = time.perf_counter()
            assembled = node.assembler.assemble(study_uid, "benchmark")
            elapsed = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        finally:
            node.stop()
    shapes = {plane.value: volume.pixels.shape for plane, volume in assembled.planes.items()}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"study: 3 planes x {args.slices} slices of {args.size}x{args.size}: {shapes}")
    print(f"last instance -> ready decision: {ready:.2f} s (settle time {settings.scheduling.settle_time:g} s)")
    print(f"assembly: {elapsed:.2f} s, peak traced memory {peak / 2**20:.0f} MiB, process peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
