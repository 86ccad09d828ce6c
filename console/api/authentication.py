# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""Who is calling the API: staff (session or staff token), a key holder (their API key) or a
customer's member (their member token).

Every token travels as `Authorization: Bearer ...`; each class only claims its own format
(`tfs_` staff tokens, `tf_` API keys, `tfm_` member tokens), so a key holder's key never
authenticates as staff, and each area of the API takes one kind of credential only.
"""

import datetime as dt
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from console.models import StaffToken
from console.tokens import STAFF_TOKEN
from customers.keys import key_id_parse, key_matches, key_refusal
from customers.members import MEMBER_TOKEN
from customers.models import Account, ApiKey, MemberToken

# How stale a member token's last_used_at may be: written at most once a minute per token, so
# a busy script does not turn every read into a write.
LAST_USED_GRANULARITY = dt.timedelta(minutes=1)


def _bearer(request: Request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return str(credentials).strip()


class StaffTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer tfs_<id>_<secret>`: acts as the token's staff user."""

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, StaffToken] | None:
        plaintext = _bearer(request)
        if plaintext is None or not plaintext.startswith(STAFF_TOKEN.prefix):
            return None
        token_id = STAFF_TOKEN.id_parse(plaintext)
        token = (
            StaffToken.objects.select_related("user").filter(token_id=token_id).first()
            if token_id
            else None
        )
        if token is None or not key_matches(plaintext, token.secret_hash):
            raise exceptions.AuthenticationFailed("Incorrect staff token provided.")
        refusal = key_refusal(
            revoked=token.revoked_at is not None, expires_at=token.expires_at, now=timezone.now()
        )
        if refusal is not None:
            raise exceptions.AuthenticationFailed(f"This staff token has {_PAST[refusal]}.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("This staff token's user is inactive.")
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


@dataclass(frozen=True)
class KeyHolder:
    """The `request.user` of a key holder: an account, through one of its keys; never staff."""

    api_key: ApiKey

    is_authenticated = True
    is_staff = False
    is_superuser = False
    is_active = True

    @property
    def account(self) -> Account:
        return self.api_key.account

    @property
    def pk(self) -> None:
        return None


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer tf_<id>_<secret>`, checked as the gateway checks it."""

    def authenticate(self, request: Request) -> tuple[KeyHolder, ApiKey]:
        plaintext = _bearer(request)
        if not plaintext:
            raise exceptions.NotAuthenticated(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
            )
        key_id = key_id_parse(plaintext)
        api_key = (
            ApiKey.objects.select_related("account__tier", "project").filter(key_id=key_id).first()
            if key_id
            else None
        )
        if api_key is None or not key_matches(plaintext, api_key.secret_hash):
            raise exceptions.AuthenticationFailed("Incorrect API key provided.")
        refusal = key_refusal(
            revoked=api_key.revoked_at is not None,
            expires_at=api_key.expires_at,
            now=timezone.now(),
        )
        if refusal is not None:
            raise exceptions.AuthenticationFailed(f"This API key has {_PAST[refusal]}.")
        if api_key.account.status != Account.Status.ACTIVE:
            raise exceptions.PermissionDenied(
                "This account is suspended. Contact your administrator.", code="account_inactive"
            )
        return KeyHolder(api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class MemberTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer tfm_<id>_<secret>`: acts as the token's member (request.user is
    their user, request.auth the token), with the member's role. A removed member's tokens
    go with the membership, so they fail here at once."""

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, MemberToken]:
        plaintext = _bearer(request)
        if not plaintext:
            raise exceptions.NotAuthenticated(
                "You didn't provide a member token. Send it as `Authorization: Bearer tfm_...`."
            )
        token_id = MEMBER_TOKEN.id_parse(plaintext)
        token = (
            MemberToken.objects.select_related("member__account__tier", "member__user")
            .filter(token_id=token_id)
            .first()
            if token_id
            else None
        )
        if token is None or not key_matches(plaintext, token.secret_hash):
            raise exceptions.AuthenticationFailed("Incorrect member token provided.")
        now = timezone.now()
        refusal = key_refusal(
            revoked=token.revoked_at is not None, expires_at=token.expires_at, now=now
        )
        if refusal is not None:
            raise exceptions.AuthenticationFailed(f"This member token has {_PAST[refusal]}.")
        if not token.member.user.is_active:
            raise exceptions.AuthenticationFailed("This member token's user is inactive.")
        _last_used(token, now)
        return token.member.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def _last_used(token: MemberToken, now: dt.datetime) -> None:
    """Note the use, once a minute at most; the condition makes concurrent requests write once."""
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_GRANULARITY:
        return
    stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_GRANULARITY)
    MemberToken.objects.filter(stale, pk=token.pk).update(last_used_at=now)
    token.last_used_at = now


_PAST = {"revoked": "been revoked", "expired": "expired"}
