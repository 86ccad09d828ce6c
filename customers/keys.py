"""Secret formats (API keys, staff tokens), generation, hashing and when one is refused. Pure
functions, shared by the services, the gateway's hot path and the management API.

A secret reads `<prefix><id>_<secret>`: 12 hex characters of public id (safe to show and log)
and 43 characters of secret (256 random bits). Only sha256(whole secret) is stored; with 256
bits of entropy a fast hash is as safe as a slow one and keeps authentication cheap. API keys
use the prefix `tf_`, staff tokens `tfs_` (console/tokens.py).
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

ID_LENGTH = 12
_SECRET_LENGTH = 43  # token_urlsafe(32)


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret_hash: str
    # The whole key: shown once to whoever issued it, never stored.
    plaintext: str


@dataclass(frozen=True)
class SecretFormat:
    prefix: str

    def generate(self) -> NewKey:
        key_id = secrets.token_hex(ID_LENGTH // 2)
        plaintext = f"{self.prefix}{key_id}_{secrets.token_urlsafe(32)}"
        return NewKey(key_id=key_id, secret_hash=key_hash(plaintext), plaintext=plaintext)

    def id_parse(self, plaintext: str) -> str | None:
        """The public id of a well-formed secret, or None; looks at the format only."""
        start = len(self.prefix)
        if len(plaintext) != start + ID_LENGTH + 1 + _SECRET_LENGTH:
            return None
        if not plaintext.startswith(self.prefix) or plaintext[start + ID_LENGTH] != "_":
            return None
        key_id = plaintext[start : start + ID_LENGTH]
        try:
            int(key_id, 16)
        except ValueError:
            return None
        return key_id


API_KEY = SecretFormat("tf_")


def key_generate() -> NewKey:
    return API_KEY.generate()


def key_id_parse(plaintext: str) -> str | None:
    """The public id of a well-formed API key, or None; looks at the format only."""
    return API_KEY.id_parse(plaintext)


def key_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def key_matches(plaintext: str, secret_hash: str) -> bool:
    return hmac.compare_digest(key_hash(plaintext), secret_hash)


def key_refusal(
    *, revoked: bool, expires_at: datetime | None, now: datetime
) -> Literal["revoked", "expired"] | None:
    """Why a key (or staff token) whose hash matched is refused all the same, if it is."""
    if revoked:
        return "revoked"
    if expires_at is not None and expires_at <= now:
        return "expired"
    return None
