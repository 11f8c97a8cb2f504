"""One copy of results per study: once a newer job's result set is written, the files of the study's earlier
sets are deleted (their ``study_results`` rows stay, marked ``superseded_by`` and ``files_removed_at``).

The delivery queue stays consistent: a queue row of an earlier object that the newest set holds again (the same
SOP Instance UID: results derive their UIDs from the inputs) and that is not being sent (delivered or failed)
is pointed at the newest file, so ``resend`` finds it; a file a pending row still names, or a failed row of an
object the newest set does not hold, is kept (an undelivered object is never deleted) and retried at the next
pass. Deleting a file that is already gone is not an error, and only the pass whose conditional UPDATE marks a
set writes its audit event, so two processes may do this at once.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.timeline import Step, entry
from ortho_node.audit.trail import AuditKind, make_event
from ortho_node.db.models import DeliveryItem, StudyResult
from ortho_node.retention.deletion import Deletion, delete_files, file_size, remove_empty_folders

log = logging.getLogger(__name__)

SUPERSEDED = "superseded"


@dataclass(frozen=True)
class _Plan:
    newest_id: int
    files: dict[int, list[Path]]  # earlier result id -> its files that may go
    blocked: dict[int, list[Path]]  # earlier result id -> its files an undelivered queue row still needs


def remove_superseded(session_factory: sessionmaker[Session], study_uid: str, *, results_root: Path,
                      now: dt.datetime, dry_run: bool = False) -> list[Deletion]:
    """Delete the files of the study's result sets older than its newest one (``results_root``: ``<data>/results``,
    the emptied folders below it go too); returns one deletion per set with files still on disk."""
    with session_factory.begin() as session:
        plan = _plan(session, study_uid, repoint=not dry_run)
    if plan is None:
        return []
    deletions = []
    for result_id, files in plan.files.items():
        present = [path for path in files if path.is_file()]
        size = sum(file_size(path) for path in present)
        blocked = plan.blocked.get(result_id, [])
        reason = f"superseded by result set {plan.newest_id}"
        if blocked:
            reason += f"; {len(blocked)} files kept while their delivery is owed"
        if not dry_run:
            delete_files(files)
            remove_empty_folders({path.parent for path in files}, stop=results_root)
            if not blocked and not _mark(session_factory, study_uid, result_id, plan.newest_id, present, size,
                                         reason, now):
                continue  # another process marked it and wrote its audit event
        if present:
            deletions.append(Deletion(study_uid, SUPERSEDED, reason, len(present), size))
    return deletions


def _plan(session: Session, study_uid: str, *, repoint: bool) -> _Plan | None:
    rows = session.execute(select(StudyResult.id, StudyResult.objects).where(
        StudyResult.study_instance_uid == study_uid, StudyResult.files_removed_at.is_(None))
        .order_by(StudyResult.id)).all()
    if len(rows) < 2:
        return None
    (newest_id, newest_objects), earlier = rows[-1], rows[:-1]
    current = {obj["sop_instance_uid"]: obj["path"] for obj in newest_objects or () if obj.get("path")}
    old_paths = {obj["path"]: result_id for result_id, objects in earlier for obj in objects or () if obj.get("path")}
    blocked_paths: set[str] = set()
    for item in session.scalars(select(DeliveryItem).where(DeliveryItem.study_instance_uid == study_uid)):
        if item.file_path not in old_paths:
            continue
        if item.state != "pending" and item.sop_instance_uid in current:
            if repoint:  # not being sent: the same instance's newest file serves a resend
                item.file_path = current[item.sop_instance_uid]
        elif item.state in ("pending", "failed"):  # owed: the worker may be sending it, resend would need it
            blocked_paths.add(item.file_path)
    if repoint:
        session.execute(update(StudyResult).where(StudyResult.id.in_([r for r, _ in earlier]),
                                                  StudyResult.superseded_by.is_(None))
                        .values(superseded_by=newest_id))
    files: dict[int, list[Path]] = {result_id: [] for result_id, _ in earlier}
    blocked: dict[int, list[Path]] = {}
    for path, result_id in old_paths.items():
        if path in current.values():
            continue  # never the newest set's own file (a set rebuilt into the same folder)
        (blocked.setdefault(result_id, []) if path in blocked_paths else files[result_id]).append(Path(path))
    return _Plan(newest_id, files, blocked)


def _mark(session_factory: sessionmaker[Session], study_uid: str, result_id: int, newest_id: int,
          files: list[Path], size: int, reason: str, now: dt.datetime) -> bool:
    """Mark the set's files removed; only the process whose UPDATE matched writes the audit event."""
    message = f"result set {result_id}: {len(files)} files deleted ({reason})"
    details = {"result_id": result_id, "superseded_by": newest_id, "files": len(files), "bytes": size}
    with session_factory.begin() as session:
        marked = session.execute(update(StudyResult).where(StudyResult.id == result_id,
                                                           StudyResult.files_removed_at.is_(None))
                                 .values(files_removed_at=now, files_removed_reason=SUPERSEDED)).rowcount
        if marked != 1:
            return False
        session.add(make_event(AuditKind.RESULTS_SUPERSEDED, message, study_instance_uid=study_uid,
                               details=details))
        session.add(entry(Step.RESULTS_SUPERSEDED, study_uid, message, at=now, data=details))
    log.info("study %s: %s", study_uid, message)
    return True
