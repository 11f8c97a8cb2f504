"""Prometheus metrics (``GET /metrics``) and the health check (``GET /healthz``): the operations application,
on its own port (``[metrics]``).

No login: the figures carry no patient data (counts, durations, free disk). Bind it to loopback or a
monitoring network (``metrics.host``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from listeners.web.headers import DefaultHeaders

HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def operations_routes(registry: CollectorRegistry, health: Callable[[], dict[str, Any]]) -> list[Route]:
    """``/metrics`` (scraped: read from the database at scrape time) and ``/healthz`` (alias ``/health``): 200
    when healthy, 503 naming the failed check otherwise. Plain functions: Starlette runs them on its thread pool,
    off the event loop, since both read the database."""

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def healthz(request: Request) -> Response:
        report = health()
        return JSONResponse(report, status_code=200 if report["healthy"] else 503)

    return [Route("/metrics", metrics, methods=["GET"]), Route("/healthz", healthz, methods=["GET"]),
            Route("/health", healthz, methods=["GET"])]


async def _plain_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return PlainTextResponse("not found\n" if status == 404 else f"{status}\n", status_code=status)


def operations_app(registry: CollectorRegistry, health: Callable[[], dict[str, Any]]) -> DefaultHeaders:
    app = Starlette(routes=operations_routes(registry, health), exception_handlers={HTTPException: _plain_error})
    return DefaultHeaders(app, HEADERS, name="metrics")
