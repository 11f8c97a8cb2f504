"""The lease under which a process holds claimed work (jobs, delivery items): its node id and how long a claim
lasts without a heartbeat.

A holder renews every lease it holds at each heartbeat (``cluster.heartbeat_interval``); a lease lasts
``missed_heartbeats`` intervals, so a process that missed that many heartbeats (dead, frozen, cut off) loses
its work to the next process that claims, exactly when ``ortho-node nodes`` flags it.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
from dataclasses import dataclass

from ortho_node.config import ClusterSettings

_NODE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def default_node_id() -> str:
    """``<host>-<process id>``: unique among live processes (a container's host name is its own)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:48] or "node"
    return f"{host}-{os.getpid()}"


@dataclass(frozen=True)
class Lease:
    """``node_id`` holds what it claims for ``duration`` past its last renewal. ``shared``: other processes use
    the database (PostgreSQL), so an expired lease is taken over; on SQLite the one process never takes over
    its own work (a crash is recovered at start-up instead)."""

    node_id: str
    duration: dt.timedelta
    shared: bool = False

    def __post_init__(self) -> None:
        if not _NODE_ID.match(self.node_id):
            raise ValueError(f"node id must be 1-64 letters, digits, '.', '_', ':' or '-', got {self.node_id!r}")
        if self.duration <= dt.timedelta(0):
            raise ValueError(f"a lease must last a positive time, got {self.duration}")

    @classmethod
    def from_settings(cls, settings: ClusterSettings, *, shared: bool) -> Lease:
        return cls(settings.node_id or default_node_id(),
                   dt.timedelta(seconds=settings.heartbeat_interval * settings.missed_heartbeats), shared)

    @classmethod
    def local(cls) -> Lease:
        """A one-process lease for commands that only queue work (``ortho-node reprocess``)."""
        return cls(default_node_id(), dt.timedelta(seconds=30))

    def expires(self, now: dt.datetime) -> dt.datetime:
        return now + self.duration
