"""Purge of N studies' rows and files: seconds and peak memory of one pass of the purger (goal for 10,000 studies
on 2 cores: under 60 s and 300 MB); with ``--ingest``, the node's ingest rate while a purge runs (goal: at least
0.8x of the rate without one, same run).

Builds a data folder and a migrated database (SQLite in a temporary folder, or ``--database URL``) directly: per
study one series of ``--instances`` small files, a succeeded job, one result object delivered to one destination;
then runs ``Purger.run()`` with ``instances_days`` and ``results_days`` past due, so every study loses its
instances and its results (one audit event and one timeline step each).

``--ingest``: per round, a freshly built archive (dated 400 days back), then ``ortho-node serve`` on it (127.0.0.1,
a free port, no model: bench/ingest.py's receiver; no study becomes ready while the bench sends, so the node only
receives and what it receives stays unprocessed). A warm-up study, then ``--parallel`` dcmtk ``storescu`` processes
each send a fresh 3-series 512x512 MR study (3 x ``--instances-per-series``) without a purge; then the purge
starts (``--purger cli``: ``ortho-node purge`` as a subprocess on the same data folder and database; ``node``: the
node's own scheduled pass, ``--purge-interval`` after start-up) and, once its first deletion is recorded, as many
again are sent. Prints both rates and their ratio per round, then medians and ranges; how much of the sending the
purge's deletions spanned (first to last audit event; a purge that ends early is reported); and that every
instance received is still there (rows not purged, files present).

    python3 bench/retention.py [--studies 10000] [--instances 3] [--bytes 1024] [--database URL]
    python3 bench/retention.py --ingest [--studies 10000] [--repeat 3] [--parallel 4] [--instances-per-series 40]
        [--workers 1] [--purger cli|node] [--purge-interval 30]
"""

from __future__ import annotations

import argparse
import os
import datetime as dt
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, insert, select  # noqa: E402

from ortho_node.audit.trail import AuditKind  # noqa: E402
from ortho_node.clock import as_utc  # noqa: E402
from ortho_node.config import load_settings  # noqa: E402
from ortho_node.db import migrations  # noqa: E402
from ortho_node.db.engine import make_engine, make_session_factory  # noqa: E402
from ortho_node.db.models import AuditEvent, DeliveryItem, Instance, Job, Series, Study, StudyResult  # noqa: E402
from ortho_node.retention.purger import Purger  # noqa: E402

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
RETENTION_DAYS = 30
MR, SR = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.88.34"


class Clock:
    def now(self) -> dt.datetime:
        return T0 + dt.timedelta(days=400)


def build(session_factory, data_dir: Path, studies: int, instances: int, size: int, t0: dt.datetime = T0) -> None:
    """Rows in bulk (executemany), files written plainly: the archive a node would have after a year, every
    study received at ``t0`` and delivered an hour later."""
    payload = b"\0" * size
    uids = [f"1.2.826.0.1.3680043.10.{n}" for n in range(1, studies + 1)]
    with session_factory.begin() as session:
        session.execute(insert(Study), [{"study_instance_uid": uid, "first_received_at": t0, "last_received_at": t0,
                                         "keep": False} for uid in uids])
        ids = dict(session.execute(select(Study.study_instance_uid, Study.id)).all())
        session.execute(insert(Series), [{"study_id": ids[uid], "series_instance_uid": f"{uid}.1", "modality": "MR",
                                          "instance_count": instances, "first_received_at": t0,
                                          "last_received_at": t0} for uid in uids])
        series = dict(session.execute(select(Series.series_instance_uid, Series.id)).all())
        rows = []
        for uid in uids:
            folder = data_dir / "instances" / uid / f"{uid}.1"
            folder.mkdir(parents=True)
            for index in range(instances):
                relative = f"instances/{uid}/{uid}.1/{uid}.1.{index}.dcm"
                (data_dir / relative).write_bytes(payload)
                rows.append({"series_id": series[f"{uid}.1"], "sop_instance_uid": f"{uid}.1.{index}",
                             "sop_class_uid": MR, "transfer_syntax_uid": "1.2.840.10008.1.2.1", "file_path": relative,
                             "file_size": size, "sha256": "0" * 64, "received_at": t0})
        session.execute(insert(Instance), rows)
        newest = dict(session.execute(select(Series.study_id, func.max(Instance.id)).join(Instance)
                                      .group_by(Series.study_id)).all())
        done = t0 + dt.timedelta(hours=1)
        session.execute(insert(Job), [{"study_id": ids[uid], "state": "succeeded", "reason": "bench",
                                       "last_instance_id": newest[ids[uid]], "attempts": 1, "next_attempt_at": t0,
                                       "created_at": t0, "finished_at": done} for uid in uids])
        results, items = [], []
        for uid in uids:
            path = data_dir / "results" / uid / "job-1" / f"SR_{uid}.9.dcm"
            path.parent.mkdir(parents=True)
            path.write_bytes(payload)
            results.append({"study_instance_uid": uid, "created_at": done, "joint": "knee", "model_name": "bench",
                            "model_version": "1", "model_card": {}, "findings": [], "objects": [
                                {"kind": "sr", "sop_instance_uid": f"{uid}.9", "path": str(path)}]})
            items.append({"destination": "PACS", "study_instance_uid": uid, "series_instance_uid": f"{uid}.9",
                          "sop_instance_uid": f"{uid}.9", "sop_class_uid": SR, "kind": "sr", "file_path": str(path),
                          "state": "delivered", "attempts": 1, "queued_at": done, "next_attempt_at": done,
                          "delivered_at": done})
        session.execute(insert(StudyResult), results)
        session.execute(insert(DeliveryItem), items)


