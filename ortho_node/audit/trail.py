"""The one write path for the audit trail (append-only ``audit_events``)."""

from __future__ import annotations

import enum
import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.db.models import AuditEvent

log = logging.getLogger(__name__)


class AuditKind(str, enum.Enum):
    NODE_STARTED = "node_started"
    NODE_STOPPED = "node_stopped"
    NODE_FORGOTTEN = "node_forgotten"  # a stopped or missed process's row removed (ortho-node nodes --forget)
    ASSOCIATION_ACCEPTED = "association_accepted"
    ASSOCIATION_REJECTED = "association_rejected"
    ASSOCIATION_ENDED = "association_ended"
    INSTANCE_REJECTED = "instance_rejected"  # an accept rule's refusal names it in details["accept_rule"]
    SERIES_IGNORED = "series_ignored"  # stored, kept out of analysis by an accept rule
    CONTEXTS_REJECTED = "presentation_contexts_rejected"  # SOP classes an accept rule refuses, at negotiation
    STORAGE_FAILED = "storage_failed"
    FILE_RECOVERED = "file_recovered"
    MALFORMED_CONNECTION = "malformed_connection"
    TLS_REFUSED = "tls_refused"  # TLS handshake failed: untrusted or missing certificate, old protocol, plain TCP
    STUDY_READY = "study_ready"  # completeness decided; a job was queued (reason in the message)
    STUDY_ASSEMBLED = "study_assembled"
    STUDY_SKIPPED = "study_skipped"  # assembled but not processable (unknown joint, no usable plane)
    JOB_QUEUED = "job_queued"  # queued on request (ortho-node reprocess)
    JOB_STARTED = "job_started"
    JOB_SUCCEEDED = "job_succeeded"
    JOB_SKIPPED = "job_skipped"  # the study cannot be analysed; the cause in the message
    JOB_RETRY = "job_retry"
    JOB_FAILED = "job_failed"
    JOB_SUPERSEDED = "job_superseded"
    JOB_REQUEUED = "job_requeued"  # left running by a crash, queued again at start-up
    JOB_TAKEN_OVER = "job_taken_over"  # its holder's lease expired (a process died): another process runs it

    DELIVERY_QUEUED = "delivery_queued"
    DELIVERY_CLAIMED = "delivery_claimed"  # a batch of items claimed by one process under its lease
    DELIVERY_ATTEMPT = "delivery_attempt"  # one per object and attempt, with its status and outcome
    DELIVERY_FAILED = "delivery_failed"  # flagged: permanent rejection, or retry time exhausted
    DELIVERY_RESEND = "delivery_resend"

    INSTANCES_PURGED = "instances_purged"  # a study's received instances deleted (retention rule or watermark)
    RESULTS_PURGED = "results_purged"  # a study's result objects deleted (retention.results_days)
    RESULTS_SUPERSEDED = "results_superseded"  # an earlier job's result files deleted, a newer set replaces them
    PURGE_SHORT = "purge_short"  # free space below the watermark and nothing more may be deleted
    RECEIVED_AFTER_PURGE = "received_after_purge"  # a purged study's new instance cleared its purge mark
    STUDY_KEEP_SET = "study_keep_set"  # marked to keep: never purged
    STUDY_KEEP_CLEARED = "study_keep_cleared"

    MODEL_IMPORTED = "model_imported"  # a task model folder verified and copied into the node (ortho-node model)
    MODEL_ACTIVATED = "model_activated"  # who made which model the active one
    MODEL_ROLLED_BACK = "model_rolled_back"  # back to the model the last activation replaced
    MODEL_LOADED = "model_loaded"  # a serving node took the active model (at start-up or at its next study)
    MODEL_SHADOW_SET = "model_shadow_set"  # who chose a candidate to run beside the active model, never delivered
    MODEL_SHADOW_CLEARED = "model_shadow_cleared"
    SHADOW_STORED = "shadow_stored"  # a shadow model's result for a study, stored (never delivered)
    SHADOW_FAILED = "shadow_failed"  # the shadow model could not analyse a study (the active result is unaffected)

    CONSOLE_LOGIN = "console_login"
    CONSOLE_LOGIN_FAILED = "console_login_failed"  # wrong password, unknown user, or a locked-out user name
    CONSOLE_LOCKED_OUT = "console_locked_out"  # console.max_failed_logins in a row: the user name is locked
    # Issue 24: operator actions from the console or the API (details: user, via, action, target, outcome)
    OPERATOR_ACTION = "operator_action"
    OPERATOR_ACTION_REFUSED = "operator_action_refused"  # a viewer (user or token) asked to act: 403
    API_TOKEN_CREATED = "api_token_created"
    API_TOKEN_REVOKED = "api_token_revoked"
    STOW_REQUEST = "stow_request"  # a STOW-RS request's end: its instances' counts and statuses, the sender
    STOW_REFUSED = "stow_refused"  # a STOW-RS request refused before any instance was read (401, 403, locked out)
    DELIVERY_RETRY = "delivery_retry"  # one flagged object queued again
    DESTINATION_PAUSED = "destination_paused"
    DESTINATION_RESUMED = "destination_resumed"
    STUDY_NOT_FOR_ANALYSIS_SET = "study_not_for_analysis_set"
    STUDY_NOT_FOR_ANALYSIS_CLEARED = "study_not_for_analysis_cleared"


class Severity(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class AuditTrail:
    """Appends audit events; each ``record`` call is its own transaction."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory

    def record(self, kind: AuditKind, message: str, *, severity: Severity = Severity.INFO,
               **context: Any) -> bool:
        """Append one event; returns False (and logs) when the database cannot take it."""
        try:
            with self._session_factory.begin() as session:
                session.add(make_event(kind, message, severity=severity, **context))
        except SQLAlchemyError as exc:
            log.error("audit event %s could not be written (database unavailable: %s): %s",
                      kind.value, type(exc).__name__, message)
            return False
        return True


def make_event(kind: AuditKind, message: str, *, severity: Severity = Severity.INFO,
               association_id: int | None = None, calling_ae: str | None = None,
               peer_host: str | None = None, study_instance_uid: str | None = None,
               series_instance_uid: str | None = None, sop_instance_uid: str | None = None,
               details: dict[str, Any] | None = None) -> AuditEvent:
    """An event row for callers that add it inside their own transaction."""
    return AuditEvent(
        kind=kind.value, severity=severity.value, message=message, association_id=association_id,
        calling_ae=calling_ae, peer_host=peer_host, study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid, sop_instance_uid=sop_instance_uid, details=details,
    )
