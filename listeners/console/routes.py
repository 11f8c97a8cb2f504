"""The admin console as a Starlette application (``[console]``): login, signed session cookies, CSRF tokens on
every form, the failed-login lock-out, HTML pages, CSV export, key images, and the operator actions. Pages come
from ``listeners.console.pages``, data from ``ortho_node.audit.views``, actions from ``listeners.web.actions``.

``GET`` only reads. Every ``POST`` (login, logout, ``/actions``) checks the form's CSRF token
(``listeners.console.sessions``) and the Origin header; ``/actions`` also the user's role (``console.users``:
a viewer is refused with 403, audited). The cookies are HttpOnly and SameSite=Strict. Every login, refused
login, lock-out and action is audited. Page routes are plain functions: Starlette runs them on its thread pool,
off the event loop, as they read the database.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from sqlalchemy.orm import Session as DbSession, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from ortho_node.audit import views as q
from ortho_node.audit.trail import AuditKind, AuditTrail, Severity
from ortho_node.config import ConsoleSettings, DestinationSettings
from ortho_node.cluster.registry import NodeStatus
from ortho_node.config.users import Role, parse_user
from ortho_node.delivery.pause import destination_overview
from ortho_node.model.registry import ModelRegistry
from listeners.console import pages
from listeners.console.images import dicom_to_png
from listeners.console.model_history import model_overview
from listeners.console.passwords import hash_password, verify_password
from listeners.console.sessions import CSRF_FIELD, LOGIN_COOKIE, SESSION_COOKIE, LoginThrottle, Session, \
    SessionCookies
from listeners.web.actions import Action, ActionFailed, Actor, OperatorActions
from listeners.web.headers import DefaultHeaders

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
DICOMWEB_PREFIX = "/dicomweb"
MAX_FORM_BYTES = 4096
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; script-src 'self'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make browsers send "Origin: null" with the login
    "Cache-Control": "no-store",
}


NodeList = Callable[[], Sequence[NodeStatus]]


class Console:
    """What the console answers, independent of the HTTP plumbing: login and the pages' data."""

    def __init__(self, settings: ConsoleSettings, session_factory: sessionmaker[DbSession], audit: AuditTrail, *,
                 warnings: Sequence[str] = (), secret: bytes | None = None,
                 destinations: Sequence[DestinationSettings] = (), actions: OperatorActions | None = None,
                 nodes: NodeList | None = None, models: ModelRegistry | None = None) -> None:
        """``warnings``: the node's configuration warnings (``audit.status.configuration_warnings``), shown
        on the studies page, where an administrator looks first. ``secret`` signs the cookies; a new random
        one by default, so a restart logs everyone out. ``actions``: what an operator may do (None: nothing,
        a console on a node without a scheduler). ``nodes``: the processes sharing the database with their
        state now (``NodeRegistry.nodes``; None: the page lists none). ``models``: the node's model registry
        (None: the Models page says there is none)."""
        self.settings = settings
        self.warnings = tuple(warnings)
        self.destinations = tuple(destinations)
        self.actions = actions
        self.nodes: NodeList = nodes or (lambda: [])
        self.models = models
        self._session_factory = session_factory
        self._audit = audit
        self._users = {user.name: user for user in map(parse_user, settings.users)}
        self._dummy_hash = hash_password(secrets.token_hex(8))  # same work for unknown user names
        self.sessions = SessionCookies(secret or secrets.token_bytes(32), settings.session_hours * 3600)
        self.throttle = LoginThrottle(settings.max_failed_logins, settings.lockout_minutes * 60)

    @property
    def secure_cookie(self) -> bool:
        return self.settings.secure_cookie or self.settings.tls

    # -- login ---------------------------------------------------------------------------------------------
    def login(self, form: Mapping[str, str], peer: str, login_nonce: str | None) -> Response:
        """Check a submitted login form: its CSRF token, the user's lock-out, then the password."""
        user, password = form.get("user", "").strip()[:64], form.get("password", "")
        next_path = _local_path(form.get("next", "/studies"))
        if not self.sessions.csrf_ok(f"login:{login_nonce}" if login_nonce else None, form.get(CSRF_FIELD)):
            log.warning("console login from %s refused: CSRF token missing or wrong", peer)
            return self._login_form(403, next_path, login_nonce, "The form expired or did not come from this "
                                    "console: sign in again.")
        if (left := self.throttle.locked_until(user)) is not None:
            self._audit.record(AuditKind.CONSOLE_LOGIN_FAILED, "console login refused: user name locked out",
                               severity=Severity.WARNING, peer_host=peer, details={"user": user, "locked": True})
            log.warning("console login from %s refused: user name locked out", peer)
            return self._login_form(429, next_path, login_nonce, "Too many failed logins: this user name is "
                                    f"locked for {max(1, round(left / 60))} more minutes.",
                                    headers={"Retry-After": str(int(left) + 1)})
        account = self._users.get(user)
        stored = account.password_hash if account else None
        ok = verify_password(password, stored or self._dummy_hash) and stored is not None
        if not ok:
            self._audit.record(AuditKind.CONSOLE_LOGIN_FAILED, "console login refused", severity=Severity.WARNING,
                               peer_host=peer, details={"user": user})
            log.warning("console login refused from %s", peer)
            if self.throttle.failed(user):
                minutes = self.settings.lockout_minutes
                self._audit.record(AuditKind.CONSOLE_LOCKED_OUT, f"console user name locked out for {minutes:g} "
                                   f"minutes after {self.throttle.limit} failed logins", severity=Severity.WARNING,
                                   peer_host=peer, details={"user": user, "failures": self.throttle.limit,
                                                            "minutes": minutes})
                log.warning("console user name locked out after %d failed logins (last from %s)",
                            self.throttle.limit, peer)
            return self._login_form(401, next_path, login_nonce, "Wrong user name or password.")
        self.throttle.succeeded(user)
        if not account.role.may_read:  # a STOW-RS sender's account: it sends instances, it never reads
            self._audit.record(AuditKind.CONSOLE_LOGIN_FAILED, f"console login refused: role {account.role.value} "
                               "may only send by STOW-RS", severity=Severity.WARNING, peer_host=peer,
                               details={"user": user, "role": account.role.value})
            log.warning("console login from %s refused: role %s may not sign in", peer, account.role.value)
            return self._login_form(403, next_path, login_nonce, "This account may only send images by STOW-RS.")
        _session, cookie = self.sessions.open(user)
        self._audit.record(AuditKind.CONSOLE_LOGIN, f"console login by {user}", peer_host=peer,
                           details={"user": user})
        response = RedirectResponse(next_path, status_code=303)
        self._set_cookie(response, SESSION_COOKIE, cookie, self.sessions.lifetime_s)
        self._set_cookie(response, LOGIN_COOKIE, "", 0, path="/login")
        return response

    def login_form(self, next_path: str, login_nonce: str | None) -> Response:
        return self._login_form(200, next_path, login_nonce, None)

    def _login_form(self, status: int, next_path: str, login_nonce: str | None, error: str | None, *,
                    headers: Mapping[str, str] | None = None) -> Response:
        """The login page with a CSRF token bound to the browser's login nonce (a new one when it has none)."""
        nonce = login_nonce or secrets.token_urlsafe(24)
        page = pages.login_page(error=error, next_path=next_path, csrf=self.sessions.csrf_token(f"login:{nonce}"))
        response = HTMLResponse(page, status_code=status, headers=dict(headers or {}))
        if nonce != login_nonce:
            self._set_cookie(response, LOGIN_COOKIE, nonce, None, path="/login")
        return response

    def logout(self, session: Session | None) -> Response:
        self.sessions.close(session)
        response = RedirectResponse("/login", status_code=303)
        self._set_cookie(response, SESSION_COOKIE, "", 0)
        return response

    def _set_cookie(self, response: Response, name: str, value: str, max_age: float | None, *,
                    path: str = "/") -> None:
        """HttpOnly, SameSite=Strict; Secure behind HTTPS; no Max-Age: until the browser closes."""
        age = "" if max_age is None else f"; Max-Age={int(max_age)}"
        secure = "; Secure" if self.secure_cookie else ""
        response.headers.append("set-cookie", f"{name}={value}; Path={path}; HttpOnly; SameSite=Strict{age}{secure}")

    def session_actor(self, request: Request) -> Actor | None:
        """The user of the request's console session with their role (how the API under /api/v1 signs console
        users in)."""
        session = self.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return None
        return Actor(session.user, self.role_of(session.user), "api", _peer(request))

    def role_of(self, user: str) -> Role:
        """The user's role in ``console.users``; a session outliving its entry only reads."""
        account = self._users.get(user)
        return account.role if account is not None else Role.VIEWER

    def csrf(self, session: Session) -> str:
        return self.sessions.csrf_token(f"session:{session.sid}")

    def frame(self, session: Session, request: Request | None = None) -> dict[str, Any]:
        """What every page shows around its content: the user, their role, the form token, the time zone and
        the outcome of the action that led here (a signed notice in the query, so no other site can word it)."""
        notice = self.sessions.read_notice(request.query_params.get("notice")) if request is not None else None
        return {"user": session.user, "csrf": self.csrf(session), "operator": self.role_of(session.user).may_act,
                "tz": self.settings.time_zone, "notice": notice}

    # -- data ----------------------------------------------------------------------------------------------
    def study_row(self, uid: str) -> dict[str, Any] | None:
        return q.study_row(self._session_factory, uid)

    @property
    def db(self) -> sessionmaker[DbSession]:
        return self._session_factory