class PeakRss:
    """The process's resident memory, sampled every 20 ms on a thread while the purge runs."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, process.memory_info().rss)
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()


def archive(root: Path, args: argparse.Namespace, **overrides) -> tuple:
    """Settings, engine and sessions of a migrated database with ``args.studies`` studies built in ``root``."""
    settings = load_settings(environ={}, overrides={
        "storage.data_dir": str(root / "data"), "database.url": args.database,
        "retention.instances_days": RETENTION_DAYS, "retention.results_days": RETENTION_DAYS, **overrides})
    engine = make_engine(settings.database_url)
    migrations.upgrade(engine)
    sessions = make_session_factory(engine)
    return settings, engine, sessions


def purge_pass(args: argparse.Namespace) -> None:
    """One ``Purger.run()`` in this process: seconds and peak RSS."""
    root = Path(tempfile.mkdtemp(prefix="ortho-retention-bench-"))
    try:
        settings, engine, sessions = archive(root, args)
        started = time.perf_counter()
        build(sessions, settings.data_dir, args.studies, args.instances, args.bytes)
        built = time.perf_counter() - started
        files = args.studies * (args.instances + 1)
        print(f"built {args.studies} studies, {files} files in {built:.1f} s ({settings.database_url.split(':')[0]})")
        before = psutil.Process().memory_info().rss
        with PeakRss() as rss:
            started = time.perf_counter()
            report = Purger(settings, sessions, clock=Clock()).run()
            seconds = time.perf_counter() - started
        left = sum(1 for _ in (settings.data_dir / "instances").rglob("*.dcm"))
        print(f"purged {len(report.deletions)} deletions ({report.bytes / 2**20:.1f} MB, {left} instance files left) "
              f"in {seconds:.1f} s: {args.studies / seconds:.0f} studies/s")
        print(f"peak RSS during the purge {rss.peak / 2**20:.0f} MB (before it {before / 2**20:.0f} MB)")
        engine.dispose()
    finally:
        shutil.rmtree(root, ignore_errors=True)


#: The node as a receiver only: no study becomes ready while the bench sends (assembly would load the node in
#: one phase and not the other), and the instances received stay unprocessed, so the purge must leave them.
QUIET = {"ORTHO_NODE_SCHEDULING_QUIET_PERIOD": "3600", "ORTHO_NODE_SCHEDULING_LONG_TIMEOUT": "3600",
         "ORTHO_NODE_SCHEDULING_SETTLE_TIME": "3600"}
PURGE_KINDS = (AuditKind.INSTANCES_PURGED.value, AuditKind.RESULTS_PURGED.value)


def node_env(args: argparse.Namespace, *, purges: bool) -> dict[str, str]:
    """``ORTHO_NODE_*`` settings for the node (``purges``: its scheduled pass on) or the purge command."""
    env = {**QUIET, "ORTHO_NODE_LOGGING_LEVEL": "WARNING",
           **({"ORTHO_NODE_DATABASE_URL": args.database} if args.database else {})}
    if purges:
        return {**env, "ORTHO_NODE_RETENTION_INSTANCES_DAYS": str(RETENTION_DAYS),
                "ORTHO_NODE_RETENTION_RESULTS_DAYS": str(RETENTION_DAYS),
                "ORTHO_NODE_RETENTION_PURGE_INTERVAL": str(args.purge_interval)}
    return {**env, "ORTHO_NODE_RETENTION_SUPERSEDE_RESULTS": "false"}  # no purge timer at all


def deletion_times(sessions) -> list[dt.datetime]:
    """When each deletion so far was recorded (its audit event), in order."""
    with sessions() as session:
        return [as_utc(at) for at in session.scalars(select(AuditEvent.at).where(AuditEvent.kind.in_(PURGE_KINDS))
                                                    .order_by(AuditEvent.at))]


def deletions(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.kind.in_(PURGE_KINDS)))


def wait_for_deletions(sessions, count: int, purge: subprocess.Popen | None, *, poll: float,
                       timeout: float = 1800) -> None:
    """Until ``count`` deletions are recorded; raises when the purge command ends short of them, or time runs out."""
    deadline = time.monotonic() + timeout
    while (done := deletions(sessions)) < count:
        if purge is not None and purge.poll() is not None and deletions(sessions) < count:
            raise RuntimeError(f"ortho-node purge exited ({purge.returncode}) after {done} of {count} deletions")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{done} of {count} deletions after {timeout:.0f} s")
        time.sleep(poll)


def study_sets(folder: Path, args: argparse.Namespace) -> dict[str, list[list[Path]]]:
    """A warm-up study and, for each phase, one study per sender (fresh UIDs: nothing is a duplicate)."""
    from bench.ingest import make_study  # here, not at the top: numpy and pydicom would weigh on the purge's RSS

    def study(name: str, per_series: int) -> list[Path]:
        (folder / name).mkdir()
        return make_study(folder / name, per_series)

    sets = {"warm-up": [study("warm-up", 2)]}
    for phase in ("without", "during"):
        sets[phase] = [study(f"{phase}{n}", args.instances_per_series) for n in range(args.parallel)]
    return sets


def one_round(args: argparse.Namespace, sets: dict[str, list[list[Path]]]) -> dict[str, float]:
    """Build the archive, start the node, send without a purge, start the purge, send during it."""
    from bench.ingest import ENV, OurNode, send  # as in study_sets

    root = Path(tempfile.mkdtemp(prefix="ortho-retention-ingest-"))
    node = OurNode(args.workers, data_dir=root / "data", env=node_env(args, purges=args.purger == "node"))
    purge = None
    try:
        settings, engine, sessions = archive(root, args)
        build(sessions, settings.data_dir, args.studies, args.instances, args.bytes,
              t0=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=400))
        node.start(root)
        sent = {phase: sum(len(group) for group in groups) for phase, groups in sets.items()}
        send(node, sets["warm-up"])
        without = send(node, sets["without"])
        if deletions(sessions):
            raise RuntimeError("the node's purge began before the sending without it ended: raise --purge-interval")
        if args.purger == "cli":
            command = [sys.executable, "-m", "ortho_node.app.cli.main", "purge", "--data-dir", str(settings.data_dir)]
            purge = subprocess.Popen(command, env={**ENV, **node_env(args, purges=True)}, stdout=subprocess.DEVNULL)
        started = time.perf_counter()
        wait_for_deletions(sessions, 1, purge, poll=0.05)  # the pass has read the archive and is deleting
        waited = time.perf_counter() - started
        begin = dt.datetime.now(dt.timezone.utc)
        during = send(node, sets["during"])
        end = dt.datetime.now(dt.timezone.utc)
        total = 2 * args.studies  # each study: its instances, then its results
        wait_for_deletions(sessions, total, purge, poll=0.5)
        if purge is not None and purge.wait() != 0:
            raise RuntimeError(f"ortho-node purge exited {purge.returncode}")
        times = deletion_times(sessions)
        overlap = (min(end, times[-1]) - max(begin, times[0])).total_seconds() / (end - begin).total_seconds()
        with sessions() as session:
            kept = session.scalar(select(func.count(Instance.id)).where(Instance.purged_at.is_(None)))
        # os.walk skips folders that vanish under it: the node's pass may still be removing emptied ones.
        files = sum(name.endswith(".dcm") for _, _, names in os.walk(settings.data_dir / "instances") for name in names)
        engine.dispose()
        return {"without": sent["without"] / without, "during": sent["during"] / during,
                "seconds_without": without, "seconds_during": during, "overlap": max(0.0, overlap),
                "deleted_during": sum(1 for t in times if begin <= t <= end), "deletions": len(times),
                "deleting_s": (times[-1] - times[0]).total_seconds(), "waited_s": waited,
                "received": sum(sent.values()), "kept_rows": kept, "kept_files": files}
    finally:
        if purge is not None and purge.poll() is None:
            purge.kill()
        if getattr(node, "process", None) is not None:
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


def ingest_rounds(args: argparse.Namespace) -> int:
    """Every round, then the medians; exit status 1 when a received instance was purged."""
    rounds = []
    with tempfile.TemporaryDirectory(prefix="ortho-retention-studies-") as folder:
        sets = study_sets(Path(folder), args)
        per_phase = args.parallel * 3 * args.instances_per_series
        purger = "ortho-node purge" if args.purger == "cli" else "the node's scheduled purge"
        print(f"{args.studies} archived studies ({args.instances} instances each) per round; {args.parallel} storescu "
              f"x {3 * args.instances_per_series} instances ({per_phase}) without a purge, then as many during "
              f"{purger}; dicom.workers {args.workers}; {args.repeat} rounds")
        for number in range(1, args.repeat + 1):
            r = one_round(args, sets)
            rounds.append(r)
            print(f"round {number}: without {r['without']:.1f} instances/s ({r['seconds_without']:.2f} s), during "
                  f"{r['during']:.1f} ({r['seconds_during']:.2f} s): {r['during'] / r['without']:.2f}x; the purge "
                  f"overlapped {r['overlap']:.0%} of the sending ({r['deleted_during']} of {r['deletions']} deletions "
                  f"in it; deleting for {r['deleting_s']:.1f} s, first one {r['waited_s']:.1f} s after the start); "
                  f"received instances kept {r['kept_rows']} rows, {r['kept_files']} files of {r['received']}")
            if min(r["kept_rows"], r["kept_files"]) != r["received"]:
                print("  RECEIVED INSTANCES WERE PURGED")
            if r["overlap"] < 1:
                print("  the purge did not cover the whole sending: build a larger archive (--studies)")
    for name, key in (("without a purge", "without"), ("during the purge", "during")):
        values = [r[key] for r in rounds]
        print(f"ingest {name}: median {statistics.median(values):.1f} instances/s ({min(values):.1f}-{max(values):.1f})")
    ratios = [r["during"] / r["without"] for r in rounds]
    print(f"ratio during / without: median {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}; "
          f"goal >= 0.8); the purge overlapped {min(r['overlap'] for r in rounds):.0%} of the sending or more")
    return 0 if all(min(r["kept_rows"], r["kept_files"]) == r["received"] for r in rounds) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=10000)
    parser.add_argument("--instances", type=int, default=3, help="instance files per study")
    parser.add_argument("--bytes", type=int, default=1024, help="size of each file")
    parser.add_argument("--database", default="", help="SQLAlchemy URL (default: SQLite in the data folder)")
    ingest = parser.add_argument_group("--ingest: the node's ingest rate without and during a purge, same run")
    ingest.add_argument("--ingest", action="store_true")
    ingest.add_argument("--repeat", type=int, default=3, help="rounds, each on a freshly built archive")
    ingest.add_argument("--parallel", type=int, default=4, help="storescu processes sending at once, one study each")
    ingest.add_argument("--instances-per-series", type=int, default=40,
                        help="each sender's study: 3 series of this many 512x512 MR instances")
    ingest.add_argument("--workers", type=int, default=1, help="the node's dicom.workers")
    ingest.add_argument("--purger", choices=("cli", "node"), default="cli",
                        help="cli: `ortho-node purge` as a subprocess; node: the serving node's scheduled pass")
    ingest.add_argument("--purge-interval", type=float, default=30.0,
                        help="--purger node: retention.purge_interval, the first pass's delay after start-up")
    args = parser.parse_args(argv)
    if not args.ingest:
        purge_pass(args)
        return 0
    if args.database and args.repeat > 1:
        parser.error("--ingest with --database: one round (--repeat 1) per empty database")
    return ingest_rounds(args)


if __name__ == "__main__":
    raise SystemExit(main())
