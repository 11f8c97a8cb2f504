"""Intake: received instances checked, then made durable (file fsynced, row committed) before they are acknowledged.

The listener hands over the bytes exactly as received plus the parsed header; intake answers with the DICOM
status to return. Success means the file is on disk under a validated path and its row is committed; a
re-sent SOP Instance UID is acknowledged without a second file or row. Instances are made durable in batches
(``ortho_node.intake.durable``): a STOW-RS request's together, concurrent associations' C-STOREs in group commits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from pydicom.uid import UID

from ortho_node.audit.trail import AuditKind, AuditTrail, Severity
from ortho_node.intake.accept import ANALYSE_ALL, AcceptRules, Action, Decision, InstanceFacts
from ortho_node.intake.catalog import Catalog
from ortho_node.dicom_status import Status
from ortho_node.intake.durable import Accepted, DurableWriter
from ortho_node.intake.header import InstanceHeader
from ortho_node.intake.received import AssociationRef, IncomingInstance, IntakeResult, StoredInstance
from ortho_node.intake.storage import InstanceStore, is_valid_uid

# The types of ``ortho_node.intake.received`` are intake's interface: listeners import them from here.
__all__ = ["AssociationRef", "IncomingInstance", "Intake", "IntakeListener", "IntakeResult", "StoredInstance"]

log = logging.getLogger(__name__)

#: Series whose ignoring was audited by this process, at most this many remembered (then audited again).
_NOTED_SERIES_LIMIT = 10000


class IntakeListener(Protocol):
    """Receives intake notifications (the scheduler uses them to time study completeness)."""

    def instance_stored(self, instance: StoredInstance) -> None: ...

    def association_ended(self, association_id: int | None, state: str) -> None: ...


class Intake:
    """Validates, stores and records received instances; the accept rules decide which go to analysis."""

    def __init__(self, store: InstanceStore, catalog: Catalog, audit: AuditTrail, *,
                 accept: AcceptRules | None = None) -> None:
        self.store = store
        self.catalog = catalog
        self.accept = accept or AcceptRules()
        self._audit = audit
        self._writer = DurableWriter(store, catalog, audit)
        self._listeners: list[IntakeListener] = []
        self._ignored_series: set[str] = set()
        self._ignored_lock = threading.Lock()

    def add_listener(self, listener: IntakeListener) -> None:
        self._listeners.append(listener)

    def notify_stored(self, instance: StoredInstance) -> None:
        for listener in self._listeners:
            listener.instance_stored(instance)

    def association_ended(self, association_id: int | None, state: str) -> None:
        for listener in self._listeners:
            listener.association_ended(association_id, state)

    def receive(self, incoming: IncomingInstance) -> IntakeResult:
        """One instance (a C-STORE): its status once it is durable, or why it was refused."""
        return self.receive_many([incoming])[0]

    def receive_many(self, incomings: Sequence[IncomingInstance]) -> list[IntakeResult]:
        """Several instances (a STOW-RS request's), each checked, refused, audited or stored as by :meth:`receive`,
        their statuses in the same order; those stored are made durable together before any status is returned."""
        checked = [self._check(incoming) for incoming in incomings]
        first: dict[str, Accepted] = {}
        repeated: list[Accepted] = []
        for item in checked:
            if not isinstance(item, Accepted):
                continue
            if item.header.sop_uid in first:
                repeated.append(item)
            else:
                first[item.header.sop_uid] = item
        self._store(list(first.values()))
        # The same instance twice in one batch: the later copies after the first is recorded (duplicates then), as
        # if sent one after another; so a batch never holds the same write lock twice.
        for item in repeated:
            self._store([item])
        return [item if isinstance(item, IntakeResult) else item.answered() for item in checked]

    def _check(self, incoming: IncomingInstance) -> IntakeResult | Accepted:
        """The instance refused (audited) by its header or an accept rule, or accepted under its store key."""
        header = incoming.header
        problem = _check_identity(header, incoming) or _check_pixel_data(header)
        if problem is not None:
            return self._reject(incoming, header, *problem)
        decision = self._decide(incoming)
        if decision.action is Action.REFUSE:
            return self._refuse_by_rule(incoming, decision)
        return Accepted(incoming, decision, self.store.key(header.study_uid, header.series_uid, header.sop_uid))

    def _decide(self, incoming: IncomingInstance) -> Decision:
        if self.accept.analyse_all:
            return ANALYSE_ALL
        return self.accept.decide(InstanceFacts.of(incoming.header, incoming.association.calling_ae))

    def _refuse_by_rule(self, incoming: IncomingInstance, decision: Decision) -> IntakeResult:
        facts = InstanceFacts.of(incoming.header, incoming.association.calling_ae)
        status = self.accept.refusal_status(facts)
        return self._refuse(incoming.association, status, decision.reason, incoming.header.study_uid,
                            incoming.header.series_uid, incoming.header.sop_uid, accept_rule=decision.rule)

    def refuse_sop_classes(self, association: AssociationRef, proposed: Iterable[str]) -> set[str]:
        """At association negotiation: which of the ``proposed`` SOP classes the accept rules refuse whatever
        the content (their presentation contexts are to be rejected); audited and logged once, together."""
        refused = self.accept.refused_sop_classes(association.calling_ae, proposed)
        if not refused:
            return set()
        names = sorted(f"{_sop_class_name(uid)} ({decision.reason})" for uid, decision in refused.items())
        # INFO: a PACS proposing every storage SOP class gets this on each association, as meant.
        log.info("association %s from %s at %s: presentation contexts rejected for %s", association.id,
                    association.calling_ae, association.peer_host, "; ".join(names))
        self._audit.record(
            AuditKind.CONTEXTS_REJECTED, f"presentation contexts rejected: {'; '.join(names)}",
            severity=Severity.WARNING, association_id=association.id, calling_ae=association.calling_ae,
            peer_host=association.peer_host,
            details={"sop_classes": {uid: decision.rule for uid, decision in sorted(refused.items())}},
        )
        return set(refused)

    def refuse_undecodable(self, association: AssociationRef, affected_sop_instance_uid: str,
                           error: str) -> IntakeResult:
        """A data set whose header could not be parsed (``error``: what failed, never its content)."""
        return self._refuse(association, Status.CANNOT_UNDERSTAND_UNDECODABLE, f"undecodable data set ({error})",
                            sop_uid=affected_sop_instance_uid)

    def refuse_instance(self, incoming: IncomingInstance, status: Status, reason: str) -> IntakeResult:
        """An instance its listener refuses before intake's checks, for a reason of its protocol (a STOW-RS part of
        another study than the request's): audited and logged as intake's own refusals."""
        return self._reject(incoming, incoming.header, status, reason)

    def refuse_malformed_request(self, association: AssociationRef, status: Status, problem: str) -> IntakeResult:
        """A C-STORE request whose command set cannot be used (``problem``: what is wrong, never a value)."""
        return self._refuse(association, status, f"malformed request: {problem}")

    def _store(self, items: list[Accepted]) -> None:
        if not items:
            return
        self._writer.store_all(items)
        for item in items:  # after the commit: later stages hear only of committed rows
            if item.answered().newly_stored:
                self._announce(item)

    def _announce(self, item: Accepted) -> None:
        header = item.header
        if item.ignored_by is not None:  # kept and recorded; the scheduler never hears of it
            self._note_ignored(item.incoming, header, item.decision)
            return
        self.notify_stored(StoredInstance(header.study_uid, header.series_uid, header.sop_uid,
                                          item.incoming.association.id))

    def _note_ignored(self, incoming: IncomingInstance, header: InstanceHeader, decision: Decision) -> None:
        """One log line and audit event per ignored series (not per instance: a CT series has hundreds)."""
        with self._ignored_lock:
            if header.series_uid in self._ignored_series:
                return
            if len(self._ignored_series) >= _NOTED_SERIES_LIMIT:
                self._ignored_series.clear()
            self._ignored_series.add(header.series_uid)
        ref = incoming.association
        log.info("series %s of study %s from %s at %s %s: stored, not analysed", header.series_uid,
                 header.study_uid, ref.calling_ae, ref.peer_host, decision.reason)
        self._audit.record(
            AuditKind.SERIES_IGNORED, f"series {decision.reason}: stored, not analysed", association_id=ref.id,
            calling_ae=ref.calling_ae, peer_host=ref.peer_host, study_instance_uid=header.study_uid,
            series_instance_uid=header.series_uid, details={"accept_rule": decision.rule},
        )

    def _reject(self, incoming: IncomingInstance, header: InstanceHeader, status: Status,
                reason: str) -> IntakeResult:
        return self._refuse(incoming.association, status, reason, header.study_uid, header.series_uid,
                            header.sop_uid)

    def _refuse(self, ref: AssociationRef, status: Status, reason: str, study_uid: str | None = None,
                series_uid: str | None = None, sop_uid: str | None = None,
                accept_rule: str | None = None) -> IntakeResult:
        log.warning("instance refused with status 0x%04X (%s) from %s at %s", status, reason,
                    ref.calling_ae, ref.peer_host)
        details: dict[str, Any] = {"status": int(status)}
        if accept_rule is not None:
            details["accept_rule"] = accept_rule
        self._audit.record(
            AuditKind.INSTANCE_REJECTED, reason, severity=Severity.WARNING, association_id=ref.id,
            calling_ae=ref.calling_ae, peer_host=ref.peer_host, study_instance_uid=_safe_uid(study_uid),
            series_instance_uid=_safe_uid(series_uid), sop_instance_uid=_safe_uid(sop_uid), details=details,
        )
        return IntakeResult(status, reason)


def _check_identity(header: InstanceHeader, incoming: IncomingInstance) -> tuple[Status, str] | None:
    for name, value in (("SOPInstanceUID", header.sop_uid), ("StudyInstanceUID", header.study_uid),
                        ("SeriesInstanceUID", header.series_uid), ("SOPClassUID", header.sop_class_uid)):
        if not value:
            return Status.CANNOT_UNDERSTAND_MISSING_UID, f"{name} missing"
        if not is_valid_uid(value):
            return Status.CANNOT_UNDERSTAND_INVALID_UID, f"{name} is not a valid UID"
    if header.sop_uid != incoming.affected_sop_instance_uid:
        return Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, ("SOPInstanceUID differs from the request (C-STORE command "
                                                         "or file meta)")
    if header.sop_class_uid != incoming.affected_sop_class_uid:
        return Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, ("SOPClassUID differs from the request (C-STORE command or "
                                                         "file meta)")
    return None


def _check_pixel_data(header: InstanceHeader) -> tuple[Status, str] | None:
    """Native Pixel Data shorter than the image its header describes is refused, not stored: stored, every
    later reader (assembly) would meet garbage or fail, and a success status would tell the sender that all is
    well, so nobody would look at or re-send it. An error status shows in the sender's queue instead."""
    if header.pixel_data_bytes is None:
        return None
    declared, present, needed = header.pixel_data_bytes
    if present < declared:  # the element runs past the end of the data set: not decodable
        return (Status.CANNOT_UNDERSTAND_UNDECODABLE,
                f"Pixel Data cut short: {present} of the {declared} bytes its element declares")
    if declared < needed:  # well formed, but not the image Rows, Columns, ... describe (PS3.3 C.7.6.3)
        return (Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"Pixel Data holds {declared} bytes; Rows x Columns x Samples per Pixel x Bits Allocated x "
                f"Number of Frames need {needed}")
    return None


def _sop_class_name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else uid


def _safe_uid(value: str | None) -> str | None:
    """Only valid UIDs go into audit columns (a hostile value is described, not copied)."""
    return value if is_valid_uid(value) else None
