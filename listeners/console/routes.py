"""The admin console as a Starlette application (``[console]``): login, signed session cookies, CSRF tokens on
every form, the failed-login lock-out, and the operator actions. The pages (HTML, CSV export, key images) are
``listeners.console.views``; actions come from ``listeners.web.actions``.

``GET`` only reads. Every ``POST`` (login, logout, ``/actions``) checks the form's CSRF token
(``listeners.console.sessions``) and the Origin header; ``/actions`` also the user's role (``console.users``:
a viewer is refused with 403, audited). The cookies are HttpOnly and SameSite=Strict. Every login, refused
login, lock-out and action is audited. Page routes are plain functions: Starlette runs them on its thread pool,
off the event loop, as they read the database.
"""

from __future__ import annotations

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
from ortho_node.model.registry import ModelRegistry
from listeners.console import pages, views
from listeners.console.views import html_error
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
            return html_error(500, "The page could not be built.", console, session)

    return endpoint


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
            return html_error(403, "Cross-site request refused.", None, None)
        form = await _read_form(request)
        if form is None:
            return html_error(413, "Form too large.", None, None)
        peer = request.client.host if request.client else "-"
        return await run_in_threadpool(console.login, form, peer, request.cookies.get(LOGIN_COOKIE))

    async def logout(request: Request) -> Response:
        if not _same_origin(request):
            return html_error(403, "Cross-site request refused.", None, None)
        form = await _read_form(request)
        session = console.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return console.logout(None)
        if form is None or not console.sessions.csrf_ok(f"session:{session.sid}", form.get(CSRF_FIELD)):
            return html_error(403, "The form expired or did not come from this console: reload the page.", console,
                         session)
        return console.logout(session)

    async def act(request: Request) -> Response:
        """An operator action from a form: Origin, session, CSRF token, role (in ``OperatorActions``), then
        back to the page the form was on, with the outcome as a notice."""
        if not _same_origin(request):
            return html_error(403, "Cross-site request refused.", None, None)
        form = await _read_form(request)
        session = console.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return RedirectResponse("/login", status_code=303)
        if form is None:
            return html_error(413, "Form too large.", console, session)
        if not console.sessions.csrf_ok(f"session:{session.sid}", form.get(CSRF_FIELD)):
            log.warning("console action from %s refused: CSRF token missing or wrong", _peer(request))
            return html_error(403, "The form expired or did not come from this console: reload the page.", console,
                         session)
        return await run_in_threadpool(_act, console, session, form, _peer(request))

    def page(handler: Page) -> Callable[[Request], Response]:
        return _page(handler, console)

    routes = [
        Route("/login", login_page, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/actions", act, methods=["POST"]),
        Route("/console.js", _script, methods=["GET"]),  # public: the same for everyone, no data in it
        Route("/destinations", page(views.destinations), methods=["GET"]),
        Route("/nodes", page(views.nodes), methods=["GET"]),
        Route("/models", page(views.models), methods=["GET"]),
        Route("/", page(views.home), methods=["GET"]),
        Route("/studies", page(views.studies), methods=["GET"]),
        Route("/studies.csv", page(views.studies), methods=["GET"]),
        Route("/deliveries", page(views.deliveries), methods=["GET"]),
        Route("/deliveries.csv", page(views.deliveries), methods=["GET"]),
        Route("/failures", page(views.failures), methods=["GET"]),
        Route("/failures.csv", page(views.failures), methods=["GET"]),
        Route("/summary", page(views.summary), methods=["GET"]),
        Route("/summary.csv", page(views.summary), methods=["GET"]),
        Route("/studies/{uid}", page(views.study), methods=["GET"]),
        Route("/studies/{uid}/timeline.csv", page(views.timeline_csv), methods=["GET"]),
        Route("/studies/{uid}/images/{sop}.png", page(views.key_image), methods=["GET"]),
        *([Mount(API_PREFIX, app=api)] if api is not None else []),
        *([Mount(DICOMWEB_PREFIX, app=dicomweb)] if dicomweb is not None else []),
        Route("/{rest:path}", page(views.not_found), methods=["GET"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = ("Method not allowed." if status == 405 else "No such page." if status == 404 else
                   "Bad request.")
        return html_error(status, message, None, None)

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    return DefaultHeaders(app, SECURITY_HEADERS, name="console")


def _act(console: Console, session: Session, form: Mapping[str, str], peer: str) -> Response:
    """Run the form's action as the session's user; the outcome goes back as a notice (errors as their page)."""
    next_path = _local_path(form.get("next", "/studies"))
    if console.actions is None:
        return html_error(404, "This console offers no actions.", console, session)
    try:
        action = Action(form.get("action", ""))
    except ValueError:
        return html_error(404, "No such action.", console, session)
    actor = Actor(session.user, console.role_of(session.user), "console", peer)
    try:
        done = console.actions.run(actor, action, form.get("target", "").strip(), reason=form.get("reason", "").strip(),
                                   to=form.get("to") or None)
    except ActionFailed as failed:
        return html_error(failed.status, failed.message, console, session)
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


def _peer(request: Request) -> str:
    return request.client.host if request.client else "-"

