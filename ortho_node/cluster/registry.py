"""The nodes table: each ``ortho-node serve`` process registers at start, beats while it runs and says when it
stops; ``ortho-node nodes`` (and /metrics) read it back with the processes that stopped beating flagged.

A process is flagged once it has missed ``cluster.missed_heartbeats`` heartbeats: by then its leases have
expired (``ortho_node.cluster.lease``) and other processes take its work over.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import asdict, dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.trail import AuditKind, make_event
from ortho_node.clock import Clock, as_utc
from ortho_node.cluster.roles import Role
from ortho_node.db.models import AuditEvent, Node

log = logging.getLogger(__name__)


class NodeIdInUse(RuntimeError):
    """Another live process already registered under this node id; the message says which and since when."""


class NodeIsLive(RuntimeError):
    """A live process's row cannot be forgotten: it holds leases and would register again at its next beat."""


class UnknownNode(LookupError):
    """No process registered under this node id."""


class NodeState(str, enum.Enum):
    LIVE = "live"
    MISSED = "missed"  # missed its heartbeats: its leases have expired, its work is taken over
    STOPPED = "stopped"  # stopped cleanly


@dataclass(frozen=True)
class NodeIdentity:
    """What a process tells the others about itself when it registers."""

    node_id: str
    role: Role
    host: str
    pid: int
    version: str
    model_version: str | None = None  # the loaded model card's version; None: no model loaded
    gpu: str | None = None  # the CUDA device the model runs on; None: CPU or no model

    def __post_init__(self) -> None:
        if not isinstance(self.role, Role):
            raise TypeError(f"role must be a Role, got {self.role!r}")
        if self.pid <= 0:
            raise ValueError(f"process id must be positive, got {self.pid}")


@dataclass(frozen=True)
class NodeStatus:
    """One row of ``ortho-node nodes``."""

    node_id: str
    role: str
    host: str
    pid: int
    version: str
    model_version: str | None
    gpu: str | None
    started_at: dt.datetime
    last_heartbeat_at: dt.datetime
    stopped_at: dt.datetime | None
    state: NodeState
    missed_heartbeats: int

    def as_dict(self) -> dict:
        data = asdict(self)
        data["state"] = self.state.value
        for key in ("started_at", "last_heartbeat_at", "stopped_at"):
            data[key] = data[key].isoformat() if data[key] is not None else None
        return data


