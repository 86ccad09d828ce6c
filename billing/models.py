"""Prices, costs, rollups, margins, invoices, budgets and the Stripe mirror (promise P3).

Money is `Decimal`: prices per million tokens to 6 places, rated amounts unrounded to 12
places, invoice amounts in integer minor units beside their currency. Rounding happens in
one place, `billing.money`. Account, key and backend are referred to by id or name like the
usage ledger, except where an invoice belongs to an account.
"""

from typing import Any

from django.db import models

from catalogue.models import PriceBook
from customers.models import Account, Project


def _amount(**options: Any) -> "models.DecimalField[Any, Any]":
    """An unrounded amount: enough places for one token at a fraction of a micro-unit."""
    return models.DecimalField(max_digits=28, decimal_places=12, **options)


def _price(**options: Any) -> "models.DecimalField[Any, Any]":
    """A price per million tokens, a fee or a rate."""
    return models.DecimalField(max_digits=18, decimal_places=6, **options)


class CostModel(models.Model):
    """What running one backend costs, in force from `effective_from`.

    A request's cost = its energy (kWh) x `electricity_per_kwh` x `pue` + its share of GPU
    time x `gpu_cost_per_hour`. Idle energy and idle GPU time are spread by the rule in
    docs/billing.md.
    """

    backend = models.CharField(max_length=64)
    effective_from = models.DateTimeField()
    currency = models.CharField(max_length=3, default="USD")
    electricity_per_kwh = _price()
    pue = models.DecimalField(max_digits=6, decimal_places=3, default=1)
    # Amortised purchase + hosting of all the backend's GPUs, per hour.
    gpu_cost_per_hour = _price()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["backend", "effective_from"], name="costmodel_one_per_instant"
            )
        ]

    def __str__(self) -> str:
        return f"{self.backend} from {self.effective_from:%Y-%m-%d}"


class UsageRollup(models.Model):
    """Rated usage summed per hour (or day) per account, project, key, tier, model and backend.

    Rebuilt per bucket by the rollup job from the records that reached the ledger by the
    rollups' arrivals watermark: an hour is rebuilt whole when records arrive for it, are
    corrected or get energy, so re-running changes nothing (billing/rollups.py).
    """

    class Grain(models.TextChoices):
        HOUR = "hour"
        DAY = "day"

    grain = models.CharField(max_length=4, choices=Grain.choices)
    bucket = models.DateTimeField()
    account_id = models.BigIntegerField()
    # The usage records' project (a key belongs to one); null for records without one (of keys
    # deleted before projects existed) and for the backends' hours without requests.
    project_id = models.BigIntegerField(null=True)
    api_key_id = models.BigIntegerField()
    tier = models.CharField(max_length=32)
    model = models.CharField(max_length=128)
    backend = models.CharField(max_length=64)
    price_book = models.ForeignKey(PriceBook, on_delete=models.PROTECT, null=True)
    requests = models.BigIntegerField()
    # Of these, the requests that pay the request fee (all but those failed on every backend).
    fee_requests = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField()
    cached_prompt_tokens = models.BigIntegerField()
    completion_tokens = models.BigIntegerField()
    reasoning_tokens = models.BigIntegerField()
    energy_joules = models.FloatField()
    # Rated, unrounded, before included tokens (those are applied on the invoice).
    revenue = _amount()
    energy_cost = _amount()
    gpu_cost = _amount()
    # Coverage (docs/billing.md, "Coverage"): of the requests above, those whose energy is
    # known (attributed, or nothing to measure: no tokens); the prompt + completion tokens of
    # the requests with attributed energy; those of the requests whose backend had a cost
    # model in force when they started, and of these the measured ones. Ratios to energy and
    # cost divide by these, never by tokens whose energy or cost is unknown.
    measured_requests = models.BigIntegerField(default=0)
    measured_tokens = models.BigIntegerField(default=0)
    costed_tokens = models.BigIntegerField(default=0)
    costed_measured_tokens = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "grain",
                    "bucket",
                    "account_id",
                    "project_id",
                    "api_key_id",
                    "tier",
                    "model",
                    "backend",
                    "price_book",
                ],
                name="usagerollup_one_per_bucket",
                nulls_distinct=False,
            )
        ]
        # (grain, bucket) is the unique constraint's prefix: no index of its own to write.
        indexes = [
            models.Index(fields=["account_id", "grain", "bucket"]),
            models.Index(fields=["project_id", "grain", "bucket"]),
        ]

    def __str__(self) -> str:
        return f"{self.grain} {self.bucket:%Y-%m-%d %H:00} acct {self.account_id}"


