"""Ingest benchmark: our node vs Orthanc vs DCMTK storescp, receiving a 3-series 512x512 knee study.

Sends 120 MR instances (~63 MB) with dcmtk ``storescu`` over loopback, with 1 and with N parallel
associations, and prints instances/s, MB/s, receiver CPU seconds and peak RSS, plus our ratios to the
reference receivers. Every receiver is started fresh per run so peak RSS is that run's.

Our node runs as the receiver the references are (``model.enabled = false``): the model is loaded once at
start-up and adds its own memory (torch and weights, about 230 MB for the bundled model) whatever the
traffic; ``--with-model`` adds a run of the node as ``serve`` starts it by default, model loaded.

    python3 bench/ingest.py [--instances-per-series 40] [--parallel 4] [--repeat 5] [--workers 2] [--with-model]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_study(folder: Path, per_series: int) -> list[Path]:
    rng = np.random.default_rng(0)
    study = generate_uid()
    files = []
    orientations = {"SAG": [0, 1, 0, 0, 0, -1], "COR": [1, 0, 0, 0, 0, -1], "AX": [1, 0, 0, 0, 1, 0]}
    base = rng.integers(0, 4096, size=(512, 512), dtype=np.uint16)
    for number, (plane, iop) in enumerate(orientations.items(), start=1):
        series = generate_uid()
        for index in range(per_series):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.PatientName, ds.PatientID, ds.Modality = "BENCH^KNEE", "BENCH1", "MR"
            ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = number, index + 1, f"{plane} PD FS"
            ds.ImageOrientationPatient = iop
            ds.ImagePositionPatient = [0.0, 0.0, float(index) * 3.5]
            ds.PixelSpacing, ds.SliceThickness = [0.35, 0.35], 3.0
            ds.Rows = ds.Columns = 512
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.PixelData = np.roll(base, index, axis=0).tobytes()
            path = folder / f"{plane}{index:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files


class Receiver:
    name = "receiver"

    def start(self, workdir: Path) -> None: ...

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.process.returncode}")
            result = subprocess.run(["/usr/bin/echoscu", "-aec", self.ae_title, "127.0.0.1", str(port)],
                                    capture_output=True, env=ENV)
            if result.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready")


class OurNode(Receiver):
    ae_title = "ORTHODIFF"

    def __init__(self, workers: int = 1, model: bool = False, *, data_dir: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        """``data_dir``: the node's data folder (default: ``node`` in the run's folder); ``env``: more
        ``ORTHO_NODE_*`` settings (another bench's database, retention, scheduling)."""
        self.workers, self.model, self.data_dir, self.env = workers, model, data_dir, env or {}
        self.name = ("ortho-node" if workers == 1 else f"ortho-node x{workers}") + (" +model" if model else "")

    def start(self, workdir: Path) -> None:
        self.port = free_port()
        env = {**ENV, "ORTHO_NODE_STORAGE_MIN_FREE_MB": "0", "ORTHO_NODE_LOGGING_LEVEL": "WARNING",
               "ORTHO_NODE_DICOM_WORKERS": str(self.workers), "ORTHO_NODE_MODEL_ENABLED": str(self.model).lower(),
               **self.env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ortho_node.app.cli.main", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(self.data_dir or workdir / "node")], env=env)
        self.wait_ready(self.port)


class Orthanc(Receiver):
    name, ae_title = "orthanc", "ORTHANC"

    def start(self, workdir: Path) -> None:
        self.port = free_port()
        config = {
            "Name": "bench", "StorageDirectory": str(workdir / "orthanc-db"),
            "IndexDirectory": str(workdir / "orthanc-db"), "DicomAet": self.ae_title, "DicomPort": self.port,
            "HttpPort": free_port(), "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "Plugins": [],
        }
        path = workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        self.process = subprocess.Popen(["/usr/sbin/Orthanc", str(path)], env=ENV, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self.wait_ready(self.port)


class Storescp(Receiver):
    name, ae_title = "dcmtk storescp", "STORESCP"

    def start(self, workdir: Path) -> None:
        self.port = free_port()
        out = workdir / "storescp"
        out.mkdir()
        self.process = subprocess.Popen(["/usr/bin/storescp", "-aet", self.ae_title, "-od", str(out),
                                         str(self.port)], env=ENV)
        self.wait_ready(self.port)


def peak_rss_sampler(process: psutil.Process, stop: threading.Event, result: list[int],
                     per_process: dict[str, int]) -> None:
    """Peak of the summed RSS of the receiver and its children, and each process's own peak (by role)."""
    peak = 0
    while not stop.is_set():
        try:
            procs = [process, *process.children(recursive=True)]
            sizes = {_role(p, process): p.memory_info().rss for p in procs}
        except psutil.NoSuchProcess:
            break
        peak = max(peak, sum(sizes.values()))
        for role, rss in sizes.items():
            per_process[role] = max(per_process.get(role, 0), rss)
        stop.wait(0.02)
    result.append(peak)


def _numbered(per_process: dict[str, int]) -> dict[str, float]:
    """``worker-<pid>`` keys as worker1, worker2, ... in pid order (MB), so runs compare."""
    def order(role: str) -> tuple[str, int]:
        kind, _, pid = role.partition("-")
        return kind, int(pid or 0)

    counts: dict[str, int] = {}
    named = {}
    for role in sorted(per_process, key=order):
        kind = order(role)[0]
        counts[kind] = counts.get(kind, 0) + 1
        named[kind if kind in ("main", "tracker") else f"{kind}{counts[kind]}"] = per_process[role] / 1e6
    return named


def _role(proc: psutil.Process, receiver: psutil.Process) -> str:
    if proc.pid == receiver.pid:
        return "main"
    command = " ".join(proc.cmdline())
    kind = "tracker" if "resource_tracker" in command else "worker" if "spawn_main" in command else "child"
    return f"{kind}-{proc.pid}"


def cpu_seconds(process: psutil.Process) -> tuple[float, float]:
    """(user, system) CPU seconds of the receiver and its live worker processes (children are not reaped until the
    end). Apart because they answer different questions: user time is the receiver's own code (for our node the
    interpreter), system time the kernel's work for it (receive, write, fsync)."""
    user = system = 0.0
    for proc in (process, *process.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        user, system = user + times.user, system + times.system
    return user, system


def send(receiver: Receiver, groups: list[list[Path]]) -> float:
    """Seconds to send every group of files, each over its own association (one dcmtk ``storescu`` per group),
    all at once; raises when a sender fails."""
    started = time.perf_counter()
    senders = [subprocess.Popen(["/usr/bin/storescu", "-aec", receiver.ae_title, "127.0.0.1", str(receiver.port),
                                 *map(str, group)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for group in groups]
    failures = [s.communicate()[1] for s in senders if s.wait() != 0]
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{receiver.name}: storescu failed: {failures[0][-500:]!r}")
    return elapsed


def run_once(receiver: Receiver, files: list[Path], parallel: int) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="ingest-", dir=os.environ.get("BENCH_TMP")))
    try:
        receiver.start(workdir)
        proc = psutil.Process(receiver.process.pid)
        cpu_before = cpu_seconds(proc)
        stop, peak, per_process = threading.Event(), [], {}
        sampler = threading.Thread(target=peak_rss_sampler, args=(proc, stop, peak, per_process))
        sampler.start()
        try:
            elapsed = send(receiver, [files[i::parallel] for i in range(parallel)])
            cpu = [after - before for after, before in zip(cpu_seconds(proc), cpu_before)]
        finally:
            stop.set()
            sampler.join()
            receiver.stop()
        size = sum(p.stat().st_size for p in files)
        return {"inst_s": len(files) / elapsed, "mb_s": size / 1e6 / elapsed, "user_s": cpu[0], "sys_s": cpu[1],
                "peak_rss_mb": peak[0] / 1e6, "seconds": elapsed,
                "per_process_mb": _numbered(per_process)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances-per-series", type=int, default=40)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds; each round runs every receiver and case once, in turn")
    parser.add_argument("--workers", type=int, default=2, help="storage worker processes for the second node run")
    parser.add_argument("--with-model", action="store_true", help="also run the node with the model loaded")
    args = parser.parse_args(argv)
    receivers = [OurNode(), OurNode(args.workers), *([OurNode(model=True)] if args.with_model else []),
                 Orthanc(), Storescp()]
    cases = [(receiver, parallel) for receiver in receivers for parallel in (1, args.parallel)]
    runs: dict[tuple[str, int], list[dict]] = {(r.name, p): [] for r, p in cases}
    with tempfile.TemporaryDirectory(prefix="ingest-study-") as folder:
        files = make_study(Path(folder), args.instances_per_series)
        size = sum(p.stat().st_size for p in files) / 1e6
        print(f"study: {len(files)} instances, {size:.1f} MB, 512x512 MR, 3 series; {args.repeat} rounds")
        # Rounds, not one receiver's repeats back to back: on a shared (virtual) machine the rate of every
        # receiver drifts by up to 2x over a minute, and neighbouring runs see the same conditions.
        for _ in range(args.repeat):
            for receiver, parallel in cases:
                runs[(receiver.name, parallel)].append(run_once(receiver, files, parallel))
    print(f"\n{'receiver':16} {'assoc':>5} {'inst/s best':>11} {'median':>7} {'MB/s':>7} {'user s':>6} {'sys s':>6} "
          f"{'peak RSS MB':>12}   (CPU: medians over the rounds)")
    for (name, parallel), results in runs.items():
        best = max(results, key=lambda r: r["inst_s"])
        median = float(np.median([r["inst_s"] for r in results]))
        user, system = (float(np.median([r[key] for r in results])) for key in ("user_s", "sys_s"))
        print(f"{name:16} {parallel:5d} {best['inst_s']:11.1f} {median:7.1f} {best['mb_s']:7.1f} {user:6.2f} "
              f"{system:6.2f} {max(r['peak_rss_mb'] for r in results):12.1f}")
    for (name, parallel), results in runs.items():
        per_process = max(results, key=lambda r: r["peak_rss_mb"])["per_process_mb"]
        if len(per_process) > 1:
            parts = ", ".join(f"{role} {mb:.1f}" for role, mb in sorted(per_process.items()))
            print(f"{name} at {parallel} association(s), peak RSS MB per process: {parts}")
    print("\nratios of instances/s, round by round (median, range):")
    for ours in ("ortho-node", f"ortho-node x{args.workers}"):
        for name in ("orthanc", "dcmtk storescp"):
            for parallel in (1, args.parallel):
                ratios = [m["inst_s"] / r["inst_s"] for m, r in zip(runs[(ours, parallel)], runs[(name, parallel)])]
                print(f"{ours} / {name} at {parallel} association(s): {np.median(ratios):.2f}x "
                      f"({min(ratios):.2f}-{max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
