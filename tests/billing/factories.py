"""Price books, cost models and usage for billing tests, and hypothesis strategies for them."""

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from hypothesis import strategies as st

from billing.models import CostModel, Invoice, InvoiceLine
from billing.money import to_minor
from catalogue.models import PlanPrice, Price, PriceBook
from customers.models import Account
from customers.services import account_create, tiers_ensure_defaults
from metering.services import usage_records_write

# A month in the past: periods close at once (its grace window is long over).
MONTH = datetime(2025, 3, 1, tzinfo=UTC)
NEXT_MONTH = datetime(2025, 4, 1, tzinfo=UTC)
TIERS = ("free", "premium")
MODELS = ("llama", "qwen", "mistral")


@dataclass
class PriceSpec:
    tier: str
    model: str
    input: Decimal
    cached: Decimal
    output: Decimal
    reasoning: Decimal | None = None
    fee: Decimal = Decimal(0)


@dataclass
class BookSpec:
    effective_from: datetime
    prices: list[PriceSpec]
    plans: dict[str, tuple[Decimal, int]] = field(default_factory=dict)


def book_create(spec: BookSpec, currency: str = "USD") -> PriceBook:
    """A book and its rows in one transaction: a book in force is sealed once that commits."""
    with transaction.atomic():
        book = PriceBook.objects.create(
            name=f"book {spec.effective_from:%Y-%m-%d %H:%M}",
            currency=currency,
            effective_from=spec.effective_from,
        )
        Price.objects.bulk_create(
            Price(
                price_book=book,
                tier=p.tier,
                model=p.model,
                input_per_million=p.input,
                cached_input_per_million=p.cached,
                output_per_million=p.output,
                reasoning_per_million=p.reasoning,
                request_fee=p.fee,
            )
            for p in spec.prices
        )
        PlanPrice.objects.bulk_create(
            PlanPrice(price_book=book, tier=tier, monthly_fee=fee, included_tokens=included)
            for tier, (fee, included) in spec.plans.items()
        )
    return book


def cost_model_create(backend: str, **overrides: Any) -> CostModel:
    values: dict[str, Any] = {
        "effective_from": MONTH - timedelta(days=31),
        "electricity_per_kwh": Decimal("0.20"),
        "pue": Decimal("1.25"),
        "gpu_cost_per_hour": Decimal("12"),
    }
    return CostModel.objects.create(backend=backend, **(values | overrides))


def invoice_with_line(
    account: Account, *, start: datetime, amount: Decimal, model: str, tier: str = "premium"
) -> Invoice:
    """A draft invoice of one output line at 10 a million tokens, over the 31 days from
    `start`, for pages to show."""
    minor = to_minor(amount, "USD")
    invoice = Invoice.objects.create(
        account=account,
        period_start=start,
        period_end=start + timedelta(days=31),
        amount=amount,
        total_minor=minor,
    )
    InvoiceLine.objects.create(
        invoice=invoice,
        item=InvoiceLine.Item.OUTPUT,
        tier=tier,
        model=model,
        quantity=int(amount * 100_000),
        unit_price=Decimal(10),
        amount=amount,
        amount_minor=minor,
        usage_from=start,
        usage_to=start + timedelta(days=31),
    )
    return invoice


def account_make(tier: str = "premium") -> Account:
    """An account that existed before MONTH (plan fees apply from when an account exists)."""
    tiers_ensure_defaults()
    account = account_create(name=f"acct-{uuid.uuid4().hex[:8]}", tier_slug=tier)
    Account.objects.filter(pk=account.pk).update(created_at=MONTH - timedelta(days=60))
    return account


def usage(
    started_at: datetime,
    *,
    account_id: int = 1,
    tier: str = "premium",
    model: str = "llama",
    backend: str = "gpu-a",
    prompt: int = 1000,
    cached: int = 0,
    completion: int = 100,
    reasoning: int = 0,
    energy: float | None = None,
    api_key_id: int | None = None,
    project_id: int | None = None,
) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "request_id": uuid.uuid4(),
        "account_id": account_id,
        "api_key_id": api_key_id if api_key_id is not None else account_id * 10,
        "tier": tier,
        "model": model,
        "backend": backend,
        "endpoint": "chat.completions",
        "prompt_tokens": prompt,
        "cached_prompt_tokens": cached,
        "completion_tokens": completion,
        "reasoning_tokens": reasoning,
        "tokens_estimated": False,
        "queue_wait_ms": 0.0,
        "ttft_ms": 20.0,
        "latency_ms": 250.0,
        "status_code": 200,
        "outcome": "ok",
        "streamed": True,
        "started_at": started_at,
        "ended_at": started_at + timedelta(milliseconds=250),
        "energy_joules": energy,
    }


def usage_write(records: Sequence[dict[str, Any]]) -> None:
    usage_records_write(records=records)
    _projects_set(records)


