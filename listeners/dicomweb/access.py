"""Who may send by STOW-RS: a bearer API token (``ortho-node api-token``) or HTTP basic against ``console.users``,
holding the ``operator`` or ``stow`` role.

Basic authentication shares the console's failed-login lock-out (the same user names, the same throttle), and every
refusal is a ``stow_refused`` audit event naming the user and address, never a password or token. A password once
checked is remembered for ``REMEMBER_S`` as a keyed digest: scrypt costs ~50 ms of CPU by design, and a router
that sends one instance per request would otherwise spend most of its time there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from ortho_node.audit.trail import AuditKind, AuditTrail, Severity
from ortho_node.config.users import ConsoleUser, parse_user
from listeners.console.passwords import hash_password, verify_password
from listeners.console.sessions import LoginThrottle
from listeners.dicomweb.stow import Sender
from listeners.web.actions import Actor

log = logging.getLogger(__name__)

TokenCheck = Callable[[str], "Actor | None"]
REMEMBER_S = 300.0
_REMEMBERED_LIMIT = 1000
CHALLENGE = 'Basic realm="ortho-node DICOMweb", charset="UTF-8", Bearer realm="ortho-node DICOMweb"'


class Refused(Exception):
    """No sender: 401 (no or wrong credentials, locked out) or 403 (a role that may not store)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StowAccess:
    def __init__(self, users: Sequence[str], tokens: TokenCheck, audit: AuditTrail, throttle: LoginThrottle) -> None:
        self._users: dict[str, ConsoleUser] = {user.name: user for user in map(parse_user, users)}
        self._tokens = tokens
        self._audit = audit
        self._throttle = throttle
        self._dummy_hash = hash_password(secrets.token_hex(8))  # same work for unknown user names
        self._key = secrets.token_bytes(32)
        self._remembered: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def sender(self, authorization: str | None, peer: str) -> Sender:
        """The sender an ``Authorization`` header stands for; raises :class:`Refused`."""
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == "bearer" and credentials:
            actor = self._tokens(credentials)
            if actor is None:
                raise self._refuse(401, "unknown or revoked API token", peer, None)
            return self._allowed(Sender(actor.name, "token", peer), actor.role.may_store, actor.role.value)
        if scheme == "basic" and credentials:
            return self._basic(credentials, peer)
        raise self._refuse(401, "send an API token (Authorization: Bearer ...) or a console user (HTTP basic)",
                           peer, None)

    def _basic(self, credentials: str, peer: str) -> Sender:
        try:
            user, colon, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise self._refuse(401, "malformed basic credentials", peer, None) from None
        user = user[:64]
        if not colon or not user:
            raise self._refuse(401, "malformed basic credentials", peer, None)
        if self._throttle.locked_until(user) is not None:
            raise self._refuse(401, "user name locked out after failed logins", peer, user)
        account = self._users.get(user)
        if not self._password_ok(account, user, password) or account is None:
            locked = self._throttle.failed(user)
            raise self._refuse(401, "wrong user name or password" + (" (now locked out)" if locked else ""), peer,
                               user)
        self._throttle.succeeded(user)
        return self._allowed(Sender(user, "basic", peer), account.role.may_store, account.role.value)

    def _password_ok(self, account: ConsoleUser | None, user: str, password: str) -> bool:
        stored = account.password_hash if account else self._dummy_hash
        key = hmac.new(self._key, f"{user}\0{password}\0{stored}".encode("utf-8"), hashlib.sha256).digest()
        now = time.monotonic()
        with self._lock:
            if account is not None and self._remembered.get(key, 0.0) > now:
                return True
        if not verify_password(password, stored) or account is None:
            return False
        with self._lock:
            self._remembered[key] = now + REMEMBER_S
            while len(self._remembered) > _REMEMBERED_LIMIT:
                self._remembered.popitem(last=False)
        return True

    def _allowed(self, sender: Sender, may_store: bool, role: str) -> Sender:
        if not may_store:
            raise self._refuse(403, f"role {role} may not store instances (operator or stow may)", sender.peer_host,
                               sender.name)
        return sender

    def _refuse(self, status: int, why: str, peer: str, user: str | None) -> Refused:
        log.warning("STOW-RS request from %s refused (%d): %s", peer, status, why)
        self._audit.record(AuditKind.STOW_REFUSED, f"STOW-RS request refused ({status}): {why}",
                           severity=Severity.WARNING, peer_host=peer, details={"user": user, "http_status": status})
        return Refused(status, why)
