"""End-to-end benchmark: synthetic three-plane knee studies sent over loopback to ``ortho-node serve`` (a
subprocess with the bundled model on the CPU), whose results go to a real Orthanc acting as the PACS.

1. One study: the turnaround from the last instance acknowledged to the last result acknowledged by the
   PACS, split from the node's own timeline (``ortho-node audit timeline``) into completeness wait, queue
   (job queue), assembly, inference, report building (SEG + SR + summary built and written)
   and delivery.
2. ``--studies`` studies arriving at once (one association each, all in parallel, each from its own dcmtk
   ``storescu`` process): studies per hour from
   the first instance received to the last result acknowledged, turnaround percentiles, and a check that no
   study was lost or delivered twice.

Goals on 2 CPU cores: turnaround under 30 s plus the completeness wait; nothing lost or delivered twice.
Prints figures, asserts nothing about time.

    python3 bench/e2e.py [--studies 20] [--quiet-period 2] [--settle-time 2] [--seed 100]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ortho_node.audit.views import percentile  # noqa: E402
from ortho_node.delivery.scu import RemoteNode  # noqa: E402
from ortho_node.synthetic import generate_study  # noqa: E402
from ortho_node.synthetic.dicom_writer import write_series  # noqa: E402
from tests.end_to_end.round_trip import NODE_AE, RoundTrip  # noqa: E402

SENDER_AE = "MR1"
STORESCU = "/usr/bin/storescu"  # dcmtk's (the storescu on PATH may be pynetdicom's)
PARTS = ("completeness wait", "queue (jobs, device)", "assembly", "inference", "report building", "delivery")


def write_studies(folder: Path, count: int, seed: int) -> list[tuple[str, list[Path]]]:
    """``count`` knee studies (sagittal, coronal, axial; default domain randomisation) as DICOM files."""
    studies = []
    for k in range(count):
        study = generate_study("knee", seed + k)
        files = [path for series in study.series
                 for path in write_series(study, series, folder / f"study-{k}" / series.uid)]
        studies.append((study.study_uid, files))
    return studies


def send(remote: RemoteNode, files: list[Path]) -> None:
    """One association from a dcmtk ``storescu`` process: senders of their own, so the figures are the node's
    (in-process pynetdicom senders shared this interpreter's GIL and lost associations while it was busy)."""
    result = subprocess.run([STORESCU, "-v", "-aet", SENDER_AE, "-aec", remote.ae_title, remote.host,
                             str(remote.port), *map(str, files)], capture_output=True, text=True, timeout=600)
    acknowledged = (result.stdout + result.stderr).count("Received Store Response (Success)")
    if result.returncode != 0 or acknowledged != len(files):
        errors = [line for line in result.stderr.splitlines() if line.startswith(("E:", "F:"))]
        raise RuntimeError(f"{len(files) - acknowledged} of {len(files)} instances not acknowledged "
                           f"(storescu exit {result.returncode}): {errors[:1]}")


def split(timeline: list[dict]) -> dict[str, float]:
    """Seconds per part of the turnaround, from one job's timeline (the last attempt's steps)."""
    at = {}
    for entry in timeline:  # later entries win: the attempt that succeeded
        at[entry["step"]] = entry["at"]
    delivered = max(e["at"] for e in timeline if e["step"] == "delivered")

    def seconds(start: str, end: str) -> float:
        return (at[end] - at[start]).total_seconds()

    parts = dict(zip(PARTS, (
        seconds("last_received", "ready"),
        seconds("ready", "job_started") + seconds("assembled", "inference_started"),
        seconds("job_started", "assembled"),
        seconds("inference_started", "inference_finished"),
        seconds("inference_finished", "objects_built"),
        (delivered - at["objects_built"]).total_seconds(),
    )))
    parts["turnaround"] = (delivered - at["last_received"]).total_seconds()
    return parts


def check_once(trip: RoundTrip, study_uid: str) -> tuple[int, int]:
    """(objects lost, objects delivered more than once) for one study."""
    results = trip.results(study_uid)
    if len(results) != 1 or trip.job_states(study_uid) != ["succeeded"]:
        print(f"  study {study_uid}: {len(results)} result sets, jobs {trip.job_states(study_uid)}")
    wanted = {obj["sop_instance_uid"] for result in results for obj in result["objects"]}
    lost = len(wanted - trip.pacs_sop_uids(study_uid)) if wanted else 1
    acknowledged = Counter(e["data"]["sop_instance_uid"] for e in trip.timeline(study_uid) if e["step"] == "delivered")
    attempts = sum(item.attempts - 1 for item in trip.deliveries(study_uid))  # a resend would also count here
    return lost, sum(n - 1 for n in acknowledged.values()) + attempts


def one_study(trip: RoundTrip, remote: RemoteNode, study: tuple[str, list[Path]], timeout: float) -> None:
    uid, files = study
    send(remote, files)
    trip.wait_until_delivered(uid, timeout=timeout)
    timeline = trip.timeline(uid)
    parts = split(timeline)
    ready = next(e for e in timeline if e["step"] == "ready")
    [result] = trip.results(uid)
    kinds = Counter(obj["kind"] for obj in result["objects"])
    objects = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    print(f"one three-plane knee study ({len(files)} instances; {objects} delivered to Orthanc):")
    for name in PARTS:
        print(f"  {name:28s} {parts[name]:7.2f} s")
    print(f"  {'turnaround':28s} {parts['turnaround']:7.2f} s   (ready: {ready['data']['reason']})")


def many_studies(trip: RoundTrip, remote: RemoteNode, studies: list[tuple[str, list[Path]]], timeout: float) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(studies)) as pool:
        list(pool.map(lambda study: send(remote, study[1]), studies))
    sent = time.monotonic() - started
    for uid, _ in studies:
        trip.wait_until_delivered(uid, timeout=timeout)
    timelines = [trip.timeline(uid) for uid, _ in studies]
    first = min(e["at"] for t in timelines for e in t if e["step"] == "first_received")
    last = max(e["at"] for t in timelines for e in t if e["step"] == "delivered")
    window = (last - first).total_seconds()
    turnarounds = [split(t)["turnaround"] for t in timelines]
    waits = [split(t)["queue (jobs, device)"] for t in timelines]
    checks = [check_once(trip, uid) for uid, _ in studies]
    print(f"{len(studies)} knee studies arriving at once ({sum(len(f) for _, f in studies)} instances, all "
          f"acknowledged in {sent:.1f} s):")
    print(f"  first instance received -> last result acknowledged: {window:.1f} s = "
          f"{len(studies) * 3600 / window:.0f} studies per hour")
    print(f"  turnaround p50 {percentile(turnarounds, 50):.1f} s, p90 {percentile(turnarounds, 90):.1f} s, "
          f"max {max(turnarounds):.1f} s (queue wait p50 {percentile(waits, 50):.1f} s)")
    print(f"  lost: {sum(lost for lost, _ in checks)} objects; delivered twice: {sum(d for _, d in checks)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20, help="studies arriving at once (default 20)")
    parser.add_argument("--quiet-period", type=float, default=2.0, help="scheduling.quiet_period (s)")
    parser.add_argument("--settle-time", type=float, default=2.0, help="scheduling.settle_time (s)")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # readiness probes fail until the node listens
    print(f"{os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        studies = write_studies(work / "studies", args.studies + 1, args.seed)
        trip = RoundTrip(work / "round-trip", node_env={
            "ORTHO_NODE_SCHEDULING_QUIET_PERIOD": str(args.quiet_period),
            "ORTHO_NODE_SCHEDULING_SETTLE_TIME": str(args.settle_time),
            "ORTHO_NODE_SCHEDULING_LONG_TIMEOUT": "120", "ORTHO_NODE_STORAGE_FSYNC": "true",
            "ORTHO_NODE_DICOM_ALLOWED_CALLING_AETS": "", "ORTHO_NODE_DELIVERY_POLL_INTERVAL": "5",
            # Every study on its own association at once: beyond 16 the default limit rejects (transient).
            "ORTHO_NODE_DICOM_MAX_ASSOCIATIONS": str(max(16, args.studies))})
        try:
            remote = RemoteNode(NODE_AE, "127.0.0.1", trip.node.port)
            print(f"node: quiet_period {args.quiet_period:g} s, settle_time {args.settle_time:g} s, max_associations "
                  f"{max(16, args.studies)}, concurrency 2 (defaults otherwise), fsync on; PACS: Orthanc on loopback")
            one_study(trip, remote, studies[0], args.timeout)
            many_studies(trip, remote, studies[1:], args.timeout)
        finally:
            trip.stop()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
