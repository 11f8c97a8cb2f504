"""Destinations' state: paused ones (``destination_states``) and the overview of every destination with its
queue. An operator stops deliveries to a destination (a PACS in maintenance, a wrong configuration) without
losing its queue; the delivery worker skips it until resumed.

Pausing changes no queue row: items stay pending and their retry windows keep running, so an item whose window
ends during a long pause is flagged at its next attempt, as it would be with the destination down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.trail import AuditKind, make_event
from ortho_node.audit.views import destination_queues
from ortho_node.clock import Clock, SystemClock, as_utc
from ortho_node.config import DestinationSettings
from ortho_node.db.models import DestinationState

_EMPTY_QUEUE = {"pending": 0, "delivered": 0, "failed": 0, "last_delivered_at": None}


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


def destination_overview(session_factory: sessionmaker[Session],
                         destinations: Sequence[DestinationSettings]) -> list[dict[str, Any]]:
    """Every configured destination, then every one only the queue still names (removed from the configuration
    since), with its queue counts and its pause (None: delivering)."""
    queues, paused = destination_queues(session_factory), paused_destinations(session_factory)
    items = [{"name": d.name, "protocol": d.protocol, **_address(d), "kinds": list(d.kinds), "configured": True,
              "queue": queues.get(d.name, _EMPTY_QUEUE), "paused": paused.get(d.name)} for d in destinations]
    configured = {d.name for d in destinations}
    items += [{"name": name, "protocol": None, "configured": False, "queue": queue, "paused": paused.get(name)}
              for name, queue in sorted(queues.items()) if name not in configured]
    return items


def _address(dest: DestinationSettings) -> dict[str, Any]:
    if dest.protocol == "dicomweb":
        return {"url": dest.url, "tls": dest.url.startswith("https:")}
    return {"ae_title": dest.ae_title, "host": dest.host, "port": dest.port, "tls": dest.tls}