class Margin(models.Model):
    """Revenue, cost and margin per day or month along one dimension (tier, model, ...).

    A project's key is its id (ids are unique across accounts); usage without a project
    (records of keys deleted before projects existed) is under "(none)".
    """

    class Grain(models.TextChoices):
        DAY = "day"
        MONTH = "month"

    class Dimension(models.TextChoices):
        TIER = "tier"
        MODEL = "model"
        BACKEND = "backend"
        ACCOUNT = "account"
        PROJECT = "project"

    grain = models.CharField(max_length=5, choices=Grain.choices)
    bucket = models.DateTimeField()
    dimension = models.CharField(max_length=8, choices=Dimension.choices)
    key = models.CharField(max_length=128)
    currency = models.CharField(max_length=3, default="USD")
    tokens = models.BigIntegerField()
    energy_kwh = _amount()
    revenue = _amount()
    energy_cost = _amount()
    gpu_cost = _amount()
    margin = _amount()
    # Coverage, as in UsageRollup; and the usage without a price (rolled up with no book): its
    # requests, tokens and what it cost, so that it is shown as unpriced, never as worth 0.
    requests = models.BigIntegerField(default=0)
    measured_requests = models.BigIntegerField(default=0)
    measured_tokens = models.BigIntegerField(default=0)
    costed_tokens = models.BigIntegerField(default=0)
    costed_measured_tokens = models.BigIntegerField(default=0)
    unpriced_requests = models.BigIntegerField(default=0)
    unpriced_tokens = models.BigIntegerField(default=0)
    unpriced_cost = _amount(default=0)
    # Null where they would divide by zero. Margin % is of the priced usage (its revenue less
    # the cost of everything but the unpriced usage); cost per 1M tokens is energy cost per
    # measured, costed token plus GPU cost per costed token; tokens per kWh counts measured
    # tokens only (docs/billing.md, "Margins").
    margin_pct = models.DecimalField(max_digits=12, decimal_places=4, null=True)
    cost_per_million_tokens = _amount(null=True)
    tokens_per_kwh = _amount(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["grain", "bucket", "dimension", "key", "currency"],
                name="margin_one_per_bucket",
            )
        ]

    def __str__(self) -> str:
        return f"{self.grain} {self.bucket:%Y-%m-%d} {self.dimension}={self.key}"


class Invoice(models.Model):
    """An account's bill for a period, or a credit note correcting a finalised one.

    Drafts are recomputed freely; finalising assigns the next number (gap-free, in the same
    transaction) and freezes the invoice and its lines for good. Corrections are credit notes
    (`kind` credit_note, `corrects` the invoice), never edits.
    """

    class Kind(models.TextChoices):
        INVOICE = "invoice"
        CREDIT_NOTE = "credit_note"

    class Status(models.TextChoices):
        DRAFT = "draft"
        FINALISED = "finalised"

    class Payment(models.TextChoices):
        NONE = "none"
        OPEN = "open"
        PAID = "paid"
        FAILED = "failed"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="invoices")
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.INVOICE)
    corrects = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="credit_notes"
    )
    number = models.CharField(max_length=32, null=True, blank=True, unique=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    currency = models.CharField(max_length=3, default="USD")
    # Sum of the lines' unrounded amounts, and the invoice total in minor units (= sum of the
    # lines' minor units; negative on a credit note).
    amount = _amount(default=0)
    total_minor = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    finalised_at = models.DateTimeField(null=True, blank=True)
    memo = models.TextField(blank=True)
    stripe_invoice_id = models.CharField(max_length=64, blank=True)
    payment = models.CharField(max_length=8, choices=Payment.choices, default=Payment.NONE)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # One invoice per account and period; credit notes are free of it.
            models.UniqueConstraint(
                fields=["account", "period_start"],
                condition=models.Q(kind="invoice"),
                name="invoice_one_per_period",
            )
        ]
        indexes = [models.Index(fields=["status", "period_end"])]

    def __str__(self) -> str:
        return self.number or f"draft {self.pk}"


