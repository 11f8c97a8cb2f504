"""The console's pages (``GET``): each reads its data (``ortho_node.audit.views``, the registries) and renders it
(``listeners.console.pages``); ``listeners.console.routes`` wraps each in the session check."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ortho_node.audit import views as q
from ortho_node.delivery.pause import destination_overview
from listeners.console import pages
from listeners.console.images import dicom_to_png
from listeners.console.model_history import model_overview
from listeners.console.sessions import Session

if TYPE_CHECKING:
    from listeners.console.routes import Console


def html_error(status: int, message: str, console: Console | None, session: Session | None) -> HTMLResponse:
    frame = console.frame(session) if console and session else {"user": None}
    return HTMLResponse(pages.error_page(status, message, **frame), status_code=status)


def _query(request: Request) -> dict[str, str]:
    return dict(request.query_params)


def studies(request: Request, console: Console, session: Session) -> Response:
    query = _query(request)
    if request.url.path.endswith(".csv"):
        return _csv(q.to_csv(q.list_studies(console.db, _filters(query)), q.STUDY_COLUMNS), "studies.csv")
    offset = _int(query.get("offset"), 0, 0, 10**7)
    # One row more than a page says whether an older page exists.
    rows = q.list_studies(console.db, _filters(query, limit=pages.PAGE_SIZE + 1, offset=offset))
    rows, more = rows[:pages.PAGE_SIZE], len(rows) > pages.PAGE_SIZE
    return HTMLResponse(pages.studies_page(rows, _kept(query), warnings=console.warnings, offset=offset, more=more,
                                           **console.frame(session, request)))


def deliveries(request: Request, console: Console, session: Session) -> Response:
    return _filtered(request, console, session, q.list_deliveries, q.DELIVERY_COLUMNS, "deliveries",
                     pages.deliveries_page)


def _filtered(request: Request, console: Console, session: Session, listing: Callable, columns: Sequence[str],
              name: str, page: Callable[..., str]) -> Response:
    """A list the query's filters select: as CSV (``<name>.csv``) or as its page."""
    query = _query(request)
    rows = listing(console.db, _filters(query))
    if request.url.path.endswith(".csv"):
        return _csv(q.to_csv(rows, columns), f"{name}.csv")
    return HTMLResponse(page(rows, _kept(query), **console.frame(session, request)))


def destinations(request: Request, console: Console, session: Session) -> Response:
    rows = destination_overview(console.db, console.destinations)
    return HTMLResponse(pages.destinations_page(rows, **console.frame(session, request)))


def nodes(request: Request, console: Console, session: Session) -> Response:
    return HTMLResponse(pages.nodes_page(console.nodes(), **console.frame(session, request)))


def models(request: Request, console: Console, session: Session) -> Response:
    if console.models is None:
        return html_error(404, "This console has no model registry.", console, session)
    overview = model_overview(console.models, console.db)
    return HTMLResponse(pages.models_page(overview, **console.frame(session, request)))


def failures(request: Request, console: Console, session: Session) -> Response:
    return _filtered(request, console, session, q.list_failures, q.FAILURE_COLUMNS, "failures", pages.failures_page)


def summary(request: Request, console: Console, session: Session) -> Response:
    days = q.daily_summary(console.db, days=_int(request.query_params.get("days"), 14, 1, 366))
    if request.url.path.endswith(".csv"):
        return _csv(q.to_csv(days, tuple(days[0])), "summary.csv")
    return HTMLResponse(pages.summary_page(days, **console.frame(session, request)))


def _summary_images(console: Console, uid: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    results = q.study_results(console.db, uid)
    return results, [o for o in (results[0]["objects"] if results else []) if o.get("kind") == "summary"]


def study(request: Request, console: Console, session: Session) -> Response:
    uid = request.path_params["uid"]
    row = console.study_row(uid)
    if row is None:
        return html_error(404, "No such study.", console, session)
    results, images = _summary_images(console, uid)
    urls = [(f"/studies/{uid}/images/{o['sop_instance_uid']}.png", f"key image {n}")
            for n, o in enumerate(images, start=1) if Path(o["path"]).is_file()]
    deliveries = q.list_deliveries(console.db, study_instance_uid=uid)
    names = sorted({d.name for d in console.destinations} | {d["destination"] for d in deliveries})
    body = pages.study_page(row, q.study_timeline(console.db, uid) or [], results, deliveries, urls,
                            series=q.study_series(console.db, uid), destinations=names,
                            **console.frame(session, request))
    return HTMLResponse(body)


def timeline_csv(request: Request, console: Console, session: Session) -> Response:
    uid = request.path_params["uid"]
    if console.study_row(uid) is None:
        return html_error(404, "No such study.", console, session)
    timeline = q.study_timeline(console.db, uid) or []
    return _csv(q.to_csv(timeline, q.TIMELINE_COLUMNS), f"timeline-{uid}.csv")


def key_image(request: Request, console: Console, session: Session) -> Response:
    uid, sop_uid = request.path_params["uid"], request.path_params["sop"]
    if console.study_row(uid) is None:
        return html_error(404, "No such study.", console, session)
    _, images = _summary_images(console, uid)
    match = next((o for o in images if o["sop_instance_uid"] == sop_uid), None)
    if match is None or not Path(match["path"]).is_file():
        return html_error(404, "No such image.", console, session)
    return Response(dicom_to_png(Path(match["path"])), media_type="image/png")


def not_found(request: Request, console: Console, session: Session) -> Response:
    return html_error(404, "No such page.", console, session)


def home(request: Request, console: Console, session: Session) -> Response:
    return RedirectResponse("/studies", status_code=303)


def _int(text: str | None, default: int, low: int, high: int) -> int:
    try:
        return min(high, max(low, int(text))) if text else default
    except ValueError:
        return default


def _day(text: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _filters(query: Mapping[str, str], *, limit: int | None = None, offset: int = 0) -> q.Filters:
    """The query's filters; ``limit``: a page's rows (default: the query's ``limit``, else 500)."""
    return q.Filters(since=_day(query.get("since")), until=_day(query.get("until")),
                     study_date=_day(query.get("study_date")),
                     status=query.get("status") or None, joint=query.get("joint") or None,
                     calling_ae=query.get("ae") or None, search=query.get("search") or None,
                     limit=limit or _int(query.get("limit"), 500, 1, 10000), offset=offset)


def _kept(query: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in query.items()
            if v and k in ("search", "study_date", "since", "until", "status", "joint", "ae")}


def _csv(text: str, name: str) -> Response:
    return Response(text, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
