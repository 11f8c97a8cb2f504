"""Console user entries (``NAME:HASH`` or ``NAME:ROLE:HASH``), their roles and the scrypt hash format they must
carry: checked at start-up.

Roles: ``viewer`` reads; ``operator`` also acts (reprocess, resend, retry, pause a destination, mark a study) and
may send instances by STOW-RS; ``stow`` only sends instances by STOW-RS (a router's or a modality's account: it
neither reads nor acts, and cannot sign in to the console). An entry without a role is a viewer, as every user was
while the console was read-only.

The hashing itself (and the check of a typed password) belongs to the console (``listeners.console.passwords``).
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

PASSWORD_HASH = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")
_USER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def is_password_hash(text: str) -> bool:
    match = PASSWORD_HASH.match(text)
    if match is None:
        return False
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    return n >= 2**10 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16


def valid_user_name(name: str) -> bool:
    return bool(_USER.match(name))


class Role(str, enum.Enum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    STOW = "stow"

    @property
    def may_read(self) -> bool:
        """Sign in to the console, read the API."""
        return self is not Role.STOW

    @property
    def may_act(self) -> bool:
        return self is Role.OPERATOR

    @property
    def may_store(self) -> bool:
        """Send instances by STOW-RS (``POST /dicomweb/studies``)."""
        return self in (Role.OPERATOR, Role.STOW)


class ConsoleUser(NamedTuple):
    name: str
    role: Role
    password_hash: str


def parse_user(entry: str) -> ConsoleUser:
    """``NAME:HASH`` (a viewer) or ``NAME:ROLE:HASH``; raises ValueError naming what is wrong (never echoing a
    password)."""
    name, sep, stored = entry.partition(":")
    if not sep or not valid_user_name(name):
        raise ValueError("expected NAME:HASH or NAME:ROLE:HASH with a name of letters, digits, '.', '_' or '-'")
    role = Role.VIEWER
    first, sep, rest = stored.partition(":")
    if sep:  # the hash has no ':', so a second one marks a role
        try:
            role = Role(first)
        except ValueError:
            raise ValueError(f"the role of {name!r} must be one of {', '.join(r.value for r in Role)}") from None
        stored = rest
    if not is_password_hash(stored):
        raise ValueError(f"the password of {name!r} is not a scrypt hash (make one with "
                         "`ortho-node console hash-password NAME`); plaintext passwords are refused")
    return ConsoleUser(name, role, stored)
