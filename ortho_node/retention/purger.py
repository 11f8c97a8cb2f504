"""The one purger: deletes what the retention rules (``ortho_node.retention.rules``) and the disk watermark allow,
each deletion an audit event and a timeline step, the study's rows kept and marked.

Safe from several processes sharing a database: a study's instances or results are deleted only under a lease
taken by one conditional UPDATE that re-checks, in the database, that the study is still not kept, has no job
queued or running, no delivery pending or failed and no instance newer than the decision saw; a second purger's
UPDATE matches no row. The lease is taken and committed before any file goes, and the study is marked purged
after its files are gone; a pass interrupted in between leaves a lease that expires (``LEASE``) and the next pass
finishes the study (a file already gone is not an error).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import exists, false, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.timeline import Step, entry
from ortho_node.audit.trail import AuditKind, Severity, make_event
from ortho_node.clock import Clock, SystemClock
from ortho_node.config.schema import Settings
from ortho_node.db.models import DeliveryItem, Instance, Job, Series, Study, StudyResult
from ortho_node.intake.storage import InstanceStore, InvalidUID, LocalInstanceStore
from ortho_node.model.registry import SHADOW_FOLDER
from ortho_node.retention.deletion import Deletion, delete_files, file_size, remove_empty_folders
from ortho_node.retention.inventory import instance_files, result_paths, shadow_paths, study_facts
from ortho_node.retention.rules import (ACTIVE_STATES, Action, StudyFacts, hold_reason, instances_due, results_due,
                                        watermark_eligible)
from ortho_node.retention.superseded import remove_superseded

log = logging.getLogger(__name__)

MB = 1024 * 1024
#: How long a purger's claim on a study holds; longer than deleting one study's files ever takes.
LEASE = dt.timedelta(minutes=15)
#: Delivery states that mean an object is still owed (``ortho_node.delivery.queue.State`` values).
UNDELIVERED = ("pending", "failed")

FreeBytes = Callable[[Path], int]
#: While the node is receiving, a pass works at most this share of the time (the rest it sleeps): housekeeping
#: gives way to intake, whose senders wait on every acknowledgement (bench/retention.py --ingest).
BUSY_DUTY = 0.25


class Pacer:
    """Called after each study a pass deletes: while ``busy()`` (associations open), sleeps long enough that the
    pass works at most ``duty`` of the time; idle, it never sleeps, so a quiet node purges at full speed."""

    def __init__(self, busy: Callable[[], bool], duty: float = BUSY_DUTY,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not 0.0 < duty <= 1.0:
            raise ValueError(f"duty must be in (0, 1], got {duty}")
        self._busy, self._duty, self._sleep = busy, duty, sleep
        self._mark = time.monotonic()

    def start(self) -> None:
        self._mark = time.monotonic()

    def __call__(self) -> None:
        worked = time.monotonic() - self._mark
        if self._busy():
            self._sleep(worked * (1.0 / self._duty - 1.0))
        self._mark = time.monotonic()


def disk_free(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (tests inject their own)."""
    return shutil.disk_usage(path).free


@dataclass
class PurgeReport:
    dry_run: bool
    deletions: list[Deletion] = field(default_factory=list)
    held: Counter[str] = field(default_factory=Counter)  # why studies were left alone, counted
    free_before: int | None = None  # measured only when a watermark is configured
    free_after: int | None = None
    short: bool = False  # below the watermark, and nothing more may be deleted

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.deletions)

    def as_dict(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "deletions": [d.as_dict() for d in self.deletions],
                "held": dict(self.held), "free_before": self.free_before, "free_after": self.free_after,
                "short": self.short}


