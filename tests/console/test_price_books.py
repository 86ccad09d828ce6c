"""Price books in the console: tiers, models and backends chosen from lists, a warning before a
new book takes effect at once, and a preview of what a book would have charged last month."""

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from audit.models import AuditEntry
from billing.admin_forms import CostModelForm
from billing.book_preview import last_month
from billing.models import CostModel
from billing.money import money_text
from catalogue.forms import PriceForm
from catalogue.models import Price, PriceBook
from customers.services import tiers_ensure_defaults
from fleet.models import Backend
from tests.billing.factories import BookSpec, PriceSpec, book_create, usage, usage_write

pytestmark = pytest.mark.django_db
ADD = "/admin/catalogue/pricebook/add/"
PRICE = PriceSpec("premium", "*", Decimal("1.5"), Decimal("0.5"), Decimal(6))


@pytest.fixture(autouse=True)
def fleet() -> None:
    tiers_ensure_defaults()
    Backend.objects.create(
        name="gpu-a", base_url="http://10.0.0.5:8000", upstream_model="m", public_models=["llama"]
    )
    Backend.objects.create(
        name="gpu-b",
        base_url="http://10.0.0.6:8000",
        upstream_model="m",
        public_models=["qwen", "llama"],
        enabled=False,
    )


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("pricing", password="not-used"))
    return client


def book_post(
    start: Any, *, tier: str = "premium", model: str = "*", **extra: str
) -> dict[str, str]:
    """The add form as the page posts it: the book, one price row, no plans."""
    return {
        "name": "spring prices",
        "currency": "USD",
        "effective_from_0": f"{start:%Y-%m-%d}",
        "effective_from_1": f"{start:%H:%M:%S}",
        "prices-TOTAL_FORMS": "1",
        "prices-INITIAL_FORMS": "0",
        "prices-0-tier": tier,
        "prices-0-model": model,
        "prices-0-input_per_million": "1.5",
        "prices-0-cached_input_per_million": "0.5",
        "prices-0-output_per_million": "6",
        "prices-0-request_fee": "0",
        "plans-TOTAL_FORMS": "0",
        "plans-INITIAL_FORMS": "0",
        **extra,
    }


def test_it_offers_the_tiers_and_the_models_the_fleet_serves() -> None:
    form = PriceForm()

    assert [value for value, _ in form.fields["tier"].choices] == [  # type: ignore[attr-defined]
        "",
        "premium",
        "interactive",
        "free",
    ]
    assert form.fields["model"].choices == [  # type: ignore[attr-defined]
        ("*", "* (any model)"),
        ("llama", "llama"),
        ("qwen", "qwen"),
    ]


def test_it_keeps_a_rows_tier_and_model_that_are_gone() -> None:
    book = book_create(BookSpec(timezone.now() + timedelta(days=30), [PRICE]))
    row = Price.objects.create(
        price_book=book,
        tier="legacy",
        model="falcon",
        input_per_million=1,
        cached_input_per_million=1,
        output_per_million=1,
    )

    form = PriceForm(instance=row)

    assert ("legacy", "legacy (no longer a tier)") in form.fields["tier"].choices  # type: ignore[attr-defined]
    assert ("falcon", "falcon (no longer served)") in form.fields["model"].choices  # type: ignore[attr-defined]


def test_it_refuses_a_tier_typed_in(staff: Client) -> None:
    page = staff.post(ADD, book_post(timezone.now() + timedelta(days=30), tier="gold"))

    assert page.status_code == 200
    assert "“gold” is not a tier; the tiers are premium, interactive, free." in page.text
    assert not PriceBook.objects.exists()


def test_it_refuses_a_model_the_fleet_does_not_serve(staff: Client) -> None:
    page = staff.post(ADD, book_post(timezone.now() + timedelta(days=30), model="lama"))

    assert "“lama” is not a model the fleet serves" in page.text
    assert not PriceBook.objects.exists()


def test_a_book_starting_later_is_saved_at_once(staff: Client) -> None:
    page = staff.post(ADD, book_post(timezone.now() + timedelta(days=30), model="qwen"))

    assert page.status_code == 302
    book = PriceBook.objects.get()
    assert list(book.prices.values_list("tier", "model")) == [("premium", "qwen")]


