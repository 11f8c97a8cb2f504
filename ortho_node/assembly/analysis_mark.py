"""An operator's "not for analysis" mark on a study (console, API): the study stays stored and listed, and every
job of it ends ``skipped`` at assembly with the mark as its cause, until the mark is cleared.

The mark is read when a job assembles the study (``Assembler.assemble``), so it holds for instances that arrive
later and for a requested reprocess alike; a job already past assembly when the mark is set finishes.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.timeline import Step, entry
from ortho_node.audit.trail import AuditKind, make_event
from ortho_node.clock import utcnow
from ortho_node.db.models import Study


def skip_cause(study: Study) -> str | None:
    """Why a job must not analyse the study (its mark, in words); None when it is not marked."""
    if not study.not_for_analysis:
        return None
    return "marked not for analysis" + (f": {study.not_for_analysis_reason}" if study.not_for_analysis_reason
                                        else "")


def set_not_for_analysis(session_factory: sessionmaker[Session], study_uid: str, mark: bool, *,
                         by: str | None = None, reason: str = "") -> str:
    """Mark (or unmark) a study not for analysis, with an audit event and a timeline step; returns what was done.
    Raises :class:`LookupError` for a study the node does not know."""
    now = utcnow()
    with session_factory.begin() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid).with_for_update())
        if study is None:
            raise LookupError(f"study {study_uid} is not stored")
        if study.not_for_analysis == mark:
            return f"study {study_uid} was already {'marked' if mark else 'not marked'} not for analysis"
        study.not_for_analysis, study.not_for_analysis_reason = mark, (reason[:128] or None) if mark else None
        kind, step = ((AuditKind.STUDY_NOT_FOR_ANALYSIS_SET, Step.NOT_FOR_ANALYSIS_SET) if mark else
                      (AuditKind.STUDY_NOT_FOR_ANALYSIS_CLEARED, Step.NOT_FOR_ANALYSIS_CLEARED))
        message = (f"marked not for analysis{': ' + reason if reason else ''}: its jobs end skipped" if mark
                   else "no longer marked not for analysis: reprocess it to analyse it")
        details = {"by": by, "reason": reason or None}
        session.add(make_event(kind, message, study_instance_uid=study_uid, details=details))
        session.add(entry(step, study_uid, message, at=now, data=details))
    return f"study {study_uid} {message}"
