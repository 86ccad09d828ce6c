"""The demo's prices, cost models and budget: seeded where none exist, never over staff's."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command

from billing.demo import BOOK_NAME, demo_billing_seed
from billing.models import CostModel
from catalogue.models import PlanPrice, Price, PriceBook
from customers.models import Budget
from customers.services import account_create, tiers_ensure_defaults

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 12, 5, 9, 30, tzinfo=UTC)
MODEL = "llama-3.1-8b-instruct"


@pytest.fixture
def acme() -> None:
    tiers_ensure_defaults()
    account_create(name="acme-research", tier_slug="premium")


def seed(now: datetime = NOW) -> None:
    demo_billing_seed(
        model=MODEL, backends=["sim-a", "sim-b"], budget_account="acme-research", now=now
    )


def test_it_prices_every_tier_costs_every_backend_and_budgets_the_account(acme: None) -> None:
    seed()

    book = PriceBook.objects.get()
    assert (book.name, book.currency, book.effective_from) == (BOOK_NAME, "USD", NOW)
    prices = {
        p.tier: (p.model, p.input_per_million, p.cached_input_per_million, p.output_per_million)
        for p in Price.objects.filter(price_book=book)
    }
    assert prices == {
        "free": (MODEL, Decimal(0), Decimal(0), Decimal(0)),
        "interactive": (MODEL, Decimal("0.2"), Decimal("0.1"), Decimal("0.6")),
        "premium": (MODEL, Decimal("0.3"), Decimal("0.15"), Decimal("0.9")),
    }
    plans = {p.tier: (p.monthly_fee, p.included_tokens) for p in PlanPrice.objects.all()}
    assert plans == {
        "free": (Decimal(0), 6_000_000),
        "interactive": (Decimal(10), 0),
        "premium": (Decimal(100), 0),
    }
    costs = {
        c.backend: (c.effective_from, c.gpu_cost_per_hour, c.electricity_per_kwh, c.pue)
        for c in CostModel.objects.all()
    }
    assert costs == {
        "sim-a": (NOW, Decimal("1.14"), Decimal("0.13"), Decimal("1.56")),
        "sim-b": (NOW, Decimal("1.14"), Decimal("0.08"), Decimal("1.3")),
    }
    budget = Budget.objects.get(account__name="acme-research")
    assert (budget.monthly_limit, budget.alert_percents, budget.hard_cap) == (
        Decimal(50),
        [50, 80, 100],
        True,
    )


def test_seeding_again_creates_nothing(acme: None) -> None:
    seed()
    seed(NOW + timedelta(hours=1))

    assert PriceBook.objects.count() == 1
    assert Price.objects.count() == 3
    assert CostModel.objects.count() == 2
    assert Budget.objects.count() == 1


def test_it_leaves_staff_edits_and_staffs_own_books_alone(acme: None) -> None:
    staff_book = PriceBook.objects.create(name="list 2026", effective_from=NOW - timedelta(days=9))
    CostModel.objects.create(
        backend="sim-a",
        effective_from=NOW - timedelta(days=9),
        electricity_per_kwh=Decimal("0.21"),
        gpu_cost_per_hour=Decimal("3.5"),
    )
    seed()
    Budget.objects.filter(account__name="acme-research").update(monthly_limit=Decimal(900))

    seed(NOW + timedelta(hours=1))

    assert list(PriceBook.objects.all()) == [staff_book]
    assert not Price.objects.exists()
    sim_a = CostModel.objects.get(backend="sim-a")
    assert (sim_a.gpu_cost_per_hour, sim_a.electricity_per_kwh) == (Decimal("3.5"), Decimal("0.21"))
    assert CostModel.objects.get(backend="sim-b").effective_from == NOW
    assert Budget.objects.get().monthly_limit == Decimal(900)


def test_the_billing_seed_command_seeds_the_billing_side() -> None:
    call_command("seed_demo", "--json", "--backend=sim-x=http://127.0.0.1:9131")
    call_command("seed_demo_billing", "--model=llama-3.1-8b-instruct", "--backend=sim-x")

    assert PriceBook.objects.get().name == BOOK_NAME
    assert list(CostModel.objects.values_list("backend", flat=True)) == ["sim-x"]
    assert Budget.objects.get().account.name == "acme-research"
