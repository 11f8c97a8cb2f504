"""Start-up crash recovery of the archive and the clean-stop marker that lets a clean restart skip it."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.trail import AuditKind, AuditTrail, Severity
from ortho_node.db.models import Instance
from ortho_node.intake.accept import AcceptRules, Action, InstanceFacts
from ortho_node.intake.catalog import Catalog, NewInstance
from ortho_node.intake.header import InstanceHeader
from ortho_node.intake.storage import InstanceStore, InvalidUID, fsync_folder, write_file_durably

log = logging.getLogger(__name__)

#: Left in the data folder by a clean stop; its absence at start-up means a crash, and a recovery scan.
CLEAN_SHUTDOWN = "clean-shutdown.json"
#: Seconds a partial write must be untouched before a receiver sharing the folder with others removes it: longer
#: than any association stays silent (an interrupted write is never that fresh, a write in progress always is).
SHARED_PARTIAL_AGE = 3600.0


class Recovery:
    """Brings the archive and its rows back in step after a crash, and vouches for them after a clean stop."""

    def __init__(self, database_url: str, session_factory: sessionmaker[Session], store: InstanceStore,
                 catalog: Catalog, audit: AuditTrail, *, data_dir: Path, accept: AcceptRules | None = None,
                 shared_by: str | None = None) -> None:
        """``data_dir``: where the clean-stop marker is left. ``shared_by``: this receiver's node id when other
        receivers share the data folder (a cluster): its clean-stop marker is its own and vouches only for
        itself, and partial writes are removed only when too old to be another receiver's write in progress."""
        self._database_url = database_url
        self._shared_by = shared_by
        self._accept = accept or AcceptRules()
        self._session_factory = session_factory
        self._store = store
        self._catalog = catalog
        self._audit = audit
        self.marker = data_dir / (CLEAN_SHUTDOWN if shared_by is None else f"clean-shutdown-{shared_by}.json")

    def prepare(self) -> None:
        """Clear partial writes; index stored files without a row unless a clean stop vouches there are none."""
        removed = self._store.clear_partial_files(older_than=None if self._shared_by is None else SHARED_PARTIAL_AGE)
        if removed:
            log.info("removed %d partial files left by an interrupted write (never acknowledged)", removed)
        if self._take_marker():
            log.info("last stop was clean and the database still holds what it held then: no recovery scan")
        else:
            self.recover_unrecorded_files()

    def leave_marker(self) -> None:
        """After a clean stop (every association ended, so each stored file has its row)."""
        try:
            write_file_durably(self.marker, json.dumps(self._state()).encode())
            fsync_folder(self.marker.parent)
        except (OSError, SQLAlchemyError) as exc:  # disk full, database gone: the next start scans, as after a crash
            log.warning("clean stop not recorded (%s): the next start scans the archive", type(exc).__name__)

    def _state(self) -> dict[str, object]:
        """What a clean stop vouches for: this database (by URL digest) holding this many instance rows; in a
        cluster (other receivers change the count) this receiver left no file without its row."""
        if self._shared_by is not None:
            return {"database": hashlib.sha256(self._database_url.encode()).hexdigest(), "node": self._shared_by}
        with self._session_factory() as session:
            instances = session.scalar(select(func.count(Instance.id)))
        return {"database": hashlib.sha256(self._database_url.encode()).hexdigest(), "instances": instances}

    def _take_marker(self) -> bool:
        """True when the last stop was clean and the database is the one it left: every stored file has its
        row, so the scan over the whole archive can be skipped. The marker is removed (durably) first, so a
        crash from here on leads to a scan at the next start."""
        try:
            marker = json.loads(self.marker.read_text())
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            marker = None
        self.marker.unlink(missing_ok=True)
        fsync_folder(self.marker.parent)
        return marker == self._state()

    def recover_unrecorded_files(self) -> int:
        """Index complete files that lack a row (a crash between rename and commit), or whose row says the purger
        deleted them (an instance re-sent after a purge, its row not brought back yet)."""
        with self._session_factory() as session:
            known = set(session.scalars(select(Instance.file_path).where(Instance.purged_at.is_(None))))
        recovered = 0
        for key in self._store.keys():
            if key not in known and self._recover(key):
                recovered += 1
        if recovered:
            log.warning("indexed %d stored files that had no database row", recovered)
        return recovered

    def _recover(self, relative: str) -> bool:
        try:
            dataset = dcmread(self._store.local_path(relative), stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError) as exc:
            log.error("stored file %s cannot be read (%s); left in place", relative, type(exc).__name__)
            return False
        header = InstanceHeader.from_dataset(dataset)
        if self._key_of(header) != relative:  # intake stores every instance under the key of its own UIDs
            log.error("stored file %s does not match its UIDs; left in place", relative)
            return False
        payload = self._store.read(relative)
        # The file was acknowledged, so a rule that refuses it now can only keep it out of analysis.
        decision = self._accept.decide(InstanceFacts.of(header, None))
        self._catalog.record(NewInstance(header, path=relative, size=len(payload),
                                         sha256=hashlib.sha256(payload).hexdigest(),
                                         transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID),
                                         association_id=None, calling_ae=None,
                                         ignored_by=None if decision.action is Action.ANALYSE else decision.rule))
        self._audit.record(AuditKind.FILE_RECOVERED, "stored file indexed at start-up", severity=Severity.WARNING,
                           study_instance_uid=header.study_uid, sop_instance_uid=header.sop_uid)
        return True

    def _key_of(self, header: InstanceHeader) -> str | None:
        try:
            return self._store.key(header.study_uid, header.series_uid, header.sop_uid)
        except InvalidUID:
            return None
