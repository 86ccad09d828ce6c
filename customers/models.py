"""Who may call the gateway: tiers, accounts (organisations), their projects, members, limit
overrides, API keys and budgets.

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

    class Billing(models.TextChoices):
        # Usage is invoiced after the month (budgets are the only brake).
        ARREARS = "arrears"
        # Usage draws down prepaid credit grants; the gateway admits a request only while the
        # balance covers its most possible cost (billing/credits.py, docs/billing.md).
        PREPAID = "prepaid"

    name = models.CharField(max_length=200, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    billing_mode = models.CharField(
        max_length=8, choices=Billing.choices, default=Billing.ARREARS, db_default="arrears"
    )
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


class Project(LimitFields):
    """A part of an account (an organisation) that owns keys: its usage, limits and budget are
    its own, within the account's.

    Every account has one default project (created with it; the one keys made before projects
    existed were moved into). A limit field here, null for "as the account", can only narrow
    the account's effective limit; the gateway checks both levels in one admission call. A
    project is archived, never deleted: its usage and invoices keep naming it, and archiving
    revokes its keys.
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=100)
    is_default = models.BooleanField(default=False)
    # The project's spend cap per calendar month, in billing's currency; null: none.
    monthly_budget = _price(null=True, blank=True)
    budget_hard_cap = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["account_id", "-is_default", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "name"],
                condition=models.Q(archived_at__isnull=True),
                name="project_name_unique_live",
            ),
            models.UniqueConstraint(
                fields=["account"],
                condition=models.Q(is_default=True),
                name="project_one_default",
            ),
            models.CheckConstraint(
                condition=models.Q(monthly_budget__isnull=True) | models.Q(monthly_budget__gt=0),
                name="project_budget_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Member(models.Model):
    """A person's place in an account: who signs in to the customer portal, and as what.

    owner: everything, billing included; admin: projects, keys and members; developer: the
    keys of their projects (`projects`) and usage; billing: invoices, usage and payment.
    """

    class Role(models.TextChoices):
        OWNER = "owner"
        ADMIN = "admin"
        DEVELOPER = "developer"
        BILLING = "billing"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    # The projects a developer works in; other roles reach every project.
    projects = models.ManyToManyField(Project, blank=True, related_name="members")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["account_id", "created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["account", "user"], name="member_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.account} ({self.role})"


class Invitation(models.Model):
    """An invitation by email to join an account in a role. The link carries a secret of which
    only the SHA-256 is stored; it works once, until `expires_at`."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Member.Role.choices)
    projects = models.ManyToManyField(Project, blank=True, related_name="+")
    token_id = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    # Who invited, as the audit log names actors.
    invited_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"invitation of {self.email} to {self.account}"


class MemberToken(models.Model):
    """A member's token for the customer management API: `tfm_<token_id>_<secret>`, stored as
    its id and SHA-256 like API keys. It acts as its member, with the member's role, and dies
    with the membership."""

    member = models.ForeignKey(Member, on_delete=models.CASCADE, related_name="tokens")
    name = models.CharField(max_length=200, blank=True)
    token_id = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"tfm_{self.token_id}_…"


class ApiKey(models.Model):
    """An API key. Only its public id and a SHA-256 of the whole key are stored.

    A key reads `tf_<key_id>_<secret>`: the gateway finds the row by `key_id` (not secret) and
    compares hashes in constant time, so lookups leak nothing about the secret.
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="api_keys")
    # Always one of the account's projects (customers.services keeps them together). RESTRICT:
    # a project with keys is never deleted alone, but goes with its account (and its keys).
    project = models.ForeignKey(Project, on_delete=models.RESTRICT, related_name="api_keys")
    # The member who made it in the portal or the customer API (null: made by staff); a
    # member's keys are revoked when they leave the account.
    created_by = models.ForeignKey(
        "Member", on_delete=models.SET_NULL, null=True, blank=True, related_name="api_keys"
    )
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


class WebhookEndpoint(models.Model):
    """An HTTPS address of the account's, to which the service posts signed events.

    The signing secret (`whsec_…`) must be kept to sign, so it is stored as is (never in audit
    snapshots: its name says secret). Rotating keeps the previous secret signing too until
    `previous_secret_expires_at`, so the customer can switch without missing events.
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    description = models.CharField(max_length=200, blank=True)
    # The event types it receives; empty: every type.
    events = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    secret = models.CharField(max_length=64)
    previous_secret = models.CharField(max_length=64, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.url


class WebhookEvent(models.Model):
    """Something that happened to an account, to be told to its endpoints: written in the
    transaction of the change (an outbox), delivered afterwards by Celery."""

    class Type(models.TextChoices):
        BALANCE_LOW = "credits.balance_low"
        CREDITS_EXHAUSTED = "credits.exhausted"
        BUDGET_THRESHOLD = "budget.threshold_crossed"
        INVOICE_FINALISED = "invoice.finalized"
        KEY_REVOKED = "api_key.revoked"

    # "evt_<hex>": what the customer deduplicates on.
    public_id = models.CharField(max_length=40, unique=True)
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="webhook_events")
    type = models.CharField(max_length=64, choices=Type.choices)
    data = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.public_id} {self.type}"


class WebhookDelivery(models.Model):
    """One event's delivery to one endpoint: its attempts, retried with back-off for a day."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"  # gave up after a day; replayable

    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="webhookdelivery_once")
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.event} to {self.endpoint}"