class Purger:
    """``run`` makes one pass; the node schedules it every ``retention.purge_interval`` seconds and ``ortho-node
    purge`` runs it once. ``clock`` and ``free_bytes`` are the only things tests replace."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session], *, clock: Clock | None = None,
                 free_bytes: FreeBytes = disk_free, busy: Callable[[], bool] | None = None,
                 store: InstanceStore | None = None) -> None:
        """``busy``: whether the node is receiving now (the serving node: associations open); a pass then
        paces itself (:class:`Pacer`). ``store``: where the instances are (the node's; default the data
        folder's)."""
        self.retention = settings.retention
        self._session_factory = session_factory
        self._clock = clock or SystemClock()
        self._free_bytes = free_bytes
        self._data_dir = settings.data_dir.resolve()  # resolved: emptied result folders are found below it
        self._store: InstanceStore = store or LocalInstanceStore(settings.data_dir, fsync=False)
        self._deleted: list[str] = []  # instance keys deleted in this pass (their emptied folders go at its end)
        self._short_reported = False
        self._emptied: defaultdict[Path, set[Path]] = defaultdict(set)  # root -> folders emptied in this pass
        self._pace = Pacer(busy) if busy is not None else None

    @property
    def results_root(self) -> Path:
        return self._data_dir / "results"

    def run(self, *, dry_run: bool = False) -> PurgeReport:
        report = PurgeReport(dry_run)
        now = self._clock.now()
        self._emptied = defaultdict(set)
        self._deleted = []
        if self._pace is not None:
            self._pace.start()
        with self._session_factory() as session:
            facts = study_facts(session)
        if self.retention.supersede_results:
            for study in facts:
                if len(study.results_on_disk) > 1:
                    done = remove_superseded(self._session_factory, study.uid, results_root=self.results_root, now=now,
                                            dry_run=dry_run)
                    report.deletions.extend(done)
        purged: set[int] = set()
        for study in facts:
            self._by_age(study, now, report, purged, dry_run)
        self._watermark(facts, now, report, purged, dry_run)
        for root, folders in self._emptied.items():  # once, in parallel: see remove_empty_folders
            remove_empty_folders(folders, stop=root)
        self._store.prune_empty(self._deleted)
        waiting = sum(1 for s in facts if s.id not in purged and not s.instances_purged
                      and s.newest_instance_id is not None and not hold_reason(s))
        if waiting:
            report.held["within retention"] = waiting
        self._log(report)
        return report

    def _by_age(self, study: StudyFacts, now: dt.datetime, report: PurgeReport, purged: set[int],
                dry_run: bool) -> None:
        held = hold_reason(study)
        if held:
            report.held[held] += 1
            return
        reason, results_reason = instances_due(study, self.retention, now), results_due(study, self.retention, now)
        # Both due: the results go under the lease the instances took (one claim, not two, per study).
        leased = bool(reason) and self._purge_instances(study, reason, "age", now, report, dry_run,
                                                        keep_lease=bool(results_reason))
        if leased:
            purged.add(study.id)
        if results_reason:
            self._purge_results(study, results_reason, now, report, dry_run, leased=leased)

    def _watermark(self, facts: list[StudyFacts], now: dt.datetime, report: PurgeReport, purged: set[int],
                   dry_run: bool) -> None:
        """Below ``purge_below_free_mb`` free, the oldest eligible studies lose their instances until
        ``purge_until_free_mb`` are free."""
        below, until = self.retention.purge_below_free_mb * MB, self.retention.purge_until_free_mb * MB
        if not below:
            return
        free = report.free_before = self._free_bytes(self._data_dir)
        if free >= below:
            report.free_after = free
            self._short_reported = False
            return
        candidates = sorted((s for s in facts if s.id not in purged and watermark_eligible(s, self.retention, now)),
                            key=lambda s: (s.first_received_at, s.id))
        for study in candidates:
            if free >= until:
                break
            reason = (f"free space {free // MB} MB below retention.purge_below_free_mb "
                      f"{self.retention.purge_below_free_mb}: oldest studies first")
            if self._purge_instances(study, reason, "watermark", now, report, dry_run):
                purged.add(study.id)
                # A dry run deletes nothing, so it counts what would be freed; a real pass measures again.
                free = free + study.instance_bytes if dry_run else self._free_bytes(self._data_dir)
        report.free_after = free
        report.short = free < until
        if report.short and not dry_run:
            self._report_short(free, until)

    def _report_short(self, free: int, until: int) -> None:
        message = (f"free space {free // MB} MB still below retention.purge_until_free_mb {until // MB}: nothing "
                   "more may be deleted (kept, unprocessed or undelivered studies, or within min_keep_hours)")
        log.warning("%s", message)
        if not self._short_reported:  # one audit event per episode, not one per pass
            with self._session_factory.begin() as session:
                session.add(make_event(AuditKind.PURGE_SHORT, message, severity=Severity.WARNING,
                                       details={"free_bytes": free, "target_bytes": until}))
            self._short_reported = True

    def _purge_instances(self, study: StudyFacts, reason: str, rule: str, now: dt.datetime, report: PurgeReport,
                         dry_run: bool, keep_lease: bool = False) -> bool:
        """Delete the study's received instances under its lease; ``keep_lease``: hold it on for the results."""
        if dry_run:
            report.deletions.append(Deletion(study.uid, Action.INSTANCES.value, reason, study.instance_files,
                                             study.instance_bytes))
            return True
        if study.newest_instance_id is None or not self._claim(study, now, Study.instances_purged_at.is_(None)):
            report.held["claimed by another purger or changed"] += 1
            return False
        with self._session_factory() as session:
            files = instance_files(session, study.id, study.newest_instance_id)
        try:
            gone = self._delete_instance_files(files)
        except OSError as exc:  # permissions, I/O error: the study stays unpurged, the lease expires, retried
            log.error("study %s: instances could not be deleted: %s", study.uid, exc)
            report.held["deletion failed"] += 1
            return False
        details = {"rule": rule, "reason": reason, "files": len(files), "bytes": study.instance_bytes,
                   "already_gone": gone}
        message = f"{len(files)} received instances deleted ({study.instance_bytes / MB:.1f} MB): {reason}"
        with self._session_factory.begin() as session:
            session.execute(update(Study).where(Study.id == study.id).values(
                instances_purged_at=now, purge_reason=f"{rule}: {reason}",
                purge_claimed_at=now if keep_lease else None,
                patient_id=None, patient_name=None))  # identifiers go with the received instances
            session.execute(update(Instance).where(
                Instance.series_id.in_(select(Series.id).where(Series.study_id == study.id)),
                Instance.id <= study.newest_instance_id, Instance.purged_at.is_(None))
                .values(purged_at=now).execution_options(synchronize_session=False))
            self._record(session, study.uid, AuditKind.INSTANCES_PURGED, Step.INSTANCES_PURGED, message, details, now)
        report.deletions.append(Deletion(study.uid, Action.INSTANCES.value, reason, len(files), study.instance_bytes))
        if self._pace is not None:
            self._pace()
        return True

    def _purge_results(self, study: StudyFacts, reason: str, now: dt.datetime, report: PurgeReport,
                       dry_run: bool, leased: bool = False) -> None:
        """Delete the study's result objects under its lease (``leased``: taken already, by its instances)."""
        with self._session_factory() as session:
            paths = result_paths(session, study.results_on_disk)
            shadow = shadow_paths(session, study.uid, self._data_dir)
        results = [path for group in paths.values() for path in group]
        files = results + shadow
        size = sum(file_size(path) for path in files)
        if dry_run:
            report.deletions.append(Deletion(study.uid, Action.RESULTS.value, reason, len(files), size))
            return
        if not leased and not self._claim(study, now):
            report.held["claimed by another purger or changed"] += 1
            return
        try:
            gone = delete_files(files)
        except OSError as exc:  # as for instances: retried once the lease expires
            log.error("study %s: result objects could not be deleted: %s", study.uid, exc)
            report.held["deletion failed"] += 1
            return
        self._emptied[self.results_root].update(path.parent for path in results)
        self._emptied[self._data_dir / SHADOW_FOLDER].update(path.parent for path in shadow)
        details = {"reason": reason, "files": len(files), "bytes": size, "already_gone": gone,
                   "result_ids": list(study.results_on_disk), "shadow_files": len(shadow)}
        with self._session_factory.begin() as session:
            session.execute(update(StudyResult).where(StudyResult.id.in_(study.results_on_disk),
                                                      StudyResult.files_removed_at.is_(None))
                            .values(files_removed_at=now, files_removed_reason="retention"))
            session.execute(update(Study).where(Study.id == study.id).values(results_purged_at=now,
                                                                             purge_claimed_at=None))
            self._record(session, study.uid, AuditKind.RESULTS_PURGED, Step.RESULTS_PURGED,
                         f"{len(files)} result objects deleted: {reason}", details, now)
        report.deletions.append(Deletion(study.uid, Action.RESULTS.value, reason, len(files), size))
        if self._pace is not None:
            self._pace()

    def _claim(self, study: StudyFacts, now: dt.datetime, *conditions) -> bool:
        """Take the study's lease if, in the database now, it is still not kept, has no active job, nothing
        undelivered and no instance newer than the decision saw, and no other purger holds it."""
        newer = select(Instance.id).join(Series, Instance.series_id == Series.id).where(
            Series.study_id == study.id, Instance.id > (study.newest_instance_id or 0))
        active = select(Job.id).where(Job.study_id == study.id, Job.state.in_(ACTIVE_STATES))
        owed = select(DeliveryItem.id).where(DeliveryItem.study_instance_uid == study.uid,
                                             DeliveryItem.state.in_(UNDELIVERED))
        with self._session_factory.begin() as session:
            result = session.execute(
                update(Study).where(Study.id == study.id, Study.keep == false(), *conditions,
                                    or_(Study.purge_claimed_at.is_(None), Study.purge_claimed_at < now - LEASE),
                                    ~exists(newer), ~exists(active), ~exists(owed))
                .values(purge_claimed_at=now).execution_options(synchronize_session=False))
            return result.rowcount == 1

    def _delete_instance_files(self, keys: list[str]) -> int:
        """Delete the instances (never outside the store); returns how many were already gone."""
        gone = 0
        for key in keys:
            try:
                gone += not self._store.delete(key)
            except InvalidUID:  # a row pointing outside the store is never followed
                log.error("an instance row names a path outside the data folder; not deleted")
                continue
            self._deleted.append(key)
        return gone

    @staticmethod
    def _record(session: Session, uid: str, kind: AuditKind, step: Step, message: str, details: dict,
                now: dt.datetime) -> None:
        session.add(make_event(kind, message, study_instance_uid=uid, details=details))
        session.add(entry(step, uid, message, at=now, data=details))

    def _log(self, report: PurgeReport) -> None:
        if not report.deletions:
            log.debug("purge: nothing to delete; held %s", dict(report.held))
            return
        counts = Counter(d.what for d in report.deletions)
        log.info("purge%s: %s; %.1f MB%s", " (dry run)" if report.dry_run else "",
                 ", ".join(f"{n} studies' {what}" for what, n in sorted(counts.items())), report.bytes / MB,
                 "" if report.free_after is None else f"; {report.free_after // MB} MB free")
