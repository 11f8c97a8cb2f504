"""The read-only admin web console on its own port (``[console]``): login, session cookie, HTML pages,
CSV export and key images. Pages come from ``listeners.console.pages``, data from ``ortho_node.audit.views``.

Only ``GET`` reads data; the two ``POST`` routes (login, logout) change nothing but the session. The session
cookie is HttpOnly and SameSite=Strict, and a ``POST`` whose Origin names another site is refused, so a
foreign page can neither read the console nor log a user in or out. Every login, failed or not, is audited.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit import views as q
from ortho_node.audit.trail import AuditKind, AuditTrail, Severity
from ortho_node.config import ConsoleSettings
from listeners.console.passwords import hash_password, verify_password
from ortho_node.config.users import parse_user
from listeners.console import pages
from listeners.console.images import dicom_to_png

log = logging.getLogger(__name__)

COOKIE = "ortho_console"
MAX_FORM_BYTES = 4096
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make browsers send "Origin: null" with the login
    "Cache-Control": "no-store",
}


class Sessions:
    """Logged-in sessions: random tokens held in memory (a restart logs everyone out)."""

    def __init__(self, lifetime: dt.timedelta, clock: Callable[[], float] = time.monotonic) -> None:
        self._lifetime = lifetime.total_seconds()
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}

    def open(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
            self._tokens[token] = (user, now + self._lifetime)
        return token

    def user(self, token: str | None) -> str | None:
        if not token:
            return None
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None or entry[1] <= self._clock():
                self._tokens.pop(token, None)
                return None
            return entry[0]

    def close(self, token: str | None) -> None:
        with self._lock:
            self._tokens.pop(token or "", None)


class Response:
    def __init__(self, status: int, body: bytes | str, content_type: str = "text/html; charset=utf-8",
                 headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.content_type = content_type
        self.headers = dict(headers or {})


def redirect(location: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(303, b"", "text/plain", {"Location": location, **(headers or {})})


class Console:
    """What the console answers, independent of the HTTP plumbing."""

    def __init__(self, settings: ConsoleSettings, session_factory: sessionmaker[Session], audit: AuditTrail, *,
                 warnings: Sequence[str] = ()) -> None:
        """``warnings``: the node's configuration warnings (``audit.status.configuration_warnings``), shown
        on the studies page, where an administrator looks first."""
        self._settings = settings
        self._warnings = tuple(warnings)
        self._session_factory = session_factory
        self._audit = audit
        self._users = dict(parse_user(entry) for entry in settings.users)
        self._dummy_hash = hash_password(secrets.token_hex(8))  # same work for unknown user names
        self.sessions = Sessions(dt.timedelta(hours=settings.session_hours))

    # -- login ---------------------------------------------------------------------------------------------
    def login(self, form: Mapping[str, str], peer: str) -> Response:
        user, password = form.get("user", "").strip(), form.get("password", "")
        next_path = _local_path(form.get("next", "/studies"))
        stored = self._users.get(user)
        ok = verify_password(password, stored or self._dummy_hash) and stored is not None
        if not ok:
            self._audit.record(AuditKind.CONSOLE_LOGIN_FAILED, "console login refused", severity=Severity.WARNING,
                               peer_host=peer, details={"user": user[:64]})
            log.warning("console login refused from %s", peer)
            return Response(401, pages.login_page(error="Wrong user name or password.", next_path=next_path))
        token = self.sessions.open(user)
        self._audit.record(AuditKind.CONSOLE_LOGIN, f"console login by {user}", peer_host=peer,
                           details={"user": user})
        return redirect(next_path, {"Set-Cookie": self._cookie(token, self._settings.session_hours * 3600)})

    def logout(self, token: str | None) -> Response:
        self.sessions.close(token)
        return redirect("/login", {"Set-Cookie": self._cookie("", 0)})

    def _cookie(self, token: str, max_age: float) -> str:
        secure = "; Secure" if self._settings.secure_cookie else ""
        return f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={int(max_age)}{secure}"

    # -- pages ---------------------------------------------------------------------------------------------
    def get(self, path: str, query: dict[str, str], user: str) -> Response:
        if path in ("/", ""):
            return redirect("/studies")
        csv = path.endswith(".csv")
        base = path[:-4] if csv else path
        if base == "/studies":
            rows = q.list_studies(self._session_factory, _filters(query))
            if csv:
                return _csv(q.to_csv(rows, q.STUDY_COLUMNS), "studies.csv")
            return Response(200, pages.studies_page(rows, _kept(query), user=user, warnings=self._warnings))
        if base == "/deliveries":
            rows = q.list_deliveries(self._session_factory, _filters(query))
            if csv:
                return _csv(q.to_csv(rows, q.DELIVERY_COLUMNS), "deliveries.csv")
            return Response(200, pages.deliveries_page(rows, _kept(query), user=user))
        if base == "/failures":
            rows = q.list_failures(self._session_factory, _filters(query))
            if csv:
                return _csv(q.to_csv(rows, q.FAILURE_COLUMNS), "failures.csv")
            return Response(200, pages.failures_page(rows, _kept(query), user=user))
        if base == "/summary":
            days = q.daily_summary(self._session_factory, days=_int(query.get("days"), 14, 1, 366))
            if csv:
                return _csv(q.to_csv(days, tuple(days[0])), "summary.csv")
            return Response(200, pages.summary_page(days, user=user))
        if path.startswith("/studies/"):
            return self._study(path[len("/studies/"):], user)
        return Response(404, pages.error_page(404, "No such page.", user=user))

    def _study(self, rest: str, user: str) -> Response:
        uid, _, tail = rest.partition("/")
        row = self._study_row(uid)
        if row is None:
            return Response(404, pages.error_page(404, "No such study.", user=user))
        if tail == "timeline.csv":
            timeline = q.study_timeline(self._session_factory, uid) or []
            return _csv(q.to_csv(timeline, q.TIMELINE_COLUMNS), f"timeline-{uid}.csv")
        results = q.study_results(self._session_factory, uid)
        images = [o for o in (results[0]["objects"] if results else []) if o.get("kind") == "summary"]
        if tail.startswith("images/") and tail.endswith(".png"):
            sop_uid = tail[len("images/"):-4]
            match = next((o for o in images if o["sop_instance_uid"] == sop_uid), None)
            if match is None or not Path(match["path"]).is_file():
                return Response(404, pages.error_page(404, "No such image.", user=user))
            return Response(200, dicom_to_png(Path(match["path"])), "image/png")
        if tail:
            return Response(404, pages.error_page(404, "No such page.", user=user))
        urls = [(f"/studies/{uid}/images/{o['sop_instance_uid']}.png", f"key image {n}")
                for n, o in enumerate(images, start=1) if Path(o["path"]).is_file()]
        body = pages.study_page(row, q.study_timeline(self._session_factory, uid) or [], results,
                                q.list_deliveries(self._session_factory, study_instance_uid=uid), urls, user=user)
        return Response(200, body)

    def _study_row(self, uid: str) -> dict[str, Any] | None:
        rows = q.list_studies(self._session_factory, q.Filters(search=uid, limit=10**6))
        return next((r for r in rows if r["study_instance_uid"] == uid), None)


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


def _filters(query: Mapping[str, str]) -> q.Filters:
    return q.Filters(since=_day(query.get("since")), until=_day(query.get("until")),
                     status=query.get("status") or None, joint=query.get("joint") or None,
                     calling_ae=query.get("ae") or None, search=query.get("search") or None,
                     limit=_int(query.get("limit"), 500, 1, 10000))


def _kept(query: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in query.items() if v and k in ("search", "since", "until", "status", "joint", "ae")}


def _csv(text: str, name: str) -> Response:
    return Response(200, text, "text/csv; charset=utf-8", {"Content-Disposition": f'attachment; filename="{name}"'})


class ConsoleServer:
    """The console's HTTP server on ``console.host``:``console.port`` (threads, one per request)."""

    def __init__(self, console: Console, host: str, port: int) -> None:
        self.console = console
        self.httpd = _Server((host, port), _handler(console))
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="console-http", daemon=True)
        self._thread.start()
        log.info("admin console on port %d", self.port)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _handler(console: Console):
    class Handler(BaseHTTPRequestHandler):
        server_version = "OrthoNode"
        sys_version = ""

        def log_message(self, fmt: str, *args: Any) -> None:  # the path may hold a Study UID, never a name
            log.debug("console %s %s", self.client_address[0], fmt % args)

        def _token(self) -> str | None:
            cookie = SimpleCookie()
            try:
                cookie.load(self.headers.get("Cookie", ""))
            except CookieError:
                return None
            morsel = cookie.get(COOKIE)
            return morsel.value if morsel else None

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            if path == "/login":
                next_path = _local_path(query.get("next", "/studies"))
                return self._send(Response(200, pages.login_page(next_path=next_path)))
            user = console.sessions.user(self._token())
            if user is None:
                target = parts.path + (f"?{parts.query}" if parts.query else "")
                return self._send(redirect(f"/login?next={_quote_next(target)}"))
            try:
                self._send(console.get(path, query, user))
            except Exception:  # noqa: BLE001 - one failing page must not take the console down
                log.exception("console page %s failed", parts.path)
                self._send(Response(500, pages.error_page(500, "The page could not be built.", user=user)))

        def do_POST(self) -> None:
            if not self._same_origin():
                return self._send(Response(403, pages.error_page(403, "Cross-site request refused.", user=None)))
            path = urlsplit(self.path).path
            if path == "/logout":
                return self._send(console.logout(self._token()))
            if path != "/login":
                return self._send(Response(405, pages.error_page(405, "Read-only console.", user=None)))
            length = _int(self.headers.get("Content-Length"), 0, 0, MAX_FORM_BYTES + 1)
            if length > MAX_FORM_BYTES:
                return self._send(Response(413, pages.error_page(413, "Form too large.", user=None)))
            raw = self.rfile.read(length).decode("utf-8", errors="replace")
            form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
            self._send(console.login(form, self.client_address[0]))

        def _same_origin(self) -> bool:
            """Browsers send Origin with every POST; without one (a script, curl) the SameSite cookie still
            keeps a foreign page from acting with a user's session."""
            origin = self.headers.get("Origin")
            if origin is None:
                return True
            return origin != "null" and urlsplit(origin).netloc == self.headers.get("Host", "")

        def do_PUT(self) -> None:
            self._send(Response(405, pages.error_page(405, "Read-only console.", user=None)))

        do_DELETE = do_PATCH = do_PUT

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in {**_SECURITY_HEADERS, **response.headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(response.body)

    return Handler


def _quote_next(target: str) -> str:
    return quote(target, safe="/")
