"""The OpenAPI 3.1 document of the REST API, built from the same table of operations the routes are made
from, so a route and its documentation cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ortho_node.audit.views import DELIVERY_COLUMNS, IDENTIFIER_COLUMNS, JOINTS, STATUSES, STUDY_COLUMNS

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
DELIVERY_ID = Parameter("id", "The delivery queue row's id (``id`` in /deliveries)", {"type": "integer"},
                        where="path")
DESTINATION = Parameter("name", "Destination name ([[destinations]] name)", where="path")
LIMIT = Parameter("limit", "Most rows returned (default 500)", {"type": "integer", "minimum": 1, "maximum": 10000})
OFFSET = Parameter("offset", "Matching rows skipped (the next page: offset + limit)", {"type": "integer", "minimum": 0})
DAY_FILTERS = (Parameter("since", "From this day (UTC)", {"type": "string", "format": "date"}),
               Parameter("until", "To this day (UTC), inclusive", {"type": "string", "format": "date"}))
STUDY_FILTERS = (Parameter("search", "Part of the Study Instance UID, study description, accession number, patient "
                                     "ID or patient name"),
                 Parameter("study_date", "Study Date in the header", {"type": "string", "format": "date"}),
                 *DAY_FILTERS,
                 Parameter("status", "Study status", {"type": "string", "enum": list(STATUSES)}),
                 Parameter("joint", "Joint", {"type": "string", "enum": [*JOINTS, "unknown"]}),
                 Parameter("ae", "Calling AE title of a sender"), LIMIT, OFFSET)
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
    not_found: bool = False  # answers 404 for an unknown study (or delivery, destination)
    method: str = "get"  # "post": an operator action (a bearer token of an operator)
    body: str | None = None  # the request body's component schema (optional JSON)

    def document(self) -> dict[str, Any]:
        responses: dict[str, Any] = {
            "200": {"description": "OK", "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{self.schema}"}}}},
            "401": {"$ref": "#/components/responses/Unauthorized"}}
        if self.not_found:
            responses["404"] = {"$ref": "#/components/responses/NotFound"}
        operation: dict[str, Any] = {"operationId": self.operation_id, "summary": self.summary,
                                     "parameters": [p.document() for p in self.parameters], "responses": responses}
        if self.method == "post":
            responses["403"] = {"$ref": "#/components/responses/Forbidden"}
            responses["409"] = {"$ref": "#/components/responses/Conflict"}
            operation["security"] = [{"token": []}]  # actions: a bearer token, never the console's cookie
            if self.body:
                operation["requestBody"] = {"required": False, "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{self.body}"}}}}
        return operation


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
    "Study": _object({**{c: _STUDY_TYPES.get(c, _nullable(_STRING)) for c in STUDY_COLUMNS},
                      **{c: _nullable(_STRING) for c in IDENTIFIER_COLUMNS},
                      "study_date": {"type": ["string", "null"], "format": "date"},
                      "keep": _BOOLEAN, "not_for_analysis": _BOOLEAN},
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
    "Delivery": _object({"id": _INTEGER, **{c: _DELIVERY_TYPES.get(c, _nullable(_STRING)) for c in DELIVERY_COLUMNS}}),
    "DeliveryList": _list("Delivery"),
    "Destination": _object({"name": _STRING, "protocol": {"type": ["string", "null"], "enum": ["dimse", "dicomweb", None],
                                                          "description": "null: no longer configured"},
                            "url": {"type": "string", "description": "STOW-RS base URL (dicomweb)"},
                            "ae_title": _STRING, "host": _STRING,
                            "port": _INTEGER, "tls": _BOOLEAN, "kinds": _STRINGS, "configured": _BOOLEAN,
                            "queue": _object({"pending": _INTEGER, "delivered": _INTEGER, "failed": _INTEGER,
                                              "last_delivered_at": _TIME}),
                            "paused": {"type": ["object", "null"], "description": "null: delivering",
                                       "properties": {"reason": _nullable(_STRING), "by": _nullable(_STRING),
                                                      "since": _TIME}}}),
    "DestinationList": _list("Destination"),
    "Node": _object({"node_id": _STRING, "role": {"type": "string", "enum": ["all", "receive", "process"]},
                     "host": _STRING, "pid": _INTEGER, "version": _STRING,
                     "model_version": {**_nullable(_STRING), "description": "null: no model loaded"},
                     "gpu": {**_nullable(_STRING), "description": "null: CPU or no model"},
                     "started_at": _TIME, "last_heartbeat_at": _TIME, "stopped_at": _TIME,
                     "state": {"type": "string", "enum": ["live", "missed", "stopped"],
                               "description": "missed: its leases expired, other processes took its work over"},
                     "missed_heartbeats": _INTEGER},
                    required=("node_id", "role", "host", "state", "last_heartbeat_at")),
    "NodeList": _list("Node"),
    "Error": _object({"error": _STRING}, required=("error",)),
    "ActionRequest": _object({"reason": {"type": "string", "maxLength": 128,
                                         "description": "Why (keep, not-for-analysis, pause): recorded with it"},
                              "to": {"type": "string", "description": "resend: only this destination"}}),
    "ActionResult": _object({"action": _STRING, "target": _STRING, "result": _STRING},
                            required=("action", "target", "result")),
}


_STORE_DATASET = ("ReferencedSOPSequence (00081199) of the stored instances, FailedSOPSequence (00081198) of the "
                  "refused ones with FailureReason (00081197): the status a C-STORE would have got (A700 out of "
                  "resources, A900 data set does not match, C210 cannot understand, C220/C221 missing or invalid UID, "
                  "C230 refused by an accept rule)")
_STORE_RESPONSE = {"content": {
    "application/dicom+json": {"schema": {"type": "object", "description": "Store Instances Response (PS3.18 "
                                          f"10.5.3) in the DICOM JSON Model: {_STORE_DATASET}"}},
    "application/dicom+xml": {"schema": {"type": "string", "description": "the same in the Native DICOM Model "
                                         "(PS3.19 A.1), when the Accept header prefers it"}}}}


def _store_instances(operation_id: str, summary: str, study: bool) -> dict[str, Any]:
    """STOW-RS (PS3.18 10.5): not under /api/v1 but at /dicomweb on the console's port (or the DICOMweb listener's)."""
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    responses = {
        "200": {"description": "Every instance stored (durably, before the answer)", **_STORE_RESPONSE},
        "202": {"description": "Some instances stored, some failed: see FailedSOPSequence", **_STORE_RESPONSE},
        "409": {"description": "No instance stored: see FailedSOPSequence", **_STORE_RESPONSE},
        "503": {"description": "No instance stored for want of resources (A7xx); retry after Retry-After",
                **_STORE_RESPONSE},
        **{code: {"description": text, **error} for code, text in (
            ("400", "Malformed multipart body (nothing stored)"), ("401", "No valid token or user"),
            ("403", "The role may not store (operator or stow may)"),
            ("406", "Accept allows neither application/dicom+json nor application/dicom+xml (nothing stored)"),
            ("413", "Body over dicomweb.max_request_mb (nothing stored)"),
            ("415", "Not multipart/related; type=\"application/dicom\""))}}
    parameters = [{"name": "StudyInstanceUID", "in": "path", "required": True, "schema": _STRING,
                   "description": "Every instance must belong to this study (others fail with A900)"}] if study else []
    return {"servers": [{"url": "/", "description": "the node's web root, not /api/v1"}], "post": {
        "operationId": operation_id, "summary": summary, "parameters": parameters,
        "security": [{"token": []}, {"basic": []}],
        "requestBody": {"required": True, "description": 'multipart/related; type="application/dicom": one PS3.10 '
                        "file per part", "content": {"multipart/related": {"schema": {"type": "string",
                                                                                      "format": "binary"}}}},
        "responses": responses}}


STOW_PATHS = {"/dicomweb/studies": _store_instances("storeInstances", "STOW-RS: store instances", False),
              "/dicomweb/studies/{StudyInstanceUID}": _store_instances(
                  "storeStudyInstances", "STOW-RS: store instances of one study", True)}


def document(operations: Sequence[Operation], *, version: str, tokens: bool = False,
             stow: bool = False) -> dict[str, Any]:
    """The document; ``tokens``: bearer tokens are accepted (named as a security scheme only then); ``stow``: the
    node receives by STOW-RS (its endpoints named, with HTTP basic as a further scheme)."""
    paths: dict[str, Any] = {}
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method] = operation.document()
    if stow:
        paths.update(STOW_PATHS)
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "OrthoDiffusion Node API", "version": version,
                 "description": "The node's studies, results, jobs, deliveries, destinations and processes (GET, a console "
                                "session or a bearer token), and the operator actions (POST, a bearer token with "
                                "the operator role: `ortho-node api-token create NAME --role operator`). Results "
                                "are AI-generated and not for diagnostic use."},
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": {"Unauthorized": {"description": "No valid console session or token", **error},
                          "Forbidden": {"description": "The token's role (viewer) may not act", **error},
                          "NotFound": {"description": "No such study, delivery or destination", **error},
                          "Conflict": {"description": "The target's state forbids the action (e.g. a delivery "
                                                      "that is not failed, a study with nothing to analyse)",
                                       **error}},
            "securitySchemes": {"session": {"type": "apiKey", "in": "cookie", "name": "ortho_console",
                                            "description": "The admin console's session (sign in at /login)"},
                                **({"token": {"type": "http", "scheme": "bearer", "description": "An API token"}}
                                   if tokens or stow else {}),
                                **({"basic": {"type": "http", "scheme": "basic", "description": "A console user "
                                              "(console.users) with the operator or stow role; STOW-RS only"}}
                                   if stow else {})},
        },
        "security": [{"session": []}, *([{"token": []}] if tokens else [])],
    }
