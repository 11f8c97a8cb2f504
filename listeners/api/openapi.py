"""The OpenAPI 3.1 document of the REST API, built from the same table of operations the routes are made
from, so a route and its documentation cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ortho_node.audit.views import DELIVERY_COLUMNS, JOINTS, STATUSES, STUDY_COLUMNS

_STRING, _INTEGER, _NUMBER, _BOOLEAN = ({"type": t} for t in ("string", "integer", "number", "boolean"))
_TIME = {"type": ["string", "null"], "format": "date-time", "description": "UTC, ISO 8601"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


@dataclass(frozen=True)
class Parameter:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: dict(_STRING))
    where: str = "query"

    def document(self) -> dict[str, Any]:
        return {"name": self.name, "in": self.where, "required": self.where == "path",
                "description": self.description, "schema": self.schema}


UID = Parameter("uid", "Study Instance UID", where="path")
LIMIT = Parameter("limit", "Most rows returned (default 500)", {"type": "integer", "minimum": 1, "maximum": 10000})
DAY_FILTERS = (Parameter("since", "From this day (UTC)", {"type": "string", "format": "date"}),
               Parameter("until", "To this day (UTC), inclusive", {"type": "string", "format": "date"}))
STUDY_FILTERS = (Parameter("search", "Part of the Study Instance UID or the study description"), *DAY_FILTERS,
                 Parameter("status", "Study status", {"type": "string", "enum": list(STATUSES)}),
                 Parameter("joint", "Joint", {"type": "string", "enum": [*JOINTS, "unknown"]}),
                 Parameter("ae", "Calling AE title of a sender"), LIMIT)
DELIVERY_FILTERS = (Parameter("search", "Part of the Study Instance UID"), *DAY_FILTERS,
                    Parameter("status", "Queue state", {"type": "string", "enum": ["pending", "delivered", "failed"]}),
                    LIMIT)


@dataclass(frozen=True)
class Operation:
    path: str  # below /api/v1
    operation_id: str
    summary: str
    schema: str  # the response's component schema
    parameters: Sequence[Parameter] = ()
    not_found: bool = False  # answers 404 for an unknown study

    def document(self) -> dict[str, Any]:
        responses: dict[str, Any] = {
            "200": {"description": "OK", "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{self.schema}"}}}},
            "401": {"$ref": "#/components/responses/Unauthorized"}}
        if self.not_found:
            responses["404"] = {"$ref": "#/components/responses/NotFound"}
        return {"operationId": self.operation_id, "summary": self.summary,
                "parameters": [p.document() for p in self.parameters], "responses": responses}


def _list(item: str) -> dict[str, Any]:
    return {"type": "object", "required": ["items", "count"],
            "properties": {"items": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
                           "count": _INTEGER}}


def _object(properties: dict[str, Any], *, required: Sequence[str] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required)}


_STRINGS = {"type": "array", "items": _STRING}
_STUDY_TYPES: dict[str, Any] = {
    "calling_aes": _STRINGS, "missing_planes": _STRINGS, "findings_present": _STRINGS, "failure_reasons": _STRINGS,
    "first_received_at": _TIME, "last_received_at": _TIME, "results_at": _TIME, "instance_count": _INTEGER,
    "delivered": _INTEGER, "pending": _INTEGER, "failed": _INTEGER, "turnaround_seconds": _nullable(_NUMBER),
    "study_instance_uid": _STRING, "status": _STRING,
}
_DELIVERY_TYPES: dict[str, Any] = {"attempts": _INTEGER, "last_status": _nullable(_INTEGER), "queued_at": _TIME,
                                   "last_attempt_at": _TIME, "delivered_at": _TIME}
_FINDING = _object({"label": _STRING, "present": _BOOLEAN, "probability": _NUMBER, "threshold": _NUMBER},
                   required=("label", "present", "probability", "threshold"))

SCHEMAS: dict[str, Any] = {
    "Study": _object({c: _STUDY_TYPES.get(c, _nullable(_STRING)) for c in STUDY_COLUMNS},
                     required=("study_instance_uid", "status")),
    "StudyList": _list("Study"),
    "TimelineEntry": _object({"at": _TIME, "step": _STRING, "job_id": _nullable(_INTEGER), "detail": _STRING,
                              "data": {"type": ["object", "null"]}}, required=("at", "step", "detail")),
    "Timeline": _object({"study_instance_uid": _STRING, "items": {
        "type": "array", "items": {"$ref": "#/components/schemas/TimelineEntry"}}, "count": _INTEGER}),
    "Finding": _FINDING,
    "ResultObject": _object({"kind": _STRING, "sop_instance_uid": _STRING, "series_instance_uid": _STRING,
                             "sop_class_uid": _STRING}),
    "ResultSet": _object({"id": _INTEGER, "job_id": _nullable(_INTEGER), "created_at": _TIME, "joint": _STRING,
                          "laterality": _nullable(_STRING), "model_name": _STRING, "model_version": _STRING,
                          "findings": {"type": "array", "items": {"$ref": "#/components/schemas/Finding"}},
                          "objects": {"type": "array", "items": {"$ref": "#/components/schemas/ResultObject"}},
                          "inference_started_at": _TIME, "inference_finished_at": _TIME}),
    "Results": _object({"study_instance_uid": _STRING, "items": {
        "type": "array", "items": {"$ref": "#/components/schemas/ResultSet"}}, "count": _INTEGER}),
    "Findings": _object({"study_instance_uid": _STRING, "result_set_id": _nullable(_INTEGER),
                         "model_name": _nullable(_STRING), "model_version": _nullable(_STRING),
                         "joint": _nullable(_STRING), "laterality": _nullable(_STRING),
                         "findings": {"type": "array", "items": {"$ref": "#/components/schemas/Finding"}}}),
    "Job": _object({"id": _INTEGER, "study_instance_uid": _STRING, "state": _STRING, "reason": _nullable(_STRING),
                    "skip_cause": _nullable(_STRING), "attempts": _INTEGER, "next_attempt_at": _TIME,
                    "last_error": _nullable(_STRING), "supersedes_job_id": _nullable(_INTEGER),
                    "created_at": _TIME, "started_at": _TIME, "finished_at": _TIME}),
    "JobList": _list("Job"),
    "Delivery": _object({c: _DELIVERY_TYPES.get(c, _nullable(_STRING)) for c in DELIVERY_COLUMNS}),
    "DeliveryList": _list("Delivery"),
    "Destination": _object({"name": _STRING, "protocol": _STRING, "ae_title": _STRING, "host": _STRING,
                            "port": _INTEGER, "tls": _BOOLEAN, "kinds": _STRINGS, "configured": _BOOLEAN,
                            "queue": _object({"pending": _INTEGER, "delivered": _INTEGER, "failed": _INTEGER,
                                              "last_delivered_at": _TIME})}),
    "DestinationList": _list("Destination"),
    "Error": _object({"error": _STRING}, required=("error",)),
}


def document(operations: Sequence[Operation], *, version: str, tokens: bool = False) -> dict[str, Any]:
    """The document; ``tokens``: bearer tokens are accepted (named as a security scheme only then)."""
    paths: dict[str, Any] = {}
    for operation in operations:
        paths.setdefault(operation.path, {})["get"] = operation.document()
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "OrthoDiffusion Node API", "version": version,
                 "description": "Read-only views of the node's studies, results, jobs and deliveries. Results "
                                "are AI-generated and not for diagnostic use."},
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": {"Unauthorized": {"description": "No valid console session or token", **error},
                          "NotFound": {"description": "No such study", **error}},
            "securitySchemes": {"session": {"type": "apiKey", "in": "cookie", "name": "ortho_console",
                                            "description": "The admin console's session (sign in at /login)"},
                                **({"token": {"type": "http", "scheme": "bearer", "description": "An API token"}}
                                   if tokens else {})},
        },
        "security": [{"session": []}, *([{"token": []}] if tokens else [])],
    }
