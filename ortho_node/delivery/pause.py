"""Paused destinations (``destination_states``): an operator stops deliveries to a destination (a PACS in
maintenance, a wrong configuration) without losing its queue; the delivery worker skips it until resumed.

Pausing changes no queue row: items stay pending and their retry windows keep running, so an item whose window
ends during a long pause is flagged at its next attempt, as it would be with the destination down.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.trail import AuditKind, make_event
from ortho_node.clock import Clock, SystemClock, as_utc
from ortho_node.db.models import DestinationState


def paused_destinations(session_factory: sessionmaker[Session]) -> dict[str, dict]:
    """Paused destinations by name: why, by whom and since when (UTC)."""
    with session_factory() as session:
        rows = session.scalars(select(DestinationState).where(DestinationState.paused.is_(True))).all()
        return {r.name: {"reason": r.reason, "by": r.changed_by, "since": as_utc(r.changed_at)} for r in rows}


def set_paused(session_factory: sessionmaker[Session], name: str, paused: bool, *, by: str | None = None,
               reason: str = "", clock: Clock | None = None) -> str:
    """Pause (or resume) deliveries to ``name``, audited; returns what was done. The caller checks that the
    name is a destination it knows."""
    now = (clock or SystemClock()).now()
    with session_factory.begin() as session:
        row = session.get(DestinationState, name, with_for_update=True)
        if (row.paused if row is not None else False) == paused:
            return f"destination {name} was already {'paused' if paused else 'delivering'}"
        if row is None:
            row = DestinationState(name=name)
            session.add(row)
        row.paused, row.reason, row.changed_by, row.changed_at = paused, (reason[:128] or None), by, now
        kind = AuditKind.DESTINATION_PAUSED if paused else AuditKind.DESTINATION_RESUMED
        message = (f"deliveries to {name} paused{': ' + reason if reason else ''}" if paused
                   else f"deliveries to {name} resumed")
        session.add(make_event(kind, message, details={"destination": name, "by": by, "reason": reason or None}))
    return message
