"""Console password hashes (stdlib scrypt): ``scrypt$N$r$p$<salt b64>$<hash b64>``; never plaintext."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from ortho_node.config.users import PASSWORD_HASH, is_password_hash

SCHEME = "scrypt"
_N, _R, _P, _LENGTH = 2**14, 8, 1, 32


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_LENGTH)
    return "$".join((SCHEME, str(_N), str(_R), str(_P), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()))


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a stored hash (False for a malformed hash)."""
    match = PASSWORD_HASH.match(stored)
    if match is None or not is_password_hash(stored):
        return False
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    salt, expected = base64.b64decode(match.group(4)), base64.b64decode(match.group(5))
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(expected),
                            maxmem=256 * 1024 * 1024)
    return hmac.compare_digest(digest, expected)
