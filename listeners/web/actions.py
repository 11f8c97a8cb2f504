"""The operator actions the console and the REST API offer, in one place: who may act, the core function each
action calls, and the audit event that names the user.

Each action calls the function of the core package that owns it, the same one the CLI calls: reprocess
(``Scheduler.reprocess``), resend and retry (``DeliveryService``), pause and resume a destination
(``ortho_node.delivery.pause``), keep (``ortho_node.retention.keep``), not for analysis
(``ortho_node.assembly.analysis_mark``). Only an operator acts: a viewer's request is refused (403) and that
refusal is audited too. Every attempt by an operator is an ``operator_action`` event with the user, the way
(console or api), the action, its target and its outcome.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from ortho_node.assembly.analysis_mark import set_not_for_analysis
from ortho_node.audit.trail import AuditKind, AuditTrail, Severity
from ortho_node.config.users import Role
from ortho_node.delivery.worker import UnknownDestination
from ortho_node.retention.keep import set_keep
from ortho_node.scheduling.jobs import NotAnalysable

log = logging.getLogger(__name__)


class Action(str, enum.Enum):
    REPROCESS = "reprocess"
    RESEND = "resend"
    KEEP = "keep"
    UNKEEP = "unkeep"
    NOT_FOR_ANALYSIS = "not-for-analysis"
    ANALYSE = "analyse"  # clears the not-for-analysis mark
    RETRY = "retry"
    PAUSE = "pause"
    RESUME = "resume"


#: What an action's target is: a Study Instance UID, a delivery queue row id, a destination name.
STUDY_ACTIONS = (Action.REPROCESS, Action.RESEND, Action.KEEP, Action.UNKEEP, Action.NOT_FOR_ANALYSIS,
                 Action.ANALYSE)
DESTINATION_ACTIONS = (Action.PAUSE, Action.RESUME)


@dataclass(frozen=True)
class Actor:
    """Who asks: a console user, or an API token (``token:NAME``), with the role it holds."""

    name: str
    role: Role
    via: str  # "console" or "api"
    peer: str = "-"


class ActionFailed(Exception):
    """An action that did not happen: ``status`` is the HTTP answer (403 not allowed, 404 no such target, 409 the
    target's state forbids it), the message says why in one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Deliveries(Protocol):  # ortho_node.delivery.worker.DeliveryService
    def resend(self, study_instance_uid: str, to: str | None = None) -> tuple[int, list[str]]: ...
    def retry(self, item_id: int, *, by: str | None = None) -> tuple[str, str]: ...
    def pause(self, name: str, paused: bool, *, by: str | None = None, reason: str = "") -> str: ...


class OperatorActions:
    def __init__(self, session_factory: sessionmaker[Session], audit: AuditTrail, *,
                 reprocess: Callable[[str], int | None], deliveries: Deliveries) -> None:
        self._session_factory = session_factory
        self._audit = audit
        self._reprocess = reprocess
        self._deliveries = deliveries

    def run(self, actor: Actor, action: Action, target: str, *, reason: str = "", to: str | None = None) -> str:
        """Do ``action`` on ``target`` for ``actor``; returns what was done, in words. Raises
        :class:`ActionFailed` when it is not allowed or cannot be done."""
        where = {"user": actor.name, "via": actor.via, "action": action.value, "target": target}
        study = target if action in STUDY_ACTIONS else None
        if not actor.role.may_act:
            self._audit.record(AuditKind.OPERATOR_ACTION_REFUSED, f"{action.value} refused: {actor.name} is a "
                               f"{actor.role.value}", severity=Severity.WARNING, peer_host=actor.peer,
                               study_instance_uid=study, details={**where, "role": actor.role.value})
            log.warning("%s of %s by %s (%s) refused: role %s", action.value, target, actor.name, actor.via,
                        actor.role.value)
            raise ActionFailed(403, f"{actor.name} is a {actor.role.value}: only an operator may {action.value}")
        try:
            study, message = self._do(actor, action, target, reason=reason, to=to)
        except ActionFailed as failed:
            self._audit.record(AuditKind.OPERATOR_ACTION, f"{action.value} by {actor.name} failed: {failed.message}",
                               severity=Severity.WARNING, peer_host=actor.peer, study_instance_uid=study,
                               details={**where, "outcome": "failed", "why": failed.message})
            raise
        self._audit.record(AuditKind.OPERATOR_ACTION, f"{action.value} by {actor.name}: {message}",
                           peer_host=actor.peer, study_instance_uid=study,
                           details={**where, "outcome": "done", "reason": reason or None, "to": to})
        log.info("%s of %s by %s (%s) done", action.value, target, actor.name, actor.via)
        return message

    def _do(self, actor: Actor, action: Action, target: str, *, reason: str,
            to: str | None) -> tuple[str | None, str]:
        """(the study concerned, what was done); core exceptions become :class:`ActionFailed`."""
        study = target if action in STUDY_ACTIONS else None
        try:
            if action is Action.RETRY:
                return self._deliveries.retry(_delivery_id(target), by=actor.name)
            return study, self._dispatch(actor, action, target, reason=reason, to=to)
        except NotAnalysable as exc:
            raise ActionFailed(409, str(exc)) from None
        except UnknownDestination as exc:
            raise ActionFailed(404, str(exc.args[0])) from None
        except LookupError as exc:
            raise ActionFailed(404, str(exc.args[0])) from None
        except ValueError as exc:  # the target's state: a delivery that is not flagged, a result file gone
            raise ActionFailed(409, str(exc)) from None

    def _dispatch(self, actor: Actor, action: Action, target: str, *, reason: str, to: str | None) -> str:
        if action is Action.REPROCESS:
            job_id = self._reprocess(target)
            return f"job {job_id} queued for study {target}"
        if action is Action.RESEND:
            count, targets = self._deliveries.resend(target, to or None)
            return f"{count} result objects queued for {', '.join(targets)}"
        if action in (Action.KEEP, Action.UNKEEP):
            return set_keep(self._session_factory, target, action is Action.KEEP, reason=reason)
        if action in (Action.NOT_FOR_ANALYSIS, Action.ANALYSE):
            return set_not_for_analysis(self._session_factory, target, action is Action.NOT_FOR_ANALYSIS,
                                        by=actor.name, reason=reason)
        if action in DESTINATION_ACTIONS:
            return self._deliveries.pause(target, action is Action.PAUSE, by=actor.name, reason=reason)
        raise ActionFailed(404, f"no action {action.value}")


def _delivery_id(target: str) -> int:
    try:
        return int(target)
    except ValueError:
        raise ActionFailed(404, f"no delivery {target!r}") from None

