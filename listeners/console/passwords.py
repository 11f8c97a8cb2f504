"""Console password hashes (stdlib scrypt): ``scrypt$N$r$p$<salt b64>$<hash b64>``; never plaintext."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

SCHEME = "scrypt"
_N, _R, _P, _LENGTH = 2**14, 8, 1, 32
_HASH = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")
_USER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_LENGTH)
    return "$".join((SCHEME, str(_N), str(_R), str(_P), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()))


def is_password_hash(text: str) -> bool:
    match = _HASH.match(text)
    if match is None:
        return False
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    return n >= 2**10 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a stored hash (False for a malformed hash)."""
    match = _HASH.match(stored)
    if match is None or not is_password_hash(stored):
        return False
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    salt, expected = base64.b64decode(match.group(4)), base64.b64decode(match.group(5))
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(expected),
                            maxmem=256 * 1024 * 1024)
    return hmac.compare_digest(digest, expected)


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