# -- HTTP -------------------------------------------------------------------------------------------------
Page = Callable[[Request, Console, Session], Response]


def _page(handler: Page, console: Console) -> Callable[[Request], Response]:
    """A logged-in page: without a valid session a redirect to the login (back here afterwards); a failing
    page answers 500 and is logged, the console stays up."""

    @functools.wraps(handler)
    def endpoint(request: Request) -> Response:
        session = console.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)
        try:
            return handler(request, console, session)
        except Exception:  # noqa: BLE001 - one failing page must not take the console down
            log.exception("console page %s failed", request.url.path)
            return _html(500, "The page could not be built.", console, session)

    return endpoint


def _html(status: int, message: str, console: Console | None, session: Session | None) -> HTMLResponse:
    frame = console.frame(session) if console and session else {"user": None}
    return HTMLResponse(pages.error_page(status, message, **frame), status_code=status)


def _query(request: Request) -> dict[str, str]:
    return dict(request.query_params)


def _studies(request: Request, console: Console, session: Session) -> Response:
    query = _query(request)
    if request.url.path.endswith(".csv"):
        return _csv(q.to_csv(q.list_studies(console.db, _filters(query)), q.STUDY_COLUMNS), "studies.csv")
    offset = _int(query.get("offset"), 0, 0, 10**7)
    # One row more than a page says whether an older page exists.
    rows = q.list_studies(console.db, _filters(query, limit=pages.PAGE_SIZE + 1, offset=offset))
    rows, more = rows[:pages.PAGE_SIZE], len(rows) > pages.PAGE_SIZE
    return HTMLResponse(pages.studies_page(rows, _kept(query), warnings=console.warnings, offset=offset, more=more,
                                           **console.frame(session, request)))