def _projects_set(records: Sequence[dict[str, Any]]) -> None:
    """The `project_id` of records that name one, as the gateway carries it; set after the
    write so that these tests do not depend on whether the writer's columns have it yet."""
    named = [(r["request_id"], r["project_id"]) for r in records if r.get("project_id")]
    if not named:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE metering_usagerecord u SET project_id = n.project_id "
            "FROM unnest(%s::uuid[], %s::bigint[]) AS n(request_id, project_id) "
            "WHERE u.request_id = n.request_id",
            [[r for r, _ in named], [p for _, p in named]],
        )


@contextmanager
def rolled_back() -> Iterator[None]:
    """Undo everything the block wrote: one hypothesis example must not see another's rows."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


# Lines are told apart by their invoice's account and number, not its surrogate id.
_SELECT = {
    "billing_invoiceline": "SELECT l.*, i.account_id AS of_account, i.number AS of_number "
    "FROM billing_invoiceline l JOIN billing_invoice i ON i.id = l.invoice_id"
}
# Surrogate keys and the clock's creation times: not what a job computes.
_IGNORED = ("id", "invoice_id", "corrects_id", "created_at")


def table(name: str) -> list[tuple[Any, ...]]:
    """A table's rows in a fixed order, as a job computed them: its output before and after."""
    with connection.cursor() as cursor:
        cursor.execute(_SELECT.get(name, f"SELECT * FROM {name}"))  # noqa: S608 (test constants)
        columns = [column.name for column in cursor.description]
        keep = [i for i, column in enumerate(columns) if column not in _IGNORED]
        return sorted((tuple(row[i] for i in keep) for row in cursor.fetchall()), key=repr)


# Strategies ----------------------------------------------------------------------------------

prices = st.decimals(min_value=0, max_value=Decimal("99.999999"), places=6)
fees = st.one_of(st.just(Decimal(0)), st.decimals(min_value=0, max_value=Decimal("0.01"), places=6))


@st.composite
def price_specs(draw: st.DrawFn, tier: str, model: str) -> PriceSpec:
    return PriceSpec(
        tier,
        model,
        input=draw(prices),
        cached=draw(prices),
        output=draw(prices),
        reasoning=draw(st.one_of(st.none(), prices)),
        fee=draw(fees),
    )


plans = st.dictionaries(
    st.sampled_from(TIERS),
    st.tuples(
        st.sampled_from([Decimal(0), Decimal("9.99"), Decimal("0.005")]),
        st.integers(0, 300_000),
    ),
)


@st.composite
def book_specs(draw: st.DrawFn, effective_from: datetime) -> BookSpec:
    """A book pricing some (tier, model) pairs and some tiers' "*": some usage goes unpriced.

    Plans: a monthly fee and included tokens for some tiers."""
    keys = draw(
        st.lists(
            st.tuples(st.sampled_from(TIERS), st.sampled_from((*MODELS[:2], "*"))),
            min_size=1,
            max_size=5,
            unique=True,
        )
    )
    rows = [draw(price_specs(tier, model)) for tier, model in keys]
    return BookSpec(effective_from, rows, draw(plans))


@st.composite
def books_in_month(draw: st.DrawFn) -> list[BookSpec]:
    """A book from before the month, and sometimes a price change inside it."""
    starts = [MONTH - timedelta(days=40)]
    if draw(st.booleans()):
        starts.append(MONTH + timedelta(seconds=draw(st.integers(1, 31 * 86400 - 1))))
    return [draw(book_specs(start)) for start in starts]


@st.composite
def records_in_month(draw: st.DrawFn, accounts: Sequence[int] = (1,)) -> list[dict[str, Any]]:
    starts = st.integers(0, 31 * 86400 * 10**6 - 1).map(
        lambda us: MONTH + timedelta(microseconds=us)
    )
    return draw(
        st.lists(
            a_record(starts, accounts, prompt=200_000, completion=50_000), min_size=1, max_size=25
        )
    )


@st.composite
def a_record(
    draw: st.DrawFn,
    starts: st.SearchStrategy[datetime],
    accounts: Sequence[int],
    *,
    prompt: int,
    completion: int,
) -> dict[str, Any]:
    """One usage record that started at one of `starts`, of one of `accounts`, with up to
    `prompt` and `completion` tokens, of every class."""
    prompt_tokens = draw(st.integers(0, prompt))
    completion_tokens = draw(st.integers(0, completion))
    return usage(
        draw(starts),
        account_id=draw(st.sampled_from(accounts)),
        tier=draw(st.sampled_from(TIERS)),
        model=draw(st.sampled_from(MODELS)),
        backend=draw(st.sampled_from(("gpu-a", "gpu-b"))),
        prompt=prompt_tokens,
        cached=draw(st.integers(0, prompt_tokens)),
        completion=completion_tokens,
        reasoning=draw(st.integers(0, completion_tokens)),
        energy=draw(st.one_of(st.none(), st.floats(0, 5000, allow_nan=False))),
    )
