"""Who may call the gateway: tiers, accounts, their limit overrides, API keys and budgets.

The bottom of the layers: the gateway, metering, billing and the console all read these. The
gateway's hot path reads them through small cached SQL queries (gateway/auth.py), never
through the ORM per request; every write goes through customers.services (audited).
"""

from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models

# The largest hard cap, in units of the currency: the gateway's spend counter (64-bit, in
# 10^-12 units) saturates there (gateway/pricing.py, SPEND_CEILING).
HARD_CAP_MOST = 9_000_000


def _price(**options: Any) -> "models.DecimalField[Any, Any]":
    """An amount of money, to 6 places."""
    return models.DecimalField(max_digits=18, decimal_places=6, **options)


class LimitFields(models.Model):
    """The limits a tier sets and an account may override; null is "unlimited" on a tier and
    "as the tier" on an override. Their names, in this order, are LIMIT_FIELDS: the gateway's
    key lookup, its `Limits`, /v1/usage and the APIs all follow it."""

    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveBigIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveBigIntegerField(null=True, blank=True)
    tokens_per_month = models.PositiveBigIntegerField(null=True, blank=True)
    max_concurrent_requests = models.PositiveIntegerField(null=True, blank=True)
    max_tokens_per_request = models.PositiveIntegerField(null=True, blank=True)
    max_context_tokens = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        abstract = True


LIMIT_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "tokens_per_day",
    "tokens_per_month",
    "max_concurrent_requests",
    "max_tokens_per_request",
    "max_context_tokens",
)


class Tier(LimitFields):
    """A kind of token the factory sells. Rows, not code: staff edit them.

    Every limit is null for "unlimited". The limits are enforced by the admission layer.
    """

    slug = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=64)
    # Lower runs first: premium 0, interactive 1, free 2. Also sent to vLLM as `priority`.
    priority = models.PositiveSmallIntegerField()
    # Public model names this tier may use; empty means every model the fleet serves.
    allowed_models = ArrayField(models.CharField(max_length=128), default=list, blank=True)
    queue_timeout_seconds = models.FloatField(default=30.0)
    queue_depth = models.PositiveIntegerField(null=True, blank=True)
    # What the gateway does while Redis (limits, queue, in-flight journal) is unreachable:
    # refuse with 503 + retry-after, or serve under a small per-process cap, metering through
    # a local durable spool (docs/architecture.md, "Redis unavailable").
    when_redis_down = models.CharField(
        max_length=8, choices=[("closed", "fail closed"), ("open", "fail open")], default="closed"
    )

    class Meta:
        ordering = ["priority"]

    def __str__(self) -> str:
        return self.slug


class Account(models.Model):
    """A tenant: everything it owns (keys, usage, invoices) hangs off its id."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"

    name = models.CharField(max_length=200, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="accounts")
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class LimitOverride(LimitFields):
    """One account's exceptions to its tier's limits; a null field means "as the tier"."""

    account = models.OneToOneField(Account, on_delete=models.CASCADE, related_name="limits")

    def __str__(self) -> str:
        return f"limits of {self.account}"


class ApiKey(models.Model):
    """An API key. Only its public id and a SHA-256 of the whole key are stored.

    A key reads `tf_<key_id>_<secret>`: the gateway finds the row by `key_id` (not secret) and
    compares hashes in constant time, so lookups leak nothing about the secret.
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200, blank=True)
    key_id = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Coarse (about a minute): written in the background by the gateway, off the request path.
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"tf_{self.key_id}_…"


class Budget(models.Model):
    """An account's spend cap per calendar month: alerts at thresholds, optionally a hard stop.

    The hard cap is enforced by the gateway with the same Redis reservations as the token
    quotas (gateway/lua/limits_admit.lua). A budget is in billing's currency, the one spend is
    rated in (`clean`; rows from before that rule are not enforced: docs/billing.md).
    """

    account = models.OneToOneField(Account, on_delete=models.CASCADE, related_name="budget")
    monthly_limit = _price()
    currency = models.CharField(max_length=3, default="USD")
    alert_percents = ArrayField(models.PositiveSmallIntegerField(), default=list, blank=True)
    hard_cap = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"budget of {self.account}"

    def clean(self) -> None:
        billing = settings.BILLING.currency
        errors = {}
        if self.currency != billing:
            errors["currency"] = (
                f"A budget must be in {billing}, the currency usage is rated and billed in: "
                f"spend in {billing} cannot be compared with a limit in {self.currency}."
            )
        if self.hard_cap and self.monthly_limit is not None and self.monthly_limit > HARD_CAP_MOST:
            errors["monthly_limit"] = (
                f"A hard cap can be at most {HARD_CAP_MOST:,}; above it, set alerts only."
            )
        if errors:
            raise ValidationError(errors)
