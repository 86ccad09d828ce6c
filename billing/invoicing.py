"""An invoice's lines from the period's usage sums: pure, so a preview and a close agree.

Lines per usage month, tier, model, price book, project and token class (plus the request
fee), each with the [usage_from, usage_to) of the ledger records behind it: the period's own
usage, and usage of earlier months that arrived after they were closed (prior-period lines,
dated in their month); a negative "included" line per month, tier, model, book and project for
the plan's included tokens, valued at the rated price of the tokens they cover; the plan's
monthly fee, prorated to the microsecond over the time the account was open. Rounded once, by
billing.money.allocate (docs/billing.md).
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache

from billing.jobs import next_month
from billing.money import CONTEXT, allocate, per_million, share_of
from billing.rating import Plan, PriceList, Quantities, rate


@dataclass(frozen=True, slots=True)
class Period:
    """A billing period: [start, end)."""

    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class UsageSum:
    """An account's usage of one month (its start), tier and model under one book (None:
    before any book), in one project (None: usage from before projects, or a sum of them)."""

    account_id: int
    month: datetime
    tier: str
    model: str
    book_id: int | None
    quantities: Quantities
    project_id: int | None = None


@dataclass(frozen=True, slots=True)
class AccountPlan:
    """The plan an account's invoice applies: its tier's PlanPrice in the period's book, and
    the time the account was open in the period (from its creation, not suspended)."""

    account_id: int
    tier: str
    book_id: int
    plan: Plan
    open: "OpenTime"


@dataclass
class Line:
    item: str
    tier: str
    model: str
    price_book_id: int | None
    quantity: int
    unit_price: Decimal
    amount: Decimal
    usage_from: datetime
    usage_to: datetime
    amount_minor: int = 0
    # The project whose usage it bills; None for the plan fee and amounts credited.
    project_id: int | None = None


@dataclass
class Draft:
    account_id: int
    period: Period
    currency: str
    lines: list[Line] = field(default_factory=list)
    # Usage with no price (worth nothing): (tier, model, tokens), to report.
    unpriced: list[tuple[str, str, int]] = field(default_factory=list)
    # Usage of earlier months billed here (it arrived after they closed): (month, tier,
    # model, tokens), to report.
    late: list[tuple[datetime, str, str, int]] = field(default_factory=list)
    amount: Decimal = Decimal(0)
    total_minor: int = 0


def draft_build(
    *,
    account_id: int,
    period: Period,
    currency: str,
    prices: PriceList,
    usage: Iterable[UsageSum],
    covered: Iterable[UsageSum] = (),
    plan: AccountPlan | None = None,
    credits_applied: Decimal = Decimal(0),
) -> Draft:
    """The account's lines for the period, rounded: sum(amount_minor) == total_minor.

    A prepaid account's `credits_applied` (its grants drawn down by the usage) is one negative
    line, so the total is the amount due: zero where the credits covered the usage."""
    draft = Draft(account_id, period, currency)
    for used in usage:
        draft.lines += _usage_lines(used, prices, draft.unpriced)
        if used.month < period.start:
            draft.late.append((used.month, used.tier, used.model, used.quantities.tokens))
    for cover in covered:
        draft.lines += _included_lines(cover, prices)
    if plan is not None and plan.plan.monthly_fee and plan.open.microseconds:
        fee, open_ = plan.plan.monthly_fee, plan.open
        amount = share_of(fee, open_.microseconds, _microseconds(period.end - period.start))
        draft.lines.append(
            Line("plan_fee", plan.tier, "", plan.book_id, 1, fee, amount, open_.start, open_.end)
        )
    if credits_applied:
        draft.lines.append(
            Line(
                "credits_applied",
                "",
                "",
                None,
                1,
                credits_applied.quantize(Decimal("0.000001"), context=CONTEXT),
                -credits_applied,
                period.start,
                period.end,
            )
        )
    allocation = allocate([line.amount for line in draft.lines], currency)
    for line, minor in zip(draft.lines, allocation.lines_minor, strict=True):
        line.amount_minor = minor
    draft.amount = sum((line.amount for line in draft.lines), Decimal(0))
    draft.total_minor = allocation.total_minor
    return draft


@dataclass(frozen=True, slots=True)
class OpenTime:
    """How long an account was open in a period (microseconds), from `start` to `end`."""

    microseconds: int
    start: datetime
    end: datetime


def open_time(
    period: Period,
    created_at: datetime,
    suspensions: Iterable[tuple[datetime, bool]],
    suspended_now: bool,
) -> OpenTime:
    """The time of `period` an account was open: from its creation on, less the time it was
    suspended. `suspensions` are its status changes in order, (when, suspended after it); the
    state before the first is the opposite of the first's, and without any it is today's.
    """
    changes = sorted(suspensions)
    start = max(period.start, created_at)
    before = [suspended for at, suspended in changes if at <= start]
    if before:
        suspended = before[-1]
    elif changes:
        suspended = not changes[0][1]
    else:
        suspended = suspended_now
    total, first, last, since = 0, None, None, start
    for at, becomes in [
        *((at, s) for at, s in changes if start < at < period.end),
        (period.end, True),
    ]:
        if not suspended and at > since:
            total += _microseconds(at - since)
            first, last = first or since, at
        suspended, since = becomes, at
    return OpenTime(total, first or start, last or start)


def _microseconds(span: timedelta) -> int:
    return span // timedelta(microseconds=1)


def _usage_lines(
    used: UsageSum, prices: PriceList, unpriced: list[tuple[str, str, int]]
) -> list[Line]:
    book = prices.book(used.book_id) if used.book_id is not None else None
    terms = book.terms(used.tier, used.model) if book else None
    if book is None or terms is None:
        unpriced.append((used.tier, used.model, used.quantities.tokens))
        return []
    usage_from, usage_to = _book_span(prices, used.book_id, _month(used))
    rated = rate(used.quantities, terms)
    return [
        Line(
            item,
            used.tier,
            used.model,
            book.id,
            quantity,
            terms.unit_price(item),
            getattr(rated, item),
            usage_from,
            usage_to,
            project_id=used.project_id,
        )
        for item, quantity in used.quantities.items()
        # A request fee of nothing is no line; tokens at no price are (the customer sees them).
        if quantity and (item != "request_fee" or terms.request_fee)
    ]


def _included_lines(cover: UsageSum, prices: PriceList) -> list[Line]:
    book = prices.book(cover.book_id) if cover.book_id is not None else None
    terms = book.terms(cover.tier, cover.model) if book else None
    if book is None or terms is None or not cover.quantities.tokens:
        return []  # Covering unpriced usage is worth nothing.
    value = rate(cover.quantities, terms).total
    usage_from, usage_to = _book_span(prices, cover.book_id, _month(cover))
    tokens = cover.quantities.tokens
    return [
        Line(
            "included",
            cover.tier,
            cover.model,
            book.id,
            tokens,
            per_million(value, tokens),
            -value,
            usage_from,
            usage_to,
            project_id=cover.project_id,
        )
    ]


def _month(used: UsageSum) -> Period:
    return _month_from(used.month)


@cache
def _month_from(start: datetime) -> Period:
    """The month starting at `start` (a close asks for it once per line: 250,000 times)."""
    return Period(start, next_month(start))


def _book_span(prices: PriceList, book_id: int | None, period: Period) -> tuple[datetime, datetime]:
    """The part of the period a book was in force: where the line's usage lies."""
    assert book_id is not None
    book = prices.book(book_id)
    end = prices.book_end(book)
    return max(period.start, book.effective_from), (min(period.end, end) if end else period.end)
