"""Purge of N studies' rows and files: seconds and peak memory of one pass of the purger (goal for 10,000 studies
on 2 cores: under 60 s and 300 MB).

Builds a data folder and a migrated database (SQLite in a temporary folder, or ``--database URL``) directly: per
study one series of ``--instances`` small files, a succeeded job, one result object delivered to one destination;
then runs ``Purger.run()`` with ``instances_days`` and ``results_days`` past due, so every study loses its
instances and its results (one audit event and one timeline step each). The node's ingest rate while a purge
runs is not measured here.

    python3 bench/retention.py [--studies 10000] [--instances 3] [--bytes 1024] [--database URL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, insert, select  # noqa: E402

from ortho_node.config import load_settings  # noqa: E402
from ortho_node.db import migrations  # noqa: E402
from ortho_node.db.engine import make_engine, make_session_factory  # noqa: E402
from ortho_node.db.models import DeliveryItem, Instance, Job, Series, Study, StudyResult  # noqa: E402
from ortho_node.retention.purger import Purger  # noqa: E402

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
MR, SR = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.88.34"


class Clock:
    def now(self) -> dt.datetime:
        return T0 + dt.timedelta(days=400)


def build(session_factory, data_dir: Path, studies: int, instances: int, size: int) -> None:
    """Rows in bulk (executemany), files written plainly: the archive a node would have after a year."""
    payload = b"\0" * size
    uids = [f"1.2.826.0.1.3680043.10.{n}" for n in range(1, studies + 1)]
    with session_factory.begin() as session:
        session.execute(insert(Study), [{"study_instance_uid": uid, "first_received_at": T0, "last_received_at": T0,
                                         "keep": False} for uid in uids])
        ids = dict(session.execute(select(Study.study_instance_uid, Study.id)).all())
        session.execute(insert(Series), [{"study_id": ids[uid], "series_instance_uid": f"{uid}.1", "modality": "MR",
                                          "instance_count": instances, "first_received_at": T0,
                                          "last_received_at": T0} for uid in uids])
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
                             "file_size": size, "sha256": "0" * 64, "received_at": T0})
        session.execute(insert(Instance), rows)
        newest = dict(session.execute(select(Series.study_id, func.max(Instance.id)).join(Instance)
                                      .group_by(Series.study_id)).all())
        done = T0 + dt.timedelta(hours=1)
        session.execute(insert(Job), [{"study_id": ids[uid], "state": "succeeded", "reason": "bench",
                                       "last_instance_id": newest[ids[uid]], "attempts": 1, "next_attempt_at": T0,
                                       "created_at": T0, "finished_at": done} for uid in uids])
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10000)
    parser.add_argument("--instances", type=int, default=3, help="instance files per study")
    parser.add_argument("--bytes", type=int, default=1024, help="size of each file")
    parser.add_argument("--database", default="", help="SQLAlchemy URL (default: SQLite in the data folder)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ortho-retention-bench-"))
    try:
        settings = load_settings(environ={}, overrides={
            "storage.data_dir": str(root / "data"), "database.url": args.database,
            "retention.instances_days": 30, "retention.results_days": 30})
        engine = make_engine(settings.database_url)
        migrations.upgrade(engine)
        sessions = make_session_factory(engine)
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


if __name__ == "__main__":
    main()
