"""Studies marked to keep (for example as training data): the purger never deletes anything of them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.timeline import Step, entry
from ortho_node.audit.trail import AuditKind, make_event
from ortho_node.clock import as_utc, utcnow
from ortho_node.db.models import Study


def set_keep(session_factory: sessionmaker[Session], study_uid: str, keep: bool, *, reason: str = "") -> str:
    """Mark (or unmark) a study to keep, with an audit event and a timeline step; returns what was done, for the
    operator. Raises :class:`LookupError` for a study the node does not know."""
    now = utcnow()
    with session_factory.begin() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid).with_for_update())
        if study is None:
            raise LookupError(f"study {study_uid} is not stored")
        if study.keep == keep:
            return f"study {study_uid} was already {'marked to keep' if keep else 'not marked to keep'}"
        study.keep, study.keep_reason = keep, (reason[:128] or None) if keep else None
        kind, step = (AuditKind.STUDY_KEEP_SET, Step.KEEP_SET) if keep else (AuditKind.STUDY_KEEP_CLEARED,
                                                                              Step.KEEP_CLEARED)
        message = (f"marked to keep{': ' + reason if reason else ''}: never purged" if keep
                   else "no longer marked to keep: the retention rules apply")
        session.add(make_event(kind, message, study_instance_uid=study_uid, details={"reason": reason or None}))
        session.add(entry(step, study_uid, message, at=now))
        if keep and study.instances_purged_at is not None:
            return (f"study {study_uid} {message}; its received instances were already deleted on "
                    f"{as_utc(study.instances_purged_at):%Y-%m-%d %H:%M} UTC")
    return f"study {study_uid} {message}"
