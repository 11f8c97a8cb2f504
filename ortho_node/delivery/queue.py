"""The durable delivery queue: one ``delivery_items`` row per result object and destination.

Every state change and its audit event commit in one transaction, right after the peer's response, so a
restart neither loses an object nor sends an acknowledged one again.
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
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.trail import AuditKind, Severity, make_event
from ortho_node.config import DestinationSettings
from ortho_node.db.models import DeliveryItem
from ortho_node.clock import Clock, RetryPolicy, as_utc
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
    def __init__(self, session_factory: sessionmaker[Session], clock: Clock, policy: RetryPolicy) -> None:
        self._session_factory = session_factory
        self._clock = clock
        self.policy = policy

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
        return added

    def due(self, destination: str, limit: int) -> list[DeliveryItem]:
        with self._session_factory() as session:
            return list(session.scalars(
                select(DeliveryItem)
                .where(DeliveryItem.destination == destination, DeliveryItem.state == State.PENDING.value,
                       DeliveryItem.next_attempt_at <= self._clock.now())
                .order_by(DeliveryItem.id).limit(limit)))

    def record(self, item_id: int, result: SendResult, *, destination_label: str) -> Outcome:
        """Store one attempt's result and its audit event in one transaction."""
        now = self._clock.now()
        outcome = classify(result)
        with self._session_factory.begin() as session:
            item = session.get_one(DeliveryItem, item_id)
            item.attempts += 1
            item.last_attempt_at = now
            item.last_status = result.status
            status = "no status" if result.status is None else f"0x{result.status:04X}"
            context: dict[str, Any] = dict(study_instance_uid=item.study_instance_uid,
                                           series_instance_uid=item.series_instance_uid,
                                           sop_instance_uid=item.sop_instance_uid)
            details = {"destination": item.destination, "attempt": item.attempts, "status": result.status,
                       "failure": result.failure.value if result.failure else None, "outcome": outcome.value}
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
