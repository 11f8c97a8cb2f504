"""The REST API's routes (JSON): studies with the console's filters, one study, its timeline, results and
findings, jobs, deliveries, destinations and nodes (GET); the operator actions (POST, ``listeners.web.actions``); the
OpenAPI document at ``/openapi.json``.

A GET needs a signed-in user: the console's session cookie, or a bearer token (``ortho-node api-token``). A POST
needs a bearer token, never the cookie (a script acts with a token; a browser acts through the console's forms,
which carry a CSRF token): no token 401, a viewer's token 403 (audited), a revoked one 401. Routes are plain
functions, run on Starlette's thread pool, as they read or write the database.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
from http import HTTPStatus
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ortho_node.access.tokens import check_token
from ortho_node.audit import views as q
from ortho_node.cluster.registry import NodeStatus
from ortho_node.config import DestinationSettings
from ortho_node.delivery.pause import destination_overview
from listeners.api.openapi import (DELIVERY_FILTERS, DELIVERY_ID, DESTINATION, LIMIT, STUDY_FILTERS, UID, Operation,
                                   document)
from listeners.web.actions import Action, ActionFailed, Actor, OperatorActions

log = logging.getLogger(__name__)

Authenticate = Callable[[Request], "Actor | None"]  # the console user of a request's session, or None
TokenCheck = Callable[[str], "Actor | None"]  # a bearer token -> whom it stands for, or None
NodeList = Callable[[], Sequence[NodeStatus]]  # the processes sharing the database, with their state now
MAX_BODY_BYTES = 4096

OPERATIONS = (
    Operation("/studies", "listStudies", "Studies, newest first, with the console's filters", "StudyList",
              STUDY_FILTERS),
    Operation("/studies/{uid}", "getStudy", "One study: joint, status, findings present, deliveries", "Study",
              (UID,), not_found=True),
    Operation("/studies/{uid}/timeline", "getStudyTimeline", "The study's timeline, in the order it happened",
              "Timeline", (UID,), not_found=True),
    Operation("/studies/{uid}/results", "getStudyResults", "Every result set built for the study, newest first",
              "Results", (UID,), not_found=True),
    Operation("/studies/{uid}/findings", "getStudyFindings", "The findings of the study's latest result set",
              "Findings", (UID,), not_found=True),
    Operation("/jobs", "listJobs", "The most recent processing jobs, newest first", "JobList", (LIMIT,)),
    Operation("/deliveries", "listDeliveries", "The result delivery queue, newest first", "DeliveryList",
              DELIVERY_FILTERS),
    Operation("/destinations", "listDestinations", "Configured destinations, their delivery queues and pauses",
              "DestinationList"),
    Operation("/nodes", "listNodes", "The processes sharing the database: role, versions, heartbeat, state",
              "NodeList"),
)

#: The operator actions: path, operationId, summary, the action, its target parameter, whether a body is read.
_ACTIONS = (
    ("/studies/{uid}/reprocess", "reprocessStudy", "Queue the study for processing again", Action.REPROCESS, UID),
    ("/studies/{uid}/resend", "resendStudy", "Queue the study's results again (body: optional `to`)",
     Action.RESEND, UID),
    ("/studies/{uid}/keep", "keepStudy", "Mark the study to keep: never purged (body: optional `reason`)",
     Action.KEEP, UID),
    ("/studies/{uid}/unkeep", "unkeepStudy", "Clear the keep mark: the retention rules apply again",
     Action.UNKEEP, UID),
    ("/studies/{uid}/not-for-analysis", "markNotForAnalysis", "Mark the study not for analysis: its jobs end "
     "skipped (body: optional `reason`)", Action.NOT_FOR_ANALYSIS, UID),
    ("/studies/{uid}/analyse", "allowAnalysis", "Clear the not-for-analysis mark (reprocess it to analyse it)",
     Action.ANALYSE, UID),
    ("/deliveries/{id}/retry", "retryDelivery", "Queue one failed delivery again", Action.RETRY, DELIVERY_ID),
    ("/destinations/{name}/pause", "pauseDestination", "Pause deliveries to the destination (body: optional "
     "`reason`)", Action.PAUSE, DESTINATION),
    ("/destinations/{name}/resume", "resumeDestination", "Resume deliveries to the destination", Action.RESUME,
     DESTINATION),
)
ACTION_OPERATIONS = tuple(Operation(path, op_id, summary, "ActionResult", (target,), not_found=True, method="post",
                                    body="ActionRequest") for path, op_id, summary, _action, target in _ACTIONS)



class ApiResponse(JSONResponse):
    """JSON with times as ISO 8601 in UTC (the node stores UTC; naive values are UTC)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_encode, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _encode(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> ApiResponse:
    return ApiResponse({"error": message}, status_code=status, headers=dict(headers or {}))


def _int(text: str | None, default: int, low: int, high: int) -> int:
    try:
        return min(high, max(low, int(text))) if text else default
    except ValueError:
        return default


def _day(text: str | None, name: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError:
        raise HTTPException(400, f"{name}: expected a date YYYY-MM-DD, got {text!r}") from None


def filters(query: Mapping[str, str]) -> q.Filters:
    return q.Filters(since=_day(query.get("since"), "since"), until=_day(query.get("until"), "until"),
                     study_date=_day(query.get("study_date"), "study_date"),
                     status=query.get("status") or None, joint=query.get("joint") or None,
                     calling_ae=query.get("ae") or None, search=query.get("search") or None,
                     limit=_int(query.get("limit"), 500, 1, 10000), offset=_int(query.get("offset"), 0, 0, 10**7))


def _listing(items: Sequence[Any]) -> ApiResponse:
    return ApiResponse({"items": list(items), "count": len(items)})


def _public_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result set without the node's file paths and the model card's bulk."""
    objects = [{k: v for k, v in o.items() if k != "path"} for o in result.get("objects") or []]
    return {**{k: v for k, v in result.items() if k not in ("objects", "model_card")}, "objects": objects}


class Api:
    """The API's answers over the node's database and destinations."""

    def __init__(self, session_factory: sessionmaker[Session], destinations: Sequence[DestinationSettings], *,
                 actions: OperatorActions | None = None, nodes: NodeList | None = None) -> None:
        """``nodes``: the processes sharing the database (``NodeRegistry.nodes``; None: an empty list)."""
        self.db = session_factory
        self.destinations = tuple(destinations)
        self.actions = actions
        self.nodes: NodeList = nodes or (lambda: [])

    def _study(self, request: Request) -> str:
        uid = request.path_params["uid"]
        if q.study_row(self.db, uid) is None:
            raise HTTPException(404, f"no study {uid}")
        return uid

    def studies(self, request: Request) -> Response:
        return _listing(q.list_studies(self.db, filters(request.query_params)))

    def study(self, request: Request) -> Response:
        row = q.study_row(self.db, request.path_params["uid"])
        if row is None:
            raise HTTPException(404, f"no study {request.path_params['uid']}")
        return ApiResponse(row)

    def timeline(self, request: Request) -> Response:
        uid = self._study(request)
        entries = q.study_timeline(self.db, uid) or []
        return ApiResponse({"study_instance_uid": uid, "items": entries, "count": len(entries)})

    def results(self, request: Request) -> Response:
        uid = self._study(request)
        results = [_public_result(r) for r in q.study_results(self.db, uid)]
        return ApiResponse({"study_instance_uid": uid, "items": results, "count": len(results)})

    def findings(self, request: Request) -> Response:
        uid = self._study(request)
        results = q.study_results(self.db, uid)
        latest = results[0] if results else {}
        return ApiResponse({"study_instance_uid": uid, "result_set_id": latest.get("id"),
                            "model_name": latest.get("model_name"), "model_version": latest.get("model_version"),
                            "joint": latest.get("joint"), "laterality": latest.get("laterality"),
                            "findings": latest.get("findings") or []})

    def jobs(self, request: Request) -> Response:
        return _listing(q.list_jobs(self.db, limit=_int(request.query_params.get("limit"), 500, 1, 10000)))

    def deliveries(self, request: Request) -> Response:
        return _listing(q.list_deliveries(self.db, filters(request.query_params)))

    def destination_list(self, request: Request) -> Response:
        return _listing(destination_overview(self.db, self.destinations))

    def node_list(self, request: Request) -> Response:
        return _listing([node.as_dict() for node in self.nodes()])

    def act(self, action: Action, target: str, actor: Actor, body: Mapping[str, Any]) -> Response:
        if self.actions is None:
            raise HTTPException(404, "this node offers no actions")
        reason, to = body.get("reason", ""), body.get("to")
        if not isinstance(reason, str) or not (to is None or isinstance(to, str)):
            raise HTTPException(400, "reason and to are strings")
        try:
            done = self.actions.run(actor, action, target, reason=reason.strip(), to=to or None)
        except ActionFailed as failed:
            return _error(failed.status, failed.message)
        return ApiResponse({"action": action.value, "target": target, "result": done})


def api_app(api: Api, authenticate: Authenticate, *, version: str, tokens: TokenCheck | None = None,
            stow: bool = False) -> Starlette:
    """The API as an application to mount at ``/api/v1``; JSON errors throughout. The actions are offered where
    the node gives both actions (``api.actions``) and a token check; ``stow``: the OpenAPI document names the
    node's STOW-RS endpoints (``listeners.dicomweb``) too."""
    handlers = {"listStudies": api.studies, "getStudy": api.study, "getStudyTimeline": api.timeline,
                "getStudyResults": api.results, "getStudyFindings": api.findings, "listJobs": api.jobs,
                "listDeliveries": api.deliveries, "listDestinations": api.destination_list,
                "listNodes": api.node_list}
    acting = api.actions is not None and tokens is not None
    spec = document(OPERATIONS + (ACTION_OPERATIONS if acting else ()), version=version, tokens=tokens is not None,
                    stow=stow)

    def bearer(request: Request) -> tuple[bool, Actor | None]:
        """(a bearer token was sent, whom it stands for: None when unknown or revoked)."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return False, None
        return True, tokens(credentials.strip()) if tokens is not None else None

    def user_of(request: Request) -> Actor | None:
        sent, actor = bearer(request)
        return actor if sent else authenticate(request)

    def signed_in(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        @functools.wraps(handler)
        def endpoint(request: Request) -> Response:
            actor = user_of(request)
            if actor is None:
                return _unauthorized("sign in to the console, or send an API token")
            if not actor.role.may_read:
                return _error(403, f"a {actor.role.value} token may only send instances by STOW-RS")
            return handler(request)

        return endpoint

    def action_endpoint(action: Action, target: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            sent, actor = await run_in_threadpool(bearer, request)
            if actor is None:
                return _unauthorized("actions need an API token (Authorization: Bearer ...)" if not sent else
                                     "unknown or revoked API token")
            body = await _json_body(request)
            actor = Actor(actor.name, actor.role, "api", request.client.host if request.client else "-")
            return await run_in_threadpool(api.act, action, request.path_params[target], actor, body)

        return endpoint

    def openapi(request: Request) -> Response:
        return ApiResponse(spec)

    routes = [Route("/openapi.json", openapi, methods=["GET"])]  # public: it describes, it holds no data
    routes += [Route(op.path, signed_in(handlers[op.operation_id]), methods=["GET"], name=op.operation_id)
               for op in OPERATIONS]
    if acting:
        routes += [Route(path, action_endpoint(action, target.name), methods=["POST"], name=op_id)
                   for path, op_id, _summary, action, target in _ACTIONS]

    async def http_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            ours = exc.detail and exc.detail != HTTPStatus(exc.status_code).phrase  # raised here, with a reason
            message = exc.detail if ours else {404: "no such resource", 405: "read-only: GET only"}.get(
                exc.status_code, HTTPStatus(exc.status_code).phrase.lower())
            return _error(exc.status_code, message)
        return _error(500, "internal error")

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("api %s failed: %s: %s", request.url.path, type(exc).__name__, exc)
        return _error(500, "internal error")

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})


def token_check(session_factory: sessionmaker[Session]) -> TokenCheck:
    """Bearer tokens of ``ortho-node api-token``: whom a valid one stands for (``token:NAME``, its role)."""

    def check(token: str) -> Actor | None:
        holder = check_token(session_factory, token)
        return None if holder is None else Actor(f"token:{holder.name}", holder.role, "api")

    return check


def _unauthorized(message: str) -> ApiResponse:
    return _error(401, message, {"WWW-Authenticate": 'Bearer realm="ortho-node"'})


async def _json_body(request: Request) -> dict[str, Any]:
    """The optional JSON object of an action (``reason``, ``to``); empty when there is none."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body is a JSON object")
    return body
