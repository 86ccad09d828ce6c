"""Reads for billing: price lists, rated usage, unpriced usage, margins, prepaid credit."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.db.models import F, Q, QuerySet, Sum
from django.utils import timezone

from billing.jobs import LONG_AGO, month_close, month_start
from billing.models import CreditEntry, CreditGrant, InvoiceLine, Margin, UsageRollup
from billing.rating import FEE_EXEMPT, Book, Plan, PriceList, Terms
from catalogue.models import PlanPrice, Price, PriceBook
from customers.models import Account
from metering.models import UsageRecord

_SQL = Path(__file__).parent / "sql"
_USAGE_RATED = (_SQL / "usage_rated.sql").read_text()


def billing_currency() -> str:
    """The currency accounts are billed in (BILLING_CURRENCY), so what an account without a
    budget is priced in."""
    return settings.BILLING.currency


def price_list(*, currency: str) -> PriceList:
    """Every price book of `currency` with its prices and plans."""
    books = {
        book.pk: Book(book.pk, book.effective_from)
        for book in PriceBook.objects.filter(currency=currency)
    }
    for price in Price.objects.filter(price_book__in=books):
        books[price.price_book_id].prices[price.tier, price.model] = Terms.of(price)
    for plan in PlanPrice.objects.filter(price_book__in=books):
        books[plan.price_book_id].plans[plan.tier] = Plan(plan.monthly_fee, plan.included_tokens)
    return PriceList(books.values())


@dataclass(frozen=True, slots=True)
class RatedRecord:
    """One usage record's amounts at list prices (billing/sql/usage_rated.sql)."""

    request_id: str
    started_at: datetime
    account_id: int
    tier: str
    model: str
    price_book_id: int | None
    input: Decimal
    cached_input: Decimal
    output: Decimal
    reasoning: Decimal
    request_fee: Decimal

    @property
    def total(self) -> Decimal:
        return self.input + self.cached_input + self.output + self.reasoning + self.request_fee


def usage_rated(
    *, since: datetime, until: datetime, account_id: int | None = None, currency: str | None = None
) -> list[RatedRecord]:
    """The records that started in [since, until), each rated, in the order they started."""
    params = {
        "since": since,
        "until": until,
        "account_id": account_id,
        "currency": currency or billing_currency(),
        "fee_exempt": FEE_EXEMPT,
    }
    with connection.cursor() as cursor:
        cursor.execute(_USAGE_RATED, params)
        return [RatedRecord(str(row[0]), *row[1:]) for row in cursor.fetchall()]


@dataclass(frozen=True, slots=True)
class Unpriced:
    tier: str
    model: str
    requests: int
    tokens: int


def usage_unpriced(*, since: datetime, until: datetime) -> list[Unpriced]:
    """Usage rolled up without a price (so worth nothing), per tier and model: a book to fix."""
    rows = (
        UsageRollup.objects.filter(
            grain=UsageRollup.Grain.HOUR,
            bucket__gte=since,
            bucket__lt=until,
            price_book=None,
            requests__gt=0,
        )
        .values("tier", "model")
        .annotate(requests=Sum("requests"), tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
        .order_by("tier", "model")
    )
    return [Unpriced(row["tier"], row["model"], row["requests"], row["tokens"]) for row in rows]


def margins_for(
    *, grain: str, since: datetime, until: datetime, dimension: str | None = None
) -> QuerySet[Margin]:
    """Margin rows whose bucket starts in [since, until), by bucket, dimension and key."""
    rows = Margin.objects.filter(grain=grain, bucket__gte=since, bucket__lt=until)
    if dimension is not None:
        rows = rows.filter(dimension=dimension)
    return rows.order_by("bucket", "dimension", "key")


def invoice_line_usage(*, line: InvoiceLine) -> QuerySet[UsageRecord]:
    """The ledger records an invoice line bills: its account's requests of its tier and model
    that started while its book was in force in [usage_from, usage_to) and reached the ledger
    in the close's window: by the close's cutoff for the period's own usage, between the
    previous close and this one for a prior-period line (none for a fee or a credit)."""
    if line.item in (InvoiceLine.Item.PLAN_FEE, InvoiceLine.Item.CREDIT):
        return UsageRecord.objects.none()
    period_start = line.invoice.period_start
    records = UsageRecord.objects.filter(
        account_id=line.invoice.account_id,
        tier=line.tier,
        model=line.model,
        started_at__gte=line.usage_from,
        started_at__lt=line.usage_to,
    )
    cutoff = month_close(period_start)
    if line.usage_from < period_start:
        late_since = month_close(month_start(period_start - timedelta(days=1)))
        records = records.filter(stored_at__gt=late_since or LONG_AGO)
        if cutoff is not None:
            records = records.filter(stored_at__lte=cutoff)
    elif cutoff is not None:
        records = records.filter(Q(stored_at__isnull=True) | Q(stored_at__lte=cutoff))
    return records.order_by("started_at", "request_id")


def credit_remaining(*, grant: CreditGrant) -> Decimal:
    """What is left of a grant: the sum of its ledger entries (granted, drawn, expired,
    refunded, corrected)."""
    total = CreditEntry.objects.filter(grant=grant).aggregate(total=Sum("amount"))["total"]
    return total or Decimal(0)


def credit_balance(account: Account, *, now: datetime | None = None) -> Decimal:
    """The account's prepaid balance in billing's currency by the ledger: what is left of its
    grants in effect. Usage not drawn down yet (the last hour or so) is not in it; the
    gateway's counter, which admission reads, is (it counts requests as they settle)."""
    entries = CreditEntry.objects.filter(
        account=account, grant__isnull=False, grant__effective_from__lte=now or timezone.now()
    )
    return entries.aggregate(total=Sum("amount"))["total"] or Decimal(0)


@dataclass(frozen=True, slots=True)
class GrantLeft:
    grant: CreditGrant
    remaining: Decimal


def credit_grants(account: Account) -> list[GrantLeft]:
    """The account's grants, newest first, each with what is left of it."""
    grants = CreditGrant.objects.filter(account=account).annotate(left=Sum("entries__amount"))
    return [GrantLeft(g, g.left or Decimal(0)) for g in grants.order_by("-created_at", "-pk")]


def credit_entries(account: Account) -> QuerySet[CreditEntry]:
    """The account's ledger movements, newest first."""
    return CreditEntry.objects.filter(account=account).order_by("-created_at", "-pk")
