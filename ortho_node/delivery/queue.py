"""The durable delivery queue: one ``delivery_items`` row per result object and destination.

Every state change and its audit event commit in one transaction, right after the peer's response, so a
restart neither loses an object nor sends an acknowledged one again.

Items are claimed in batches (``claim``) under this process's lease (``ortho_node.cluster.lease``): on PostgreSQL
``FOR UPDATE SKIP LOCKED``, so processes delivering at once never send the same object, and an item whose
holder's lease expired (the process died during its association) is claimed again by another. Recording the
attempt ends the claim.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import UID
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.trail import AuditKind, Severity, make_event
from ortho_node.config import DestinationSettings
from ortho_node.db.models import DeliveryItem
from ortho_node.clock import Clock, RetryPolicy, as_utc
from ortho_node.cluster.lease import Lease
from ortho_node.cluster.wakeup import Channel, notify
from ortho_node.delivery.outcomes import Outcome, classify
from ortho_node.delivery.scu import SendResult
from ortho_node.audit.timeline import Step, entry

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_SR_STORAGE = {"1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
               "1.2.840.10008.5.1.4.1.1.88.34"}
_SUMMARY_STORAGE = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4", "1.2.840.10008.5.1.4.1.1.104.1"}


class State(str, enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # flagged: only `ortho-node resend` queues it again


def kind_of(sop_class_uid: str) -> str:
    """The configured object kind (``destinations.kinds``) of a result SOP class."""
    if sop_class_uid == SEGMENTATION_STORAGE:
        return "seg"
    if sop_class_uid in _SR_STORAGE:
        return "sr"
    if sop_class_uid in _SUMMARY_STORAGE:
        return "summary"
    raise ValueError(f"{UID(sop_class_uid).name or sop_class_uid} is not a result object class")


@dataclass(frozen=True)
class ResultFile:
    path: Path
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    @property
    def kind(self) -> str:
        return kind_of(self.sop_class_uid)

    @classmethod
    def read(cls, path: Path) -> ResultFile:
        ds = dcmread(path, stop_before_pixels=True)
        return cls(path.resolve(), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                   str(ds.SOPClassUID))


class DeliveryQueue:
    def __init__(self, session_factory: sessionmaker[Session], clock: Clock, policy: RetryPolicy, *,
                 lease: Lease | None = None) -> None:
        self._session_factory = session_factory
        self._clock = clock
        self.policy = policy
        self.lease = lease or Lease.local()

    def enqueue(self, files: Sequence[ResultFile], destinations: Sequence[DestinationSettings]) -> int:
        """Queue each file for every destination that accepts its kind; already queued pairs are left as
        they are. Returns the number of new rows."""
        now = self._clock.now()
        added = 0
        with self._session_factory.begin() as session:
            for dest in destinations:
                wanted = [f for f in files if f.kind in dest.kinds]
                known = set(session.scalars(select(DeliveryItem.sop_instance_uid).where(
                    DeliveryItem.destination == dest.name,
                    DeliveryItem.sop_instance_uid.in_([f.sop_instance_uid for f in wanted]))))
                new = [f for f in wanted if f.sop_instance_uid not in known]
                for f in new:
                    session.add(DeliveryItem(
                        destination=dest.name, study_instance_uid=f.study_instance_uid,
                        series_instance_uid=f.series_instance_uid, sop_instance_uid=f.sop_instance_uid,
                        sop_class_uid=f.sop_class_uid, kind=f.kind, file_path=str(f.path), state=State.PENDING.value,
                        attempts=0, queued_at=now, next_attempt_at=now))
                for study in sorted({f.study_instance_uid for f in new}):
                    count = sum(f.study_instance_uid == study for f in new)
                    session.add(make_event(AuditKind.DELIVERY_QUEUED, f"{count} result objects queued for {dest.name}",
                                           study_instance_uid=study, details={"destination": dest.name}))
                    session.add(entry(Step.DELIVERY_QUEUED, study, f"{count} result objects queued for {dest.name}",
                                      at=now, data={"destination": dest.name, "count": count}))
                added += len(new)
            if added:
                notify(session, Channel.DELIVERIES)  # idle processors wake when this commits
        return added

    def claim(self, destination: str, limit: int) -> list[DeliveryItem]:
        """Claim up to ``limit`` due items for ``destination`` under this process's lease, oldest first, with one
        ``delivery_claimed`` audit event for the batch."""
        now = self._clock.now()
        node, expires = self.lease.node_id, self.lease.expires(now)
        claimable = and_(DeliveryItem.destination == destination, self._claimable(now))
        with self._session_factory.begin() as session:
            query = select(DeliveryItem).where(claimable).order_by(DeliveryItem.id).limit(limit)
            if self.lease.shared:  # rows another process is claiming are skipped, not waited for
                query = query.with_for_update(skip_locked=True)
            items = list(session.scalars(query))
            if not items:
                return []
            taken_over = {item.id: item.claimed_by for item in items if item.claimed_by is not None}
            # Conditional update: on SQLite (no row locks) only rows still claimable are ours.
            ids = list(session.scalars(update(DeliveryItem).where(DeliveryItem.id.in_([i.id for i in items]), claimable)
                                       .values(claimed_by=node, lease_expires_at=expires)
                                       .returning(DeliveryItem.id).execution_options(synchronize_session=False)))
            claimed = [item for item in items if item.id in set(ids)]
            for item in claimed:
                item.claimed_by, item.lease_expires_at = node, expires
            if claimed:
                session.add(make_event(AuditKind.DELIVERY_CLAIMED, f"{len(claimed)} result objects for {destination} "
                                       f"claimed by node {node}", details={
                                           "destination": destination, "node": node, "items": sorted(ids),
                                           "lease_expires_at": expires.isoformat(),
                                           "taken_over": {str(k): v for k, v in taken_over.items() if k in set(ids)}}))
        return claimed

    def _claimable(self, now: dt.datetime) -> ColumnElement[bool]:
        """Pending, due, and held by no one; on a shared database also held under an expired lease by another
        process (never by this one: its association may still be sending them)."""
        unheld = DeliveryItem.claimed_by.is_(None)
        if self.lease.shared:
            unheld = or_(unheld, and_(DeliveryItem.claimed_by != self.lease.node_id,
                                      or_(DeliveryItem.lease_expires_at.is_(None),
                                          DeliveryItem.lease_expires_at < now)))
        return and_(DeliveryItem.state == State.PENDING.value, DeliveryItem.next_attempt_at <= now, unheld)

    def renew(self) -> int:
        """Extend the lease on every item this process holds (the heartbeat); returns how many."""
        with self._session_factory.begin() as session:
            return session.execute(update(DeliveryItem).where(DeliveryItem.claimed_by == self.lease.node_id)
                                   .values(lease_expires_at=self.lease.expires(self._clock.now()))
                                   .execution_options(synchronize_session=False)).rowcount

    def release_claims(self, *, everyone: bool = False) -> int:
        """Give back the items this process holds unsent (a stop between claim and send); ``everyone``: every
        claim, for the one process of a SQLite node at start-up (whoever held them is gone)."""
        held = DeliveryItem.claimed_by.is_not(None) if everyone else DeliveryItem.claimed_by == self.lease.node_id
        with self._session_factory.begin() as session:
            return session.execute(update(DeliveryItem).where(held).values(claimed_by=None, lease_expires_at=None)
                                   .execution_options(synchronize_session=False)).rowcount

    def record(self, item_id: int, result: SendResult, *, destination_label: str) -> Outcome:
        """Store one attempt's result and its audit event in one transaction."""
        now = self._clock.now()
        outcome = classify(result)
        with self._session_factory.begin() as session:
            item = session.get_one(DeliveryItem, item_id)
            holder = item.claimed_by
            # The peer's answer is the truth whoever holds the item now; the claim ends with the attempt.
            item.claimed_by = item.lease_expires_at = None
            item.attempts += 1
            item.last_attempt_at = now
            item.last_status = result.status
            status = "no status" if result.status is None else f"0x{result.status:04X}"
            context: dict[str, Any] = dict(study_instance_uid=item.study_instance_uid,
                                           series_instance_uid=item.series_instance_uid,
                                           sop_instance_uid=item.sop_instance_uid)
            details = {"destination": item.destination, "attempt": item.attempts, "status": result.status,
                       "failure": result.failure.value if result.failure else None, "outcome": outcome.value,
                       "item": item.id, "node": self.lease.node_id}
            if holder != self.lease.node_id:  # our lease expired while the peer answered: say so, never hide it
                details["held_by"] = holder
            message = f"{item.kind} to {destination_label}, attempt {item.attempts}: {status} {result.reason}"
            severity = Severity.INFO if outcome is Outcome.DELIVERED else Severity.WARNING
            session.add(make_event(AuditKind.DELIVERY_ATTEMPT, message, severity=severity, details=details,
                                   **context))
            if outcome is Outcome.DELIVERED:
                item.state, item.delivered_at, item.last_error = State.DELIVERED.value, now, None
                session.add(entry(Step.DELIVERED, item.study_instance_uid, f"{item.kind} acknowledged by "
                                  f"{destination_label}: {status}", at=now, data={
                                      "destination": item.destination, "kind": item.kind, "status": result.status,
                                      "sop_instance_uid": item.sop_instance_uid, "attempt": item.attempts}))
                return outcome
            item.last_error = f"{status} {result.reason}"
            retry_at = None
            if outcome is Outcome.TRANSIENT:
                retry_at = self.policy.next_attempt(item.attempts, as_utc(item.queued_at), now)
                if retry_at is not None and result.retry_after:  # the peer's Retry-After, if longer than ours
                    retry_at = max(retry_at, now + dt.timedelta(seconds=result.retry_after))
            if retry_at is not None:
                item.next_attempt_at = retry_at
                return outcome
            item.state = State.FAILED.value
            why = "rejected permanently" if outcome is Outcome.PERMANENT else "retry time exhausted"
            session.add(make_event(AuditKind.DELIVERY_FAILED, f"{item.kind} to {destination_label} {why}: "
                                   f"{item.last_error}", severity=Severity.ERROR, details=details, **context))
            session.add(entry(Step.DELIVERY_FAILED, item.study_instance_uid, f"{item.kind} to {destination_label} "
                              f"{why}: {item.last_error}", at=now, data={
                                  **details, "kind": item.kind, "sop_instance_uid": item.sop_instance_uid}))
        return outcome

    def next_due(self) -> dt.datetime | None:
        with self._session_factory() as session:
            when = session.scalars(select(DeliveryItem.next_attempt_at).where(
                DeliveryItem.state == State.PENDING.value).order_by(DeliveryItem.next_attempt_at).limit(1)).first()
        return as_utc(when) if when else None

    @property
    def session_factory(self) -> sessionmaker[Session]:
        return self._session_factory

    def destination_names(self) -> set[str]:
        """Every destination the queue holds items for (configured now or not)."""
        with self._session_factory() as session:
            return set(session.scalars(select(DeliveryItem.destination).distinct()))

    def destinations_of(self, study_instance_uid: str) -> set[str]:
        with self._session_factory() as session:
            return set(session.scalars(select(DeliveryItem.destination).where(
                DeliveryItem.study_instance_uid == study_instance_uid)))

    def resend(self, study_instance_uid: str, destinations: Mapping[str, Sequence[str]]) -> int:
        """Queue a study's results again for ``destinations`` (name -> accepted kinds), delivered or flagged
        ones included; a destination that never had them gets every object of an accepted kind. Returns the
        rows queued."""
        now = self._clock.now()
        queued = 0
        with self._session_factory.begin() as session:
            items = list(session.scalars(select(DeliveryItem).where(
                DeliveryItem.study_instance_uid == study_instance_uid).order_by(DeliveryItem.id)))
            # An object whose file is gone (an earlier result set superseded, or results past their retention) is
            # not queued again: it would only be flagged 'result file is missing' and hold the study's purge.
            objects = {item.sop_instance_uid: item for item in items if Path(item.file_path).is_file()}
            for name, kinds in destinations.items():
                have = {item.sop_instance_uid: item for item in items if item.destination == name}
                for sop_uid, template in objects.items():
                    if template.kind not in kinds:
                        continue
                    item = have.get(sop_uid)
                    if item is None:
                        item = DeliveryItem(
                            destination=name, study_instance_uid=template.study_instance_uid,
                            series_instance_uid=template.series_instance_uid, sop_instance_uid=sop_uid,
                            sop_class_uid=template.sop_class_uid, kind=template.kind, file_path=template.file_path)
                        session.add(item)
                    item.state, item.attempts, item.queued_at, item.next_attempt_at = State.PENDING.value, 0, now, now
                    item.delivered_at = item.last_error = item.last_status = None
                    queued += 1
                session.add(make_event(AuditKind.DELIVERY_RESEND, f"results queued again for {name}",
                                       study_instance_uid=study_instance_uid, details={"destination": name}))
                session.add(entry(Step.DELIVERY_RESEND, study_instance_uid, f"results queued again for {name}",
                                  at=now, data={"destination": name}))
        return queued


    def retry(self, item_id: int, *, by: str | None = None) -> tuple[str, str]:
        """Queue one flagged (failed) object again, its attempts and retry window started afresh; returns its
        study's UID and what was done. Raises :class:`LookupError` for an unknown id and :class:`ValueError` for an object that is not
        flagged or whose file is gone (sending it could only fail again)."""
        now = self._clock.now()
        with self._session_factory.begin() as session:
            item = session.get(DeliveryItem, item_id, with_for_update=True)
            if item is None:
                raise LookupError(f"no delivery {item_id}")
            if item.state != State.FAILED.value:
                raise ValueError(f"delivery {item_id} is {item.state}, not failed: nothing to retry")
            if not Path(item.file_path).is_file():
                raise ValueError(f"delivery {item_id}: its result file is gone (results purged or superseded); "
                                 "reprocess the study to build new results")
            previous = item.last_error
            item.state, item.attempts, item.queued_at, item.next_attempt_at = State.PENDING.value, 0, now, now
            item.delivered_at = item.last_error = item.last_status = None
            message = f"{item.kind} to {item.destination} queued again after: {previous}"
            details = {"delivery_id": item.id, "destination": item.destination, "kind": item.kind,
                       "previous_error": previous, "by": by}
            session.add(make_event(AuditKind.DELIVERY_RETRY, message, study_instance_uid=item.study_instance_uid,
                                   series_instance_uid=item.series_instance_uid,
                                   sop_instance_uid=item.sop_instance_uid, details=details))
            session.add(entry(Step.DELIVERY_RETRY, item.study_instance_uid, message, at=now, data=details))
            return item.study_instance_uid, message
