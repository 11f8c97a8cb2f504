"""The REST API's routes (read-only, JSON): studies with the console's filters, one study, its timeline,
results and findings, jobs, deliveries and destinations; the OpenAPI document at ``/openapi.json``.

Every route needs a signed-in user: the console's session cookie, or a bearer token where the node gives a
token check (``tokens``). Routes are plain functions, run on Starlette's thread pool, as they read the database.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
from http import HTTPStatus
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ortho_node.audit import views as q
from ortho_node.config import DestinationSettings
from listeners.api.openapi import DELIVERY_FILTERS, LIMIT, STUDY_FILTERS, UID, Operation, document

log = logging.getLogger(__name__)

Authenticate = Callable[[Request], "str | None"]  # the signed-in user of a request, or None
TokenCheck = Callable[[str], "str | None"]  # a bearer token -> the name it was issued to, or None

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
    Operation("/destinations", "listDestinations", "Configured destinations and their delivery queues",
              "DestinationList"),
)


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
                     status=query.get("status") or None, joint=query.get("joint") or None,
                     calling_ae=query.get("ae") or None, search=query.get("search") or None,
                     limit=_int(query.get("limit"), 500, 1, 10000))


def _listing(items: Sequence[Any]) -> ApiResponse:
    return ApiResponse({"items": list(items), "count": len(items)})


def _public_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result set without the node's file paths and the model card's bulk."""
    objects = [{k: v for k, v in o.items() if k != "path"} for o in result.get("objects") or []]
    return {**{k: v for k, v in result.items() if k not in ("objects", "model_card")}, "objects": objects}


class Api:
    """The API's answers over the node's database and destinations."""

    def __init__(self, session_factory: sessionmaker[Session], destinations: Sequence[DestinationSettings]) -> None:
        self.db = session_factory
        self.destinations = tuple(destinations)

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
        queues = q.destination_queues(self.db)
        empty = {"pending": 0, "delivered": 0, "failed": 0, "last_delivered_at": None}
        items = [{"name": d.name, "protocol": "dimse", "ae_title": d.ae_title, "host": d.host, "port": d.port,
                  "tls": d.tls, "kinds": list(d.kinds), "configured": True, "queue": queues.get(d.name, empty)}
                 for d in self.destinations]
        configured = {d.name for d in self.destinations}
        items += [{"name": name, "protocol": "dimse", "configured": False, "queue": queue}  # removed since
                  for name, queue in sorted(queues.items()) if name not in configured]
        return _listing(items)


def api_app(api: Api, authenticate: Authenticate, *, version: str, tokens: TokenCheck | None = None) -> Starlette:
    """The API as an application to mount at ``/api/v1``; JSON errors throughout."""
    handlers = {"listStudies": api.studies, "getStudy": api.study, "getStudyTimeline": api.timeline,
                "getStudyResults": api.results, "getStudyFindings": api.findings, "listJobs": api.jobs,
                "listDeliveries": api.deliveries, "listDestinations": api.destination_list}
    spec = document(OPERATIONS, version=version, tokens=tokens is not None)

    def user_of(request: Request) -> str | None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials and tokens is not None:
            return tokens(credentials.strip())
        return authenticate(request)

    def signed_in(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        @functools.wraps(handler)
        def endpoint(request: Request) -> Response:
            if user_of(request) is None:
                return _error(401, "sign in to the console, or send an API token",
                              {"WWW-Authenticate": 'Bearer realm="ortho-node"'})
            return handler(request)

        return endpoint

    def openapi(request: Request) -> Response:
        return ApiResponse(spec)

    routes = [Route("/openapi.json", openapi, methods=["GET"])]  # public: it describes, it holds no data
    routes += [Route(op.path, signed_in(handlers[op.operation_id]), methods=["GET"], name=op.operation_id)
               for op in OPERATIONS]

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
