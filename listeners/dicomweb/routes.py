"""The DICOMweb routes: STOW-RS ``POST /studies`` and ``POST /studies/{StudyInstanceUID}`` (mounted at
``/dicomweb``), answering the Store Instances Response.

Order of checks, each with its HTTP status: credentials (401, 403 for a role that may not store), the response
type the Accept header allows (406), media type (415), declared length (413, before a byte is read), the body spooled to disk (413 once over the limit), the
multipart structure (400: located whole before anything is stored, so a cut-short body stores nothing), then each
instance through intake (200 / 202 / 409 / 503, ``listeners.dicomweb.response``: DICOM JSON, or XML when the
Accept header prefers it). Every refusal is audited.
"""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from ortho_node.audit.trail import AuditKind, AuditTrail, Severity
from ortho_node.intake.storage import is_valid_uid
from listeners.dicomweb.access import CHALLENGE, Refused, StowAccess
from listeners.dicomweb.multipart import (BodyParts, BodyTooLarge, MalformedBody, RelatedType, SpooledBody,
                                          UnsupportedMediaType, parse_content_type)
from listeners.dicomweb.response import (DICOM_JSON, DICOM_XML, RETRY_AFTER_S, NotAcceptable, http_status,
                                         native_xml, response_body, response_type)
from listeners.dicomweb.stow import Sender, StoreReport, StowReceiver
from listeners.web.headers import DefaultHeaders

log = logging.getLogger(__name__)

PREFIX = "/dicomweb"
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class DicomJsonResponse(JSONResponse):
    media_type = DICOM_JSON


class StowEndpoint:
    """STOW-RS requests end to end: access, limits, spooling, intake, response."""

    def __init__(self, receiver: StowReceiver, access: StowAccess, audit: AuditTrail, *, spool_folder: Path,
                 max_bytes: int) -> None:
        self.receiver = receiver
        self.access = access
        self._audit = audit
        self.spool_folder = spool_folder
        self.max_bytes = max_bytes

    async def store_instances(self, request: Request) -> Response:
        peer = request.client.host if request.client else "-"
        study = request.path_params.get("study")
        try:
            sender = await run_in_threadpool(self.access.sender, request.headers.get("authorization"), peer)
        except Refused as refused:
            return _error(refused.status, refused.message,
                          {"WWW-Authenticate": CHALLENGE} if refused.status == 401 else None)
        try:
            media_type = response_type(request.headers.get("accept"))
            related = parse_content_type(request.headers.get("content-type"))
            if study is not None and not is_valid_uid(study):
                raise MalformedBody("the request's StudyInstanceUID is not a valid UID")
            self._check_declared_length(request.headers.get("content-length"))
        except (NotAcceptable, UnsupportedMediaType, MalformedBody, BodyTooLarge) as exc:
            return self._refused(exc, sender)
        return await self._receive(request, related, sender, study, media_type)

    def _check_declared_length(self, declared: str | None) -> None:
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise BodyTooLarge(f"request body of {declared} bytes is over the limit of {self.max_bytes} "
                               "(dicomweb.max_request_mb)")

    async def _receive(self, request: Request, related: RelatedType, sender: Sender, study: str | None,
                       media_type: str) -> Response:
        try:
            spool = SpooledBody(self.spool_folder, self.max_bytes)
        except OSError as exc:
            return self._unspooled(exc, sender)
        try:
            async for chunk in request.stream():
                spool.write(chunk)
            spool.close()
            report = await run_in_threadpool(self._store, spool.path, related, sender, study)
        except (MalformedBody, BodyTooLarge) as exc:
            return self._refused(exc, sender)
        except OSError as exc:  # the spool file could not be written (disk full): nothing was stored
            return self._unspooled(exc, sender)
        except ClientDisconnect:
            log.warning("STOW-RS request from %s at %s: the client went away before the body ended; nothing "
                        "stored", sender.name, sender.peer_host)
            return Response(status_code=400)  # nobody reads it; Starlette needs an answer
        finally:
            spool.remove()
        status = http_status(report.instances)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        body = response_body(report.instances)
        if media_type == DICOM_XML:
            return Response(native_xml(body), status_code=status, headers=headers, media_type=DICOM_XML)
        return DicomJsonResponse(body, status_code=status, headers=headers)

    def _store(self, path: Path, related: RelatedType, sender: Sender, study: str | None) -> StoreReport:
        with BodyParts(path, related) as body:
            parts = body.parts()
            if not parts:
                raise MalformedBody("the body holds no part")
            return self.receiver.store(body, parts, sender, study_instance_uid=study)

    def _unspooled(self, exc: OSError, sender: Sender) -> Response:
        """The body could not be spooled to disk: 503 with Retry-After, as Refused: Out of Resources over DIMSE."""
        why = f"request body not spooled: {exc.strerror or type(exc).__name__}"
        log.error("STOW-RS request from %s at %s: %s; answered 503", sender.name, sender.peer_host, why)
        self._audit.record(AuditKind.STORAGE_FAILED, why, severity=Severity.ERROR, calling_ae=sender.ref.calling_ae,
                           peer_host=sender.peer_host, details={"user": sender.name, "http_status": 503})
        return _error(503, why, {"Retry-After": str(RETRY_AFTER_S)})

    def _refused(self, exc: Exception, sender: Sender) -> Response:
        status = {NotAcceptable: 406, UnsupportedMediaType: 415, BodyTooLarge: 413}.get(type(exc), 400)
        log.warning("STOW-RS request from %s at %s refused (%d): %s", sender.name, sender.peer_host, status, exc)
        self._audit.record(AuditKind.STOW_REFUSED, f"STOW-RS request refused ({status}): {exc}",
                           severity=Severity.WARNING, calling_ae=sender.ref.calling_ae, peer_host=sender.peer_host,
                           details={"user": sender.name, "via": sender.via, "http_status": status})
        return _error(status, str(exc))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def dicomweb_app(endpoint: StowEndpoint) -> Starlette:
    """The routes below ``/dicomweb``, JSON errors throughout (a GET here: 405, the node offers STOW-RS only)."""
    routes = [Route("/studies", endpoint.store_instances, methods=["POST"], name="storeInstances"),
              Route("/studies/{study}", endpoint.store_instances, methods=["POST"], name="storeStudyInstances")]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return _error(status, {404: "no such DICOMweb resource", 405: "this node offers STOW-RS only (POST)"}
                      .get(status, "request refused"))

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def dicomweb_listener_app(endpoint: StowEndpoint) -> DefaultHeaders:
    """The application of a DICOMweb listener of its own (``dicomweb.own_listener``): the routes at ``/dicomweb``."""
    app = Starlette(routes=[Mount(PREFIX, app=dicomweb_app(endpoint))])
    return DefaultHeaders(app, HEADERS, name="dicomweb")
