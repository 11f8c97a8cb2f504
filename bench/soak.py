"""Soak: sustained C-STORE load on a node for minutes, with its memory and file descriptors over time.

Starts ``ortho-node serve`` on a free 127.0.0.1 port (as ``bench/ingest.py`` does: model not loaded unless
``--with-model``), then runs ``--senders`` dcmtk ``/usr/bin/storescu`` processes back to back until
``--minutes`` have passed: each association sends a fresh knee series (new study, series and SOP Instance
UIDs written into template files, so every instance is stored, never a duplicate). Every ``--interval``
seconds it prints instances/s, the node's RSS (main process and workers) and its open file descriptors; at
the end instances/s, acknowledged vs stored (the acknowledged SOP Instance UIDs missing from the database),
RSS growth after the first interval, and the descriptor range.

    python3 bench/soak.py --minutes 5 [--senders 4] [--per-association 20] [--rows 256] [--workers 1] [--json]

Issue 23's goals: >= 50 instances/s, 0 acknowledged instances missing, RSS growth < 50 MB, descriptors flat.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest import ENV, OurNode  # noqa: E402

STORESCU = "/usr/bin/storescu"  # dcmtk's (the storescu on PATH may be pynetdicom's)
PREFIX = "1.2.826.0.1.3680043.10.543."  # UIDs: PREFIX + kind + "." + a 20-digit number starting with 9
_SENDING = re.compile(r"Sending file: (\S+)")
_SUCCESS = "Received Store Response (Success)"


def _uid(kind: int, number: int) -> str:
    return f"{PREFIX}{kind}.9{number:019d}"


def make_templates(folder: Path, count: int, rows: int) -> list[bytes]:
    """``count`` sagittal knee slices as Part 10 bytes, with placeholder UIDs (:func:`_uid` of number 0)."""
    rng = np.random.default_rng(23)
    base = rng.integers(0, 4096, size=(rows, rows), dtype=np.uint16)
    templates = []
    for index in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, _uid(3, index)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(1, 0), _uid(2, 0)
        ds.PatientName, ds.PatientID, ds.Modality = "SOAK^KNEE", "SOAK1", "MR"
        ds.BodyPartExamined, ds.SeriesDescription = "KNEE", "SAG PD FS"
        ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [float(index) * 3.5, -100.0, 100.0]
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 3.0
        ds.Rows = ds.Columns = rows
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.roll(base, index, axis=0).tobytes()
        path = folder / f"template{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        templates.append(path.read_bytes())
        path.unlink()
    return templates


def write_round(templates: list[bytes], folder: Path, round_id: int) -> dict[str, str]:
    """Fresh UIDs for one association's series, written into the templates; file path -> SOP Instance UID."""
    files = {}
    study, series = _uid(1, round_id), _uid(2, round_id)
    for index, template in enumerate(templates):
        sop = _uid(3, round_id * 10_000 + index)
        data = template.replace(_uid(1, 0).encode(), study.encode()).replace(_uid(2, 0).encode(), series.encode())
        path = folder / f"{index:03d}.dcm"
        path.write_bytes(data.replace(_uid(3, index).encode(), sop.encode()))
        files[str(path)] = sop
    return files


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    acknowledged: set[str] = field(default_factory=set)
    failed_associations: int = 0


def sender(index: int, port: int, templates: list[bytes], folder: Path, deadline: float, tally: Tally) -> None:
    """Associations back to back until the deadline, each a new series through dcmtk storescu."""
    folder.mkdir()
    for round_number in range(1, 10**9):
        if time.monotonic() >= deadline:
            return
        files = write_round(templates, folder, index * 10**7 + round_number)
        result = subprocess.run([STORESCU, "-v", "-aec", "ORTHODIFF", "127.0.0.1", str(port), *files],
                                capture_output=True, text=True, env=ENV)
        acknowledged, current = set(), None
        for line in (result.stdout + result.stderr).splitlines():
            if match := _SENDING.search(line):
                current = files.get(match.group(1))
            elif _SUCCESS in line and current is not None:
                acknowledged.add(current)
        with tally.lock:
            tally.sent += len(files)
            tally.acknowledged |= acknowledged
            tally.failed_associations += result.returncode != 0


