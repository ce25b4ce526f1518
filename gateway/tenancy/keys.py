"""API key format, generation and hashing.

A key is ``gwk_<id>_<secret>``: ``id`` is 16 lowercase alphanumerics, public, used to find the
row; ``secret`` carries 256 bits of randomness. The database stores only
HMAC-SHA256(pepper, key): keys are high-entropy, so a keyed fast hash is the right tool (a
slow password hash would only tax every request), and the pepper lives outside the database.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass

KEY_PREFIX = "gwk_"
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_LENGTH = 16
_KEY_SHAPE = re.compile(r"gwk_([a-z0-9]{16})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    token: str


def generate_key() -> ParsedKey:
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))
    return ParsedKey(key_id=key_id, token=f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}")


def parse_key(token: str) -> ParsedKey | None:
    """The key id if ``token`` has the shape of a gateway key, else None."""
    match = _KEY_SHAPE.fullmatch(token)
    return ParsedKey(key_id=match[1], token=token) if match else None


def hash_key(token: str, pepper: str) -> str:
    return hmac.new(pepper.encode(), token.encode(), hashlib.sha256).hexdigest()


def key_matches(token: str, stored_hash: str, pepper: str) -> bool:
    return hmac.compare_digest(hash_key(token, pepper), stored_hash)