class InvoiceLine(models.Model):
    """One priced quantity: a model, tier and token class (or a fee) over the period."""

    class Item(models.TextChoices):
        INPUT = "input"
        CACHED_INPUT = "cached_input"
        OUTPUT = "output"
        REASONING = "reasoning"
        REQUEST_FEE = "request_fee"
        PLAN_FEE = "plan_fee"
        INCLUDED = "included"  # included tokens, a negative amount
        CREDIT = "credit"
        # A prepaid account's credit grants drawn down by the invoice's usage, negative.
        CREDITS_APPLIED = "credits_applied"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    # The project whose usage the line bills (grouped per project where the account has more
    # than one); null for the plan fee, an amount credited, and lines from before projects.
    # Projects are archived, never deleted, so invoices keep naming them.
    project = models.ForeignKey(
        Project, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    item = models.CharField(max_length=16, choices=Item.choices)
    tier = models.CharField(max_length=32)
    model = models.CharField(max_length=128, blank=True)
    price_book = models.ForeignKey(PriceBook, on_delete=models.PROTECT, null=True)
    quantity = models.BigIntegerField()
    # Per million tokens for token items; per request or per month for fees.
    unit_price = _price()
    amount = _amount()
    amount_minor = models.BigIntegerField()
    # The usage behind the line: its account and [usage_from, usage_to) in the ledger.
    usage_from = models.DateTimeField()
    usage_to = models.DateTimeField()
    stripe_item_id = models.CharField(max_length=64, blank=True)

    def __str__(self) -> str:
        return f"{self.item} {self.tier}/{self.model} x{self.quantity}"


class InvoiceNumber(models.Model):
    """The gap-free counter: one row per prefix, locked while a number is taken."""

    prefix = models.CharField(max_length=16, unique=True)
    last = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.prefix}{self.last:06d}"


class BudgetAlert(models.Model):
    """A threshold crossed once per account and month (so an alert is sent once)."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="budget_alerts")
    period_start = models.DateTimeField()
    percent = models.PositiveSmallIntegerField()
    spent = _amount()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "period_start", "percent"], name="budgetalert_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.account} {self.percent}% {self.period_start:%Y-%m}"


class ProjectBudgetAlert(models.Model):
    """A project's budget threshold crossed, once per project and month, like BudgetAlert."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="budget_alerts")
    period_start = models.DateTimeField()
    percent = models.PositiveSmallIntegerField()
    spent = _amount()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "period_start", "percent"], name="projectbudgetalert_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.project} {self.percent}% {self.period_start:%Y-%m}"


class StripeEvent(models.Model):
    """A webhook event, stored once by its Stripe id so duplicates are ignored."""

    event_id = models.CharField(max_length=64, unique=True)
    type = models.CharField(max_length=64)
    received_at = models.DateTimeField(auto_now_add=True)
    payload = models.JSONField()

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class JobRun(models.Model):
    """The last completed run of a billing job per scope: its watermark for incremental runs."""

    job = models.CharField(max_length=64)
    scope = models.CharField(max_length=64, default="")
    watermark = models.DateTimeField()
    finished_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "scope"], name="jobrun_one")]

    def __str__(self) -> str:
        return f"{self.job}:{self.scope} @ {self.watermark:%Y-%m-%d %H:%M}"