def node_resources(process: psutil.Process) -> tuple[int, int]:
    """RSS (bytes) and open file descriptors of the node and its worker processes."""
    rss = fds = 0
    for proc in (process, *process.children(recursive=True)):
        try:
            rss += proc.memory_info().rss
            fds += proc.num_fds()
        except psutil.NoSuchProcess:
            continue
    return rss, fds


def stored_uids(data_dir: Path) -> set[str]:
    with sqlite3.connect(data_dir / "ortho-node.db") as db:
        return {row[0] for row in db.execute("SELECT sop_instance_uid FROM instances")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--senders", type=int, default=4, help="parallel storescu processes (associations)")
    parser.add_argument("--per-association", type=int, default=20, help="instances per association")
    parser.add_argument("--rows", type=int, default=256, help="image rows and columns")
    parser.add_argument("--workers", type=int, default=1, help="the node's dicom.workers")
    parser.add_argument("--with-model", action="store_true", help="load the model as serve does by default")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--json", action="store_true", help="end with the figures as one JSON line")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    node = OurNode(args.workers, args.with_model, data_dir=workdir / "node")
    try:
        templates = make_templates(workdir, args.per_association, args.rows)
        node.start(workdir)
        process = psutil.Process(node.process.pid)
        print(f"node {node.name} on 127.0.0.1:{node.port}; {args.senders} dcmtk storescu senders, "
              f"{args.per_association} instances of {args.rows}x{args.rows} ({len(templates[0]) / 1e3:.0f} kB) "
              f"per association, {args.minutes:g} min")
        tally = Tally()
        started = time.monotonic()
        deadline = started + args.minutes * 60
        threads = [threading.Thread(target=sender, args=(i, node.port, templates, workdir / f"sender{i}", deadline,
                                                         tally)) for i in range(args.senders)]
        for thread in threads:
            thread.start()
        samples = [(0.0, 0, *node_resources(process))]
        print(f"{'s':>6} {'acked':>7} {'inst/s':>7} {'RSS MB':>7} {'fds':>5}")
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(timeout=max(0.0, args.interval - (time.monotonic() - started - samples[-1][0])))
            with tally.lock:
                acked = len(tally.acknowledged)
            now = time.monotonic() - started
            if now - samples[-1][0] < 1.0 and len(samples) > 1:
                samples.pop()  # the senders' last round ended just after a sample: replace it
            rss, fds = node_resources(process)
            rate = (acked - samples[-1][1]) / (now - samples[-1][0])
            samples.append((now, acked, rss, fds))
            print(f"{now:6.0f} {acked:7d} {rate:7.1f} {rss / 1e6:7.1f} {fds:5d}")
        elapsed = time.monotonic() - started
        if node.process.poll() is not None:
            print(f"node exited with {node.process.returncode}")
            return 1
        stored = stored_uids(workdir / "node")
        missing = tally.acknowledged - stored
        after_first = samples[1:] or samples
        growth = (samples[-1][2] - after_first[0][2]) / 1e6
        fds_seen = [s[3] for s in after_first]
        print(f"\ninstances/s: {len(tally.acknowledged) / elapsed:.1f} ({len(tally.acknowledged)} in {elapsed:.0f} s)")
        print(f"sent {tally.sent}, acknowledged {len(tally.acknowledged)}, stored {len(stored)}, "
              f"acknowledged but missing {len(missing)}; failed associations {tally.failed_associations}")
        print(f"RSS: {samples[0][2] / 1e6:.1f} MB at start, {after_first[0][2] / 1e6:.1f} MB after "
              f"{after_first[0][0]:.0f} s, {samples[-1][2] / 1e6:.1f} MB at the end: growth {growth:+.1f} MB")
        print(f"open file descriptors: {samples[0][3]} at start, {min(fds_seen)}-{max(fds_seen)} under load, "
              f"{samples[-1][3]} at the end")
        if args.json:
            print(json.dumps({
                "instances_per_s": len(tally.acknowledged) / elapsed, "seconds": elapsed, "sent": tally.sent,
                "acknowledged": len(tally.acknowledged), "stored": len(stored), "missing": len(missing),
                "failed_associations": tally.failed_associations, "rss_growth_mb": growth,
                "fds_start": samples[0][3], "fds_first_interval": after_first[0][3], "fds_min": min(fds_seen),
                "fds_max": max(fds_seen), "fds_end": samples[-1][3],
            }))
        return 0 if not missing and tally.failed_associations == 0 else 1
    finally:
        node.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
