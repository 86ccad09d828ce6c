"""Prepaid usage drawn down from credit grants, hour by hour from the rollups; expiries.

Each run (billing.credits_drawdown, with the rollups) makes every prepaid account's usage
entries of an hour add up to the hour's rated usage in the hourly rollups, over the hours from
the month of the last run's watermark, a grace window back, to the rollups' watermark: an
hour drawn before and rolled up again with late usage draws the difference (or gives it back
if it shrank), so running twice changes nothing and late usage is drawn once. An hour draws
from the grants in effect for it in order: soonest expiry first (never-expiring last), then
higher priority, then the oldest; what no grant covers is recorded as drawn from nothing
(grant null), which the invoice bills. Grants whose expiry the draw-down has passed then
record their remainder as expired. docs/billing.md, "Prepaid credits".
"""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Min, Sum
from django.utils import timezone

from billing.jobs import HOUR, grace, job_start, month_start, watermark, watermark_set
from billing.models import CreditEntry, CreditGrant
from customers.models import Account

LOCK = "billing.credits"
_JOB = "credits.drawdown"
_ROLLED = (
    "SELECT account_id, bucket, sum(revenue) FROM billing_usagerollup "
    "WHERE grain = 'hour' AND bucket >= %(since)s AND bucket < %(until)s "
    "AND account_id = ANY (%(accounts)s::bigint[]) GROUP BY 1, 2"
)


@dataclass(frozen=True, slots=True)
class DrawdownResult:
    since: datetime
    until: datetime
    entries: int
    expired: int


def drawn_through() -> datetime | None:
    """Usage that started before this is drawn down (as the rollups stood)."""
    return watermark(_JOB)


def credits_drawdown_run(*, wait: bool = False) -> DrawdownResult | None:
    """Draw the rolled-up hours not drawn yet (and any that changed) from prepaid accounts'
    grants, then expire what the hours passed. None when another run holds the lock (unless
    `wait`) or nothing is rolled up yet."""
    from billing.credits import entry_append

    with transaction.atomic():
        if not job_start(LOCK, wait=wait):
            return None
        until = watermark("rollups")
        if until is None:
            return None
        accounts = list(
            Account.objects.filter(billing_mode=Account.Billing.PREPAID).values_list(
                "pk", flat=True
            )
        )
        since = _since(accounts, until)
        entries = 0
        for account, deltas in _deltas(accounts, since, until).items():
            entries += _draw(account, deltas)
        expired = 0
        for grant in _expiring(until):
            left = _left(grant)
            if left > 0:
                entry_append(grant, CreditEntry.Kind.EXPIRY, -left, actor="system", memo="expired")
                expired += 1
        watermark_set(_JOB, until)
    return DrawdownResult(since, until, entries, expired)


def _since(accounts: list[int], until: datetime) -> datetime:
    """From the month of the last run's watermark, a grace window back (late usage of hours
    drawn already); on the first run, from the month of the first grant."""
    drawn = watermark(_JOB)
    if drawn is not None:
        return month_start(drawn - grace())
    first = CreditGrant.objects.filter(account_id__in=accounts).aggregate(
        first=Min("effective_from")
    )["first"]
    return month_start(min(first or until, until) - grace())


def _deltas(
    accounts: list[int], since: datetime, until: datetime
) -> dict[int, list[tuple[datetime, Decimal]]]:
    """Per account, the hours whose rated usage differs from what was drawn for them, in
    order: (hour, rated - drawn)."""
    rolled: dict[tuple[int, datetime], Decimal] = defaultdict(Decimal)
    with connection.cursor() as cursor:
        cursor.execute(_ROLLED, {"since": since, "until": until, "accounts": accounts})
        for account, bucket, revenue in cursor.fetchall():
            rolled[(account, bucket)] += revenue
    drawn = (
        CreditEntry.objects.filter(
            account_id__in=accounts,
            kind=CreditEntry.Kind.USAGE,
            period__gte=since,
            period__lt=until,
        )
        .values("account_id", "period")
        .annotate(total=Sum("amount"))
    )
    for row in drawn:
        rolled[(row["account_id"], row["period"])] += row["total"]  # draws are negative
    deltas: dict[int, list[tuple[datetime, Decimal]]] = defaultdict(list)
    for (account, bucket), delta in sorted(rolled.items()):
        if delta:
            deltas[account].append((bucket, delta))
    return deltas


