"""Console user entries (``NAME:HASH``) and the scrypt hash format they must carry: checked at start-up.

The hashing itself (and the check of a typed password) belongs to the console (``listeners.console.passwords``).
"""

from __future__ import annotations

import re

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


def parse_user(entry: str) -> tuple[str, str]:
    """``NAME:HASH`` -> (name, hash); raises ValueError naming what is wrong (never echoing a password)."""
    name, sep, stored = entry.partition(":")
    if not sep or not valid_user_name(name):
        raise ValueError("expected NAME:HASH with a name of letters, digits, '.', '_' or '-'")
    if not is_password_hash(stored):
        raise ValueError(f"the password of {name!r} is not a scrypt hash (make one with "
                         "`ortho-node console hash-password NAME`); plaintext passwords are refused")
    return name, stored