def _deliveries(request: Request, console: Console, session: Session) -> Response:
    query = _query(request)
    rows = q.list_deliveries(console.db, _filters(query))
    if request.url.path.endswith(".csv"):
        return _csv(q.to_csv(rows, q.DELIVERY_COLUMNS), "deliveries.csv")
    return HTMLResponse(pages.deliveries_page(rows, _kept(query), **console.frame(session, request)))


def _destinations(request: Request, console: Console, session: Session) -> Response:
    rows = destination_overview(console.db, console.destinations)
    return HTMLResponse(pages.destinations_page(rows, **console.frame(session, request)))


def _nodes(request: Request, console: Console, session: Session) -> Response:
    return HTMLResponse(pages.nodes_page(console.nodes(), **console.frame(session, request)))


def _models(request: Request, console: Console, session: Session) -> Response:
    if console.models is None:
        return _html(404, "This console has no model registry.", console, session)
    return HTMLResponse(pages.models_page(model_overview(console.models), **console.frame(session, request)))


def _failures(request: Request, console: Console, session: Session) -> Response:
    query = _query(request)
    rows = q.list_failures(console.db, _filters(query))
    if request.url.path.endswith(".csv"):
        return _csv(q.to_csv(rows, q.FAILURE_COLUMNS), "failures.csv")
    return HTMLResponse(pages.failures_page(rows, _kept(query), **console.frame(session, request)))


