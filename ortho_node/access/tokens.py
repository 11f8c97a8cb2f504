"""REST API tokens (``ortho-node api-token create|list|revoke``): random bearer tokens, scoped to a role.

Only a token's SHA-256 digest is stored: the token itself is shown once, at creation. A salted slow hash (as for
passwords) is not needed: a token carries 256 random bits, so its digest cannot be searched backwards, and an
unsalted digest lets a request's token be found by one indexed look-up. Creation and revocation are audited; no
log line or audit event carries a token, only its id, name and prefix.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.trail import AuditKind, make_event
from ortho_node.clock import as_utc, utcnow
from ortho_node.config.users import Role, valid_user_name
from ortho_node.db.models import ApiToken

TOKEN_PREFIX = "odn_"  # recognisable in a secret scanner's findings
PREFIX_LENGTH = 12  # "odn_" and 8 random characters: shown in listings to tell tokens apart
#: A token's last use is written at most this often (a busy script would otherwise write on every request).
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class TokenHolder:
    """Whom a valid token stands for: its name (in audit events as ``token:NAME``) and role."""

    token_id: int
    name: str
    role: Role


@dataclass(frozen=True)
class CreatedToken:
    holder: TokenHolder
    token: str  # shown once; only its digest is stored


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(session_factory: sessionmaker[Session], name: str, role: Role) -> CreatedToken:
    """A new token for ``name`` with ``role``; raises ValueError for a name that is not a user-name-like word."""
    if not valid_user_name(name):
        raise ValueError("a token name is 1-64 letters, digits, '.', '_' or '-'")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    with session_factory.begin() as session:
        row = ApiToken(name=name, role=role.value, digest=digest(token), prefix=token[:PREFIX_LENGTH],
                       created_at=now)
        session.add(row)
        session.flush()
        session.add(make_event(AuditKind.API_TOKEN_CREATED, f"API token {row.id} ({name}, {role.value}) created",
                               details={"token_id": row.id, "name": name, "role": role.value,
                                        "prefix": row.prefix}))
        holder = TokenHolder(row.id, name, role)
    return CreatedToken(holder, token)


def list_tokens(session_factory: sessionmaker[Session]) -> list[dict]:
    """Every token ever created (revoked ones too), oldest first, without digests."""
    with session_factory() as session:
        rows = session.scalars(select(ApiToken).order_by(ApiToken.id)).all()
        return [{"id": r.id, "name": r.name, "role": r.role, "prefix": r.prefix, "created_at": as_utc(r.created_at),
                 "last_used_at": as_utc(r.last_used_at), "revoked_at": as_utc(r.revoked_at)} for r in rows]


def revoke_token(session_factory: sessionmaker[Session], token_id: int) -> str:
    """Revoke a token for good (its next request answers 401); returns what was done. Raises LookupError for an
    unknown id."""
    now = utcnow()
    with session_factory.begin() as session:
        row = session.get(ApiToken, token_id, with_for_update=True)
        if row is None:
            raise LookupError(f"no API token {token_id}")
        if row.revoked_at is not None:
            return f"API token {token_id} ({row.name}) was already revoked"
        row.revoked_at = now
        session.add(make_event(AuditKind.API_TOKEN_REVOKED, f"API token {token_id} ({row.name}) revoked",
                               details={"token_id": token_id, "name": row.name, "prefix": row.prefix}))
        return f"API token {token_id} ({row.name}) revoked"


def check_token(session_factory: sessionmaker[Session], token: str) -> TokenHolder | None:
    """The holder of a valid (known, not revoked) token, None otherwise; notes its last use."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    now = utcnow()
    with session_factory() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.digest == digest(token)))
        if row is None or row.revoked_at is not None:
            return None
        holder = TokenHolder(row.id, row.name, Role(row.role))
        last = as_utc(row.last_used_at)
    if last is None or now - last >= LAST_USED_RESOLUTION:
        with session_factory.begin() as session:
            session.execute(update(ApiToken).where(ApiToken.id == holder.token_id).values(last_used_at=now))
    return holder
