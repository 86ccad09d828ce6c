"""One definition each: the secret format of API keys and staff tokens (two prefixes), when a
key is refused, and the limit fields."""

import dataclasses
from datetime import UTC, datetime, timedelta

from console.tokens import STAFF_TOKEN
from customers.keys import API_KEY, key_refusal
from customers.models import LIMIT_FIELDS, LimitOverride
from gateway.limits import Limits

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def test_a_staff_token_is_never_an_api_key_nor_the_reverse() -> None:
    token, key = STAFF_TOKEN.generate(), API_KEY.generate()
    assert STAFF_TOKEN.id_parse(token.plaintext) == token.key_id
    assert API_KEY.id_parse(key.plaintext) == key.key_id
    assert API_KEY.id_parse(token.plaintext) is None
    assert STAFF_TOKEN.id_parse(key.plaintext) is None


def test_a_key_is_refused_once_revoked_or_from_its_expiry_on() -> None:
    assert key_refusal(revoked=False, expires_at=None, now=NOW) is None
    assert key_refusal(revoked=False, expires_at=NOW + timedelta(seconds=1), now=NOW) is None
    assert key_refusal(revoked=False, expires_at=NOW, now=NOW) == "expired"
    assert key_refusal(revoked=True, expires_at=NOW - timedelta(days=1), now=NOW) == "revoked"


def test_the_gateways_limits_follow_the_limit_fields_in_order() -> None:
    assert tuple(field.name for field in dataclasses.fields(Limits)) == LIMIT_FIELDS
    assert {field.name for field in LimitOverride._meta.concrete_fields} >= set(LIMIT_FIELDS)