def missed(last_heartbeat: dt.datetime, interval: float, now: dt.datetime) -> int:
    """Heartbeats due since ``last_heartbeat`` that did not come."""
    return max(0, int((now - last_heartbeat).total_seconds() // interval))


class NodeRegistry:
    def __init__(self, session_factory: sessionmaker[Session], clock: Clock, *, missed_heartbeats: int) -> None:
        if missed_heartbeats < 1:
            raise ValueError(f"missed_heartbeats must be at least 1, got {missed_heartbeats}")
        self._session_factory = session_factory
        self._clock = clock
        self.missed_heartbeats = missed_heartbeats

    def register(self, identity: NodeIdentity, *, heartbeat_interval: float, sole: bool = False) -> None:
        """Insert or take back this node's row; :class:`NodeIdInUse` when a live process holds the id (its
        leases would be mistaken for ours). ``sole``: the database is this process's alone (SQLite), so every
        other row is of a process that is gone and is marked stopped at its last heartbeat, not flagged."""
        now = self._clock.now()
        with self._session_factory.begin() as session:
            if sole:
                session.execute(update(Node).where(Node.id != identity.node_id, Node.stopped_at.is_(None))
                                .values(stopped_at=Node.last_heartbeat_at))
            row = session.get(Node, identity.node_id, with_for_update=True)
            if row is not None and row.stopped_at is None and \
                    missed(as_utc(row.last_heartbeat_at), row.heartbeat_interval, now) < self.missed_heartbeats:
                raise NodeIdInUse(f"cluster.node_id: {identity.node_id!r} is in use by a live process on {row.host} "
                                  f"(pid {row.pid}, last heartbeat {as_utc(row.last_heartbeat_at):%H:%M:%S} UTC)")
            if row is None:
                row = Node(id=identity.node_id)
                session.add(row)
            row.role, row.host, row.pid, row.version = identity.role.value, identity.host, identity.pid, \
                identity.version
            row.model_version, row.gpu, row.heartbeat_interval = identity.model_version, identity.gpu, \
                heartbeat_interval
            row.started_at = row.last_heartbeat_at = now
            row.stopped_at = None
        log.info("node %s registered as %s on %s", identity.node_id, identity.role.value, identity.host)

    def beat(self, node_id: str) -> bool:
        """Record a heartbeat; False when the row is gone (removed by hand), the caller re-registers."""
        with self._session_factory.begin() as session:
            return session.execute(update(Node).where(Node.id == node_id)
                                   .values(last_heartbeat_at=self._clock.now(), stopped_at=None)).rowcount == 1

    def stopped(self, node_id: str) -> None:
        with self._session_factory.begin() as session:
            session.execute(update(Node).where(Node.id == node_id).values(stopped_at=self._clock.now()))

    def model_changed(self, node_id: str, model_version: str | None, gpu: str | None) -> None:
        """The process now serves another model (an activation or rollback taken at its next study)."""
        with self._session_factory.begin() as session:
            session.execute(update(Node).where(Node.id == node_id).values(model_version=model_version, gpu=gpu))

    def forget(self, node_id: str, *, by: str) -> NodeStatus:
        """Remove a stopped or missed process's row, audited with ``by``; returns what it was. Refused for a
        live process (:class:`NodeIsLive`); :class:`UnknownNode` when there is no such row. A missed process
        that comes back registers again at its next heartbeat, as after any removal."""
        now = self._clock.now()
        with self._session_factory.begin() as session:
            row = session.get(Node, node_id, with_for_update=True)
            if row is None:
                raise UnknownNode(f"no node {node_id!r} in the nodes table (see `ortho-node nodes`)")
            status = self._status(row, now)
            if status.state is NodeState.LIVE:
                beat = f"{status.last_heartbeat_at:%Y-%m-%d %H:%M:%S} UTC"
                raise NodeIsLive(f"node {node_id!r} is live (last heartbeat {beat}): stop it first, or wait until "
                                 f"it has missed {self.missed_heartbeats} heartbeats")
            session.delete(row)
            session.add(_forgotten_event(status, by))
        log.info("node %s (%s) removed from the nodes table by %s", node_id, status.state.value, by)
        return status

    def forget_stopped(self, older_than: dt.timedelta) -> list[str]:
        """Remove the rows of processes that stopped cleanly more than ``older_than`` ago (each audited);
        returns their ids. Missed processes stay until an operator forgets them: they may be frozen, not gone."""
        now = self._clock.now()
        with self._session_factory.begin() as session:
            rows = session.scalars(select(Node).where(Node.stopped_at.is_not(None),
                                                      Node.stopped_at < now - older_than)
                                   .with_for_update(skip_locked=True)).all()
            for row in rows:
                session.add(_forgotten_event(self._status(row, now), f"automatic: stopped over {older_than.days} "
                                                                     "days ago (cluster.forget_stopped_days)"))
                session.delete(row)
        if rows:
            log.info("removed %d nodes stopped over %d days ago from the nodes table", len(rows), older_than.days)
        return [row.id for row in rows]

    def nodes(self) -> list[NodeStatus]:
        """Every registered process, live ones first, with its state now."""
        now = self._clock.now()
        with self._session_factory() as session:
            rows = session.scalars(select(Node).order_by(Node.role, Node.id)).all()
        statuses = [self._status(row, now) for row in rows]
        order = {NodeState.LIVE: 0, NodeState.MISSED: 1, NodeState.STOPPED: 2}
        return sorted(statuses, key=lambda s: (order[s.state], s.role, s.node_id))

    def _status(self, row: Node, now: dt.datetime) -> NodeStatus:
        last = as_utc(row.last_heartbeat_at)
        count = missed(last, row.heartbeat_interval, now)
        if row.stopped_at is not None:
            state = NodeState.STOPPED
        elif count >= self.missed_heartbeats:
            state = NodeState.MISSED
        else:
            state = NodeState.LIVE
        return NodeStatus(row.id, row.role, row.host, row.pid, row.version, row.model_version, row.gpu,
                          as_utc(row.started_at), last, as_utc(row.stopped_at) if row.stopped_at else None, state,
                          count)


def _forgotten_event(status: NodeStatus, by: str) -> AuditEvent:
    return make_event(AuditKind.NODE_FORGOTTEN, f"node {status.node_id} ({status.role} on {status.host}, "
                                                f"{status.state.value}) removed from the nodes table by {by}",
                      details={"node": status.node_id, "role": status.role, "host": status.host,
                               "state": status.state.value, "by": by,
                               "last_heartbeat_at": status.last_heartbeat_at.isoformat()})
