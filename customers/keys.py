"""API key format, generation and hashing. Pure functions, shared by services and the hot path.

A key reads `tf_<key_id>_<secret>`: 12 hex characters of public id (safe to show and log)
and 43 characters of secret (256 random bits). Only sha256(key) is stored; with 256 bits of
entropy a fast hash is as safe as a slow one and keeps authentication cheap.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX = "tf_"
KEY_ID_LENGTH = 12
_KEY_LENGTH = len(PREFIX) + KEY_ID_LENGTH + 1 + 43


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret_hash: str
    # The whole key: shown once to whoever issued it, never stored.
    plaintext: str


def key_generate() -> NewKey:
    key_id = secrets.token_hex(KEY_ID_LENGTH // 2)
    plaintext = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id=key_id, secret_hash=key_hash(plaintext), plaintext=plaintext)


def key_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def key_id_parse(plaintext: str) -> str | None:
    """The public id of a well-formed key, or None; looks at the format only."""
    if len(plaintext) != _KEY_LENGTH or not plaintext.startswith(PREFIX):
        return None
    key_id = plaintext[len(PREFIX) : len(PREFIX) + KEY_ID_LENGTH]
    if plaintext[len(PREFIX) + KEY_ID_LENGTH] != "_":
        return None
    try:
        int(key_id, 16)
    except ValueError:
        return None
    return key_id


def key_matches(plaintext: str, secret_hash: str) -> bool:
    return hmac.compare_digest(key_hash(plaintext), secret_hash)