class CreditGrant(models.Model):
    """Money granted to a prepaid account, drawn down by its usage (billing/credits.py).

    Its amount is what was granted and never changes; what is left of it is the sum of its
    ledger entries (CreditEntry), so no column holds a balance anyone could overwrite. A grant
    counts from `effective_from` until `expires_at` (null: never expires), when its remainder
    is recorded as expired.
    """

    class Source(models.TextChoices):
        PURCHASE = "purchase"  # paid for: a Stripe Checkout or an automatic top-up
        PROMOTION = "promotion"
        GOODWILL = "goodwill"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="credit_grants")
    # In billing's currency, exact to 12 places (a pico-unit: what the gateway's counter counts).
    amount = _amount()
    currency = models.CharField(max_length=3)
    source = models.CharField(max_length=10, choices=Source.choices)
    effective_from = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    # Among grants expiring together, the higher is drawn down first.
    priority = models.IntegerField(default=0)
    # What paid for it, e.g. a Stripe Checkout session id: one grant per reference.
    reference = models.CharField(max_length=255, blank=True)
    memo = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["reference"],
                condition=~models.Q(reference=""),
                name="creditgrant_once_per_reference",
            ),
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="creditgrant_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.source} {self.amount} {self.currency} to {self.account_id}"


class CreditEntry(models.Model):
    """One movement of a prepaid account's credit: the append-only ledger its balance is the
    sum of. The database refuses UPDATE and DELETE (migration 0009), but for `applied_at`
    set once: the moment billing confirmed the entry in the gateway's Redis counter.
    """

    class Kind(models.TextChoices):
        GRANT = "grant"  # + the grant's amount
        USAGE = "usage"  # - rated usage of one hour (`period`) drawn from the grant
        EXPIRY = "expiry"  # - the remainder of a grant that expired
        REFUND = "refund"  # - credit paid back to the customer
        CORRECTION = "correction"  # +/- staff's adjustment

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="credit_entries")
    # Null only for usage beyond every grant ("drawn from nothing": the invoice bills it).
    grant = models.ForeignKey(
        CreditGrant, on_delete=models.PROTECT, null=True, blank=True, related_name="entries"
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    amount = _amount()
    # A usage draw-down's hour (the rollups' bucket); null for the other kinds.
    period = models.DateTimeField(null=True, blank=True)
    actor = models.CharField(max_length=200, blank=True)
    memo = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set once when the movement is in the Redis counter (grants, expiries, refunds,
    # corrections; usage never: the gateway took it off at settle).
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["account", "kind", "period"]),
            models.Index(
                fields=["created_at"],
                condition=models.Q(applied_at__isnull=True) & ~models.Q(kind="usage"),
                name="creditentry_unapplied",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} ({self.account_id})"


class CreditSettings(models.Model):
    """An account's prepaid preferences: when to warn, when and how much to top up.

    `state` remembers the last balance band seen (ok, low, exhausted), so each crossing
    raises its webhook once.
    """

    class State(models.TextChoices):
        OK = "ok"
        LOW = "low"
        EXHAUSTED = "exhausted"

    account = models.OneToOneField(
        Account, on_delete=models.CASCADE, related_name="credit_settings"
    )
    # Warn (credits.balance_low) when the balance falls below it; 0: never.
    low_balance_threshold = _amount(default=0)
    auto_topup_enabled = models.BooleanField(default=False)
    auto_topup_threshold = _amount(default=0)
    auto_topup_amount = _amount(default=0)
    # What automatic top-ups may grant in a calendar month (UTC), together.
    auto_topup_monthly_cap = _amount(default=0)
    state = models.CharField(max_length=10, choices=State.choices, default=State.OK)

    class Meta:
        verbose_name_plural = "credit settings"

    def __str__(self) -> str:
        return f"credit settings of {self.account_id}"