def _summary(request: Request, console: Console, session: Session) -> Response:
    days = q.daily_summary(console.db, days=_int(request.query_params.get("days"), 14, 1, 366))
    if request.url.path.endswith(".csv"):
        return _csv(q.to_csv(days, tuple(days[0])), "summary.csv")
    return HTMLResponse(pages.summary_page(days, **console.frame(session, request)))


def _summary_images(console: Console, uid: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    results = q.study_results(console.db, uid)
    return results, [o for o in (results[0]["objects"] if results else []) if o.get("kind") == "summary"]


def _study(request: Request, console: Console, session: Session) -> Response:
    uid = request.path_params["uid"]
    row = console.study_row(uid)
    if row is None:
        return _html(404, "No such study.", console, session)
    results, images = _summary_images(console, uid)
    urls = [(f"/studies/{uid}/images/{o['sop_instance_uid']}.png", f"key image {n}")
            for n, o in enumerate(images, start=1) if Path(o["path"]).is_file()]
    deliveries = q.list_deliveries(console.db, study_instance_uid=uid)
    names = sorted({d.name for d in console.destinations} | {d["destination"] for d in deliveries})
    body = pages.study_page(row, q.study_timeline(console.db, uid) or [], results, deliveries, urls,
                            series=q.study_series(console.db, uid), destinations=names,
                            **console.frame(session, request))
    return HTMLResponse(body)


def _timeline_csv(request: Request, console: Console, session: Session) -> Response:
    uid = request.path_params["uid"]
    if console.study_row(uid) is None:
        return _html(404, "No such study.", console, session)
    timeline = q.study_timeline(console.db, uid) or []
    return _csv(q.to_csv(timeline, q.TIMELINE_COLUMNS), f"timeline-{uid}.csv")


def _key_image(request: Request, console: Console, session: Session) -> Response:
    uid, sop_uid = request.path_params["uid"], request.path_params["sop"]
    if console.study_row(uid) is None:
        return _html(404, "No such study.", console, session)
    _, images = _summary_images(console, uid)
    match = next((o for o in images if o["sop_instance_uid"] == sop_uid), None)
    if match is None or not Path(match["path"]).is_file():
        return _html(404, "No such image.", console, session)
    return Response(dicom_to_png(Path(match["path"])), media_type="image/png")


def _not_found(request: Request, console: Console, session: Session) -> Response:
    return _html(404, "No such page.", console, session)


def _home(request: Request, console: Console, session: Session) -> Response:
    return RedirectResponse("/studies", status_code=303)


async def _read_form(request: Request) -> dict[str, str] | None:
    """A small url-encoded form (the last value of each name); None when it is larger than ``MAX_FORM_BYTES``."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True).items()}


def _same_origin(request: Request) -> bool:
    """Browsers send Origin with every POST; without one (a script, curl) the CSRF token and the SameSite
    cookie still keep a foreign page from acting with a user's session."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.headers.get("host", "")


def console_app(console: Console, *, api: ASGIApp | None = None, dicomweb: ASGIApp | None = None) -> DefaultHeaders:
    """The console's routes in one Starlette application, wrapped in its security headers; ``api`` (the REST
    API, ``listeners.api``) mounted at /api/v1 and ``dicomweb`` (STOW-RS, ``listeners.dicomweb``) at /dicomweb,
    before the console's catch-all page."""

    async def login_page(request: Request) -> Response:
        next_path = _local_path(request.query_params.get("next", "/studies"))
        return console.login_form(next_path, request.cookies.get(LOGIN_COOKIE))

    async def login(request: Request) -> Response:
        if not _same_origin(request):
            return _html(403, "Cross-site request refused.", None, None)
        form = await _read_form(request)
        if form is None:
            return _html(413, "Form too large.", None, None)
        peer = request.client.host if request.client else "-"
        return await run_in_threadpool(console.login, form, peer, request.cookies.get(LOGIN_COOKIE))

    async def logout(request: Request) -> Response:
        if not _same_origin(request):
            return _html(403, "Cross-site request refused.", None, None)
        form = await _read_form(request)
        session = console.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return console.logout(None)
        if form is None or not console.sessions.csrf_ok(f"session:{session.sid}", form.get(CSRF_FIELD)):
            return _html(403, "The form expired or did not come from this console: reload the page.", console,
                         session)
        return console.logout(session)

    async def act(request: Request) -> Response:
        """An operator action from a form: Origin, session, CSRF token, role (in ``OperatorActions``), then
        back to the page the form was on, with the outcome as a notice."""
        if not _same_origin(request):
            return _html(403, "Cross-site request refused.", None, None)
        form = await _read_form(request)
        session = console.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return RedirectResponse("/login", status_code=303)
        if form is None:
            return _html(413, "Form too large.", console, session)
        if not console.sessions.csrf_ok(f"session:{session.sid}", form.get(CSRF_FIELD)):
            log.warning("console action from %s refused: CSRF token missing or wrong", _peer(request))
            return _html(403, "The form expired or did not come from this console: reload the page.", console,
                         session)
        return await run_in_threadpool(_act, console, session, form, _peer(request))

    def page(handler: Page) -> Callable[[Request], Response]:
        return _page(handler, console)

    routes = [
        Route("/login", login_page, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/actions", act, methods=["POST"]),
        Route("/console.js", _script, methods=["GET"]),  # public: the same for everyone, no data in it
        Route("/destinations", page(_destinations), methods=["GET"]),
        Route("/nodes", page(_nodes), methods=["GET"]),
        Route("/models", page(_models), methods=["GET"]),
        Route("/", page(_home), methods=["GET"]),
        Route("/studies", page(_studies), methods=["GET"]), Route("/studies.csv", page(_studies), methods=["GET"]),
        Route("/deliveries", page(_deliveries), methods=["GET"]),
        Route("/deliveries.csv", page(_deliveries), methods=["GET"]),
        Route("/failures", page(_failures), methods=["GET"]),
        Route("/failures.csv", page(_failures), methods=["GET"]),
        Route("/summary", page(_summary), methods=["GET"]), Route("/summary.csv", page(_summary), methods=["GET"]),
        Route("/studies/{uid}", page(_study), methods=["GET"]),
        Route("/studies/{uid}/timeline.csv", page(_timeline_csv), methods=["GET"]),
        Route("/studies/{uid}/images/{sop}.png", page(_key_image), methods=["GET"]),
        *([Mount(API_PREFIX, app=api)] if api is not None else []),
        *([Mount(DICOMWEB_PREFIX, app=dicomweb)] if dicomweb is not None else []),
        Route("/{rest:path}", page(_not_found), methods=["GET"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = ("Method not allowed." if status == 405 else "No such page." if status == 404 else
                   "Bad request.")
        return _html(status, message, None, None)

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    return DefaultHeaders(app, SECURITY_HEADERS, name="console")


def _act(console: Console, session: Session, form: Mapping[str, str], peer: str) -> Response:
    """Run the form's action as the session's user; the outcome goes back as a notice (errors as their page)."""
    next_path = _local_path(form.get("next", "/studies"))
    if console.actions is None:
        return _html(404, "This console offers no actions.", console, session)
    try:
        action = Action(form.get("action", ""))
    except ValueError:
        return _html(404, "No such action.", console, session)
    actor = Actor(session.user, console.role_of(session.user), "console", peer)
    try:
        done = console.actions.run(actor, action, form.get("target", "").strip(), reason=form.get("reason", "").strip(),
                                   to=form.get("to") or None)
    except ActionFailed as failed:
        return _html(failed.status, failed.message, console, session)
    separator = "&" if "?" in next_path else "?"
    return RedirectResponse(f"{next_path}{separator}notice={console.sessions.sign_notice(done)}", status_code=303)


@functools.cache
def _script_bytes() -> bytes:
    return (Path(__file__).parent / "templates" / "console.js").read_bytes()


async def _script(request: Request) -> Response:
    return Response(_script_bytes(), media_type="text/javascript; charset=utf-8")


def _local_path(value: str) -> str:
    """Only a path on this server is a valid target after login (no open redirect)."""
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/studies"
    return value


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


def _peer(request: Request) -> str:
    return request.client.host if request.client else "-"


def _csv(text: str, name: str) -> Response:
    return Response(text, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