def test_a_new_book_starting_in_the_past_asks_first(staff: Client) -> None:
    old = book_create(BookSpec(timezone.now() - timedelta(days=90), [PRICE]))
    start = (timezone.now() - timedelta(days=3)).replace(microsecond=0)

    page = staff.post(ADD, book_post(start))

    assert page.status_code == 200
    assert (
        "This book takes effect at once and can never be changed afterwards: it will rate "
        f"usage from {start:%Y-%m-%d %H:%M:%S} UTC, requests already made included."
    ) in page.text
    assert f"It takes the place of “{old.name}” from then." in page.text
    assert "Save anyway? Tick “Save anyway” and save again." in page.text
    assert 'name="save_anyway"' in page.text
    assert 'type="checkbox"' in page.text
    assert list(PriceBook.objects.all()) == [old]

    page = staff.post(ADD, book_post(start, save_anyway="on"))

    assert page.status_code == 302
    book = PriceBook.objects.get(name="spring prices")
    assert book.effective_from == start
    assert book.prices.count() == 1
    assert AuditEntry.objects.filter(object_type="catalogue.pricebook", action="create").exists()


def test_a_cost_models_backend_is_one_of_the_fleet() -> None:
    data = {
        "effective_from": "2030-01-01 00:00:00",
        "currency": "USD",
        "electricity_per_kwh": "0.2",
        "pue": "1.2",
        "gpu_cost_per_hour": "12",
    }
    assert [value for value, _ in CostModelForm().fields["backend"].choices] == [  # type: ignore[attr-defined]
        "",
        "gpu-a",
        "gpu-b",
    ]

    typed = CostModelForm(data={**data, "backend": "gpu-z"})
    assert not typed.is_valid()
    assert typed.errors["backend"] == [
        "“gpu-z” is not a backend of the fleet; the backends are gpu-a, gpu-b."
    ]

    chosen = CostModelForm(data={**data, "backend": "gpu-b"})
    assert chosen.is_valid(), chosen.errors
    gone = CostModel(backend="gpu-old")
    assert ("gpu-old", "gpu-old (no longer in the fleet)") in CostModelForm(instance=gone).fields[
        "backend"
    ].choices  # type: ignore[attr-defined]


def test_the_preview_shows_last_months_usage_at_the_books_prices(staff: Client) -> None:
    since, _ = last_month(timezone.now())
    book_create(BookSpec(since - timedelta(days=40), [PRICE]))
    cheaper = PriceSpec("premium", "*", Decimal("0.75"), Decimal("0.25"), Decimal(3))
    book = book_create(BookSpec(timezone.now() + timedelta(days=30), [cheaper]))
    usage_write([usage(since + timedelta(days=1), prompt=1_000_000, completion=200_000)])

    change = staff.get(f"/admin/catalogue/pricebook/{book.pk}/change/")
    assert f'href="/admin/catalogue/pricebook/{book.pk}/preview/"' in change.text
    page = staff.get(f"/admin/catalogue/pricebook/{book.pk}/preview/")

    assert page.status_code == 200
    # 1,000,000 input x 1.5 + 200,000 output x 6 per million, against 0.75 and 3.
    rated, charged = Decimal("2.7"), Decimal("1.35")
    text = page.text
    assert f"<td>{money_text(rated, 'USD')}</td>" in text
    assert f'<th id="book-preview-total">{money_text(charged, "USD")}</th>' in text
    assert money_text(charged - rated, "USD") == "-$1.35"
    assert "<td>-$1.35</td>" in text


def test_the_preview_is_for_staff_only(staff: Client) -> None:
    book = book_create(BookSpec(timezone.now() + timedelta(days=30), [PRICE]))
    page = f"/admin/catalogue/pricebook/{book.pk}/preview/"
    anonymous = Client().get(page)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/admin/login/")

    customer = Client()
    customer.force_login(User.objects.create_user("customer", password="not-used"))
    assert customer.get(page).status_code == 302

    clerk_user = User.objects.create_user("clerk", password="not-used", is_staff=True)
    clerk = Client()
    clerk.force_login(clerk_user)
    assert clerk.get(page).status_code == 403
    clerk_user.user_permissions.add(Permission.objects.get(codename="view_pricebook"))
    assert clerk.get(page).status_code == 200