def _draw(account: int, deltas: list[tuple[datetime, Decimal]]) -> int:
    # Refunds and corrections lock a grant to check what is left of it: so does this.
    list(CreditGrant.objects.select_for_update().filter(account_id=account).order_by("pk"))
    grants = list(
        CreditGrant.objects.filter(account_id=account)
        .order_by("pk")
        .annotate(left=Sum("entries__amount"))
    )
    left = {grant.pk: grant.left or Decimal(0) for grant in grants}
    rows: list[CreditEntry] = []
    for hour, delta in deltas:
        if delta > 0:
            rows += _take(account, hour, delta, _in_order(grants, hour), left)
        else:
            rows += _give_back(account, hour, -delta, left)
    CreditEntry.objects.bulk_create(rows)
    return len(rows)


def _in_order(grants: Sequence[CreditGrant], hour: datetime) -> list[CreditGrant]:
    """The grants in effect for usage of `hour`, in the order they are drawn."""
    usable = [
        g
        for g in grants
        if g.effective_from < hour + HOUR and (g.expires_at is None or g.expires_at > hour)
    ]
    return sorted(
        usable,
        key=lambda g: (g.expires_at is None, g.expires_at or hour, -g.priority, g.created_at, g.pk),
    )


def _take(
    account: int,
    hour: datetime,
    amount: Decimal,
    grants: list[CreditGrant],
    left: dict[int, Decimal],
) -> list[CreditEntry]:
    rows = []
    for grant in grants:
        if amount <= 0:
            break
        share = min(amount, left[grant.pk])
        if share > 0:
            rows.append(_usage(account, grant, hour, -share))
            left[grant.pk] -= share
            amount -= share
    if amount > 0:
        rows.append(_usage(account, None, hour, -amount))
    return rows


def _give_back(
    account: int, hour: datetime, amount: Decimal, left: dict[int, Decimal]
) -> list[CreditEntry]:
    """The hour's usage shrank (rolled up again after a price book was corrected): give back
    what it drew, the last drawn first."""
    drawn = (
        CreditEntry.objects.filter(account_id=account, kind=CreditEntry.Kind.USAGE, period=hour)
        .values("grant_id")
        .annotate(total=Sum("amount"))
        .order_by("-grant_id")
    )
    rows = []
    for row in sorted(drawn, key=lambda r: r["grant_id"] is not None):
        if amount <= 0:
            break
        share = min(amount, -row["total"])
        if share > 0:
            grant_id = row["grant_id"]
            rows.append(
                CreditEntry(
                    account_id=account,
                    grant_id=grant_id,
                    kind=CreditEntry.Kind.USAGE,
                    amount=share,
                    period=hour,
                    actor="system",
                )
            )
            if grant_id is not None:
                left[grant_id] += share
            amount -= share
    return rows


def _usage(account: int, grant: CreditGrant | None, hour: datetime, amount: Decimal) -> CreditEntry:
    return CreditEntry(
        account_id=account,
        grant=grant,
        kind=CreditEntry.Kind.USAGE,
        amount=amount,
        period=hour,
        actor="system",
    )


def _expiring(through: datetime) -> list[CreditGrant]:
    """Grants that expired by `through` (all their usable hours drawn) and are not recorded
    as expired yet."""
    return list(
        CreditGrant.objects.select_for_update()
        .filter(expires_at__lte=min(through, timezone.now()))
        .exclude(entries__kind=CreditEntry.Kind.EXPIRY)
        .order_by("pk")
    )


def _left(grant: CreditGrant) -> Decimal:
    return grant.entries.aggregate(total=Sum("amount"))["total"] or Decimal(0)
