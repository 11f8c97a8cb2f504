"""Console sessions in signed cookies, CSRF tokens for every form, and the failed-login lock-out.

A session cookie carries ``{"sid", "user"}`` signed with the node's key (itsdangerous, timestamped): it cannot
be forged or altered, and it expires after ``console.session_hours``. The open session ids are also kept in
memory, so logging out ends a session for good (a replayed cookie opens nothing) and a restart, with a new key,
logs everyone out.

CSRF: every form carries a token bound to what the browser holds: for a logged-in user an HMAC of the session
id, for the login form (no session yet) an HMAC of a random nonce in a cookie of its own. A forged form from
another site has neither, and the cookies are SameSite=Strict and HttpOnly besides.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "ortho_console"
LOGIN_COOKIE = "ortho_console_login"  # the login form's CSRF nonce
CSRF_FIELD = "csrf_token"


@dataclasses.dataclass(frozen=True)
class Session:
    user: str
    sid: str


class SessionCookies:
    """Signed session cookies with server-side revocation (one instance per running console)."""

    def __init__(self, secret: bytes, lifetime_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._secret = secret
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._serializer = URLSafeTimedSerializer(secret, salt="ortho-console-session")
        self._lock = threading.Lock()
        self._open: dict[str, tuple[str, float]] = {}

    def open(self, user: str) -> tuple[Session, str]:
        """A new session and its cookie value."""
        sid = secrets.token_urlsafe(24)
        with self._lock:
            now = self._clock()
            self._open = {s: v for s, v in self._open.items() if v[1] > now}
            self._open[sid] = (user, now + self.lifetime_s)
        return Session(user, sid), self._serializer.dumps({"sid": sid, "user": user})

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie names, if its signature holds, it has not expired and it was not closed."""
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.lifetime_s)
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(data, dict):
            return None
        sid, user = data.get("sid"), data.get("user")
        with self._lock:
            entry = self._open.get(sid) if isinstance(sid, str) else None
            if entry is None or entry[0] != user:
                return None
            if entry[1] <= self._clock():
                self._open.pop(sid, None)
                return None
        return Session(user, sid)

    def close(self, session: Session | None) -> None:
        if session is not None:
            with self._lock:
                self._open.pop(session.sid, None)

    # -- notices -------------------------------------------------------------------------------------------
    NOTICE_SECONDS = 120  # a notice is the outcome of the action just done: a stale link shows nothing

    def sign_notice(self, text: str) -> str:
        """An action's outcome for the page the browser is sent back to, signed so no other site can word it."""
        return URLSafeTimedSerializer(self._secret, salt="ortho-console-notice").dumps(text[:500])

    def read_notice(self, value: str | None) -> str | None:
        if not value:
            return None
        try:
            text = URLSafeTimedSerializer(self._secret, salt="ortho-console-notice").loads(
                value, max_age=self.NOTICE_SECONDS)
        except BadSignature:
            return None
        return text if isinstance(text, str) else None

    # -- CSRF ----------------------------------------------------------------------------------------------
    def csrf_token(self, binding: str) -> str:
        """The form token for a session id (``session:<sid>``) or a login nonce (``login:<nonce>``)."""
        return hmac.new(self._secret, f"csrf:{binding}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, binding: str | None, token: str | None) -> bool:
        if not binding or not token:
            return False
        return hmac.compare_digest(self.csrf_token(binding), token)


class LoginThrottle:
    """Failed logins per user name: after ``limit`` in a row the name is locked for ``lockout_s`` (unknown names
    too, so probing names costs the same). A success clears the count. Counted per name, not per address: behind
    a reverse proxy every user comes from the same one."""

    MAX_NAMES = 10_000  # bounded memory when someone tries many names

    def __init__(self, limit: int, lockout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.lockout_s = lockout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # name -> (count, locked until)

    def locked_until(self, user: str) -> float | None:
        """Seconds left of the name's lock-out, or None when it may try."""
        with self._lock:
            count, until = self._failures.get(user, (0, 0.0))
            left = until - self._clock()
            if count >= self.limit and left > 0:
                return left
            if count >= self.limit:  # the lock-out is over: a fresh start
                self._failures.pop(user, None)
            return None

    def failed(self, user: str) -> bool:
        """Count one failure; True when it locks the name out (the caller audits that once)."""
        with self._lock:
            count = self._failures.pop(user, (0, 0.0))[0] + 1
            until = self._clock() + self.lockout_s if count >= self.limit else 0.0
            self._failures[user] = (count, until)
            while len(self._failures) > self.MAX_NAMES:
                self._failures.popitem(last=False)
            return count == self.limit

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(user, None)
