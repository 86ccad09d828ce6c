"""Bad input gets a clear error in the API's format and changes nothing (promise P6)."""

from typing import Any

import pytest
from rest_framework.test import APIClient

from audit.models import AuditEntry
from catalogue.models import PlanPrice, Price, PriceBook
from customers.models import Account, Tier
from customers.services import account_create, tiers_ensure_defaults
from tests.console.api_support import (
    assert_error,
    price_book_create,
    staff_client,
    tenant_create,
)

pytestmark = pytest.mark.django_db

PRICE = {
    "tier": "premium",
    "input_per_million": "1",
    "cached_input_per_million": "1",
    "output_per_million": "1",
}


@pytest.fixture
def staff() -> APIClient:
    tiers_ensure_defaults()
    return staff_client()


def _changes() -> int:
    """Audited changes by staff (not the tenants' creation by the system)."""
    by_staff = AuditEntry.objects.exclude(actor="system")
    return by_staff.exclude(object_type="console.stafftoken").count()


def test_a_price_book_in_force_cannot_be_edited(staff: APIClient) -> None:
    book = price_book_create(in_force=True)
    price = Price.objects.create(price_book=book, **PRICE)
    attempts = [
        staff.patch(f"/api/v1/price-books/{book.pk}/", {"name": "x"}, format="json"),
        staff.delete(f"/api/v1/price-books/{book.pk}/"),
        staff.post(
            "/api/v1/prices/", {**PRICE, "model": "m", "price_book": book.pk}, format="json"
        ),
        staff.patch(f"/api/v1/prices/{price.pk}/", {"output_per_million": "9"}, format="json"),
        staff.delete(f"/api/v1/prices/{price.pk}/"),
        staff.post("/api/v1/plan-prices/", {"tier": "free", "price_book": book.pk}, format="json"),
    ]
    for response in attempts:
        error = assert_error(response, 400, "price_book_in_force")
        assert "cannot change" in error["message"]
    assert PriceBook.objects.get(pk=book.pk).name == "list"
    assert Price.objects.get(pk=price.pk).output_per_million == 1
    assert not PlanPrice.objects.exists()
    assert _changes() == 0


def test_a_price_cannot_move_from_a_draft_into_a_book_in_force(staff: APIClient) -> None:
    draft, in_force = price_book_create(in_force=False), price_book_create(in_force=True)
    price = Price.objects.create(price_book=draft, **PRICE)
    response = staff.patch(
        f"/api/v1/prices/{price.pk}/", {"price_book": in_force.pk}, format="json"
    )
    assert_error(response, 400, "price_book_in_force")
    assert Price.objects.get(pk=price.pk).price_book_id == draft.pk


def test_a_draft_book_cannot_be_moved_into_the_past(staff: APIClient) -> None:
    book = price_book_create(in_force=False)
    response = staff.patch(
        f"/api/v1/price-books/{book.pk}/", {"effective_from": "2001-01-01T00:00:00Z"}, format="json"
    )
    error = assert_error(response, 400)
    assert error["param"] == "effective_from"


def test_a_book_with_two_prices_for_one_tier_and_model_is_refused(staff: APIClient) -> None:
    response = staff.post(
        "/api/v1/price-books/",
        {
            "name": "dup",
            "currency": "USD",
            "effective_from": "2031-01-01T00:00:00Z",
            "prices": [PRICE, PRICE],
        },
        format="json",
    )
    assert assert_error(response, 400)["param"] == "prices"
    assert not PriceBook.objects.exists()


def test_field_errors_name_the_field_and_list_every_problem(staff: APIClient) -> None:
    response = staff.post(
        "/api/v1/accounts/",
        {"name": "", "tier": "platinum", "limits": {"tokens_per_day": -5}},
        format="json",
    )
    error = assert_error(response, 400)
    assert set(error["details"]) == {"name", "tier", "limits.tokens_per_day"}
    assert error["param"] in error["details"]
    assert not Account.objects.exists()


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/api/v1/tiers/", {"slug": "t", "name": "t", "priority": 1, "tokens_per_day": 2**70}),
        ("/api/v1/tiers/", {"slug": "t", "name": "t", "priority": 70000}),
        ("/api/v1/tiers/", {"slug": "t", "name": "t", "priority": 1, "queue_timeout_seconds": -1}),
        ("/api/v1/tiers/", {"slug": "no spaces", "name": "t", "priority": 1}),
        ("/api/v1/backends/", {"name": "b", "base_url": "not a url", "upstream_model": "m"}),
        ("/api/v1/keys/", {"account": "x"}),
        ("/api/v1/keys/", {"account": 1, "expires_at": "9999-12-31T23:59:59-05:00"}),
        ("/api/v1/accounts/", {"name": "a\x00b", "tier": "free"}),
        ("/api/v1/price-books/", {"name": "p", "currency": "€€€", "effective_from": "soon"}),
    ],
)
def test_out_of_range_and_malformed_values_are_400(
    staff: APIClient, url: str, body: dict[str, Any]
) -> None:
    tenant_create()
    assert_error(staff.post(url, body, format="json"), 400)
    assert _changes() == 0


def test_malformed_json_is_a_400(staff: APIClient) -> None:
    response = staff.generic("POST", "/api/v1/tiers/", "{nope", content_type="application/json")
    assert_error(response, 400, "parse_error")


def test_a_duplicate_name_is_a_400_on_the_field(staff: APIClient) -> None:
    tenant = tenant_create()
    response = staff.post(
        "/api/v1/accounts/", {"name": tenant.account.name, "tier": "free"}, format="json"
    )
    assert assert_error(response, 400, "unique")["param"] == "name"


def test_deleting_what_others_still_use_is_a_409(staff: APIClient) -> None:
    tenant = tenant_create()
    assert_error(staff.delete(f"/api/v1/accounts/{tenant.account.pk}/"), 409, "conflict")
    assert_error(staff.delete(f"/api/v1/tiers/{tenant.account.tier.pk}/"), 409, "conflict")
    assert Account.objects.filter(pk=tenant.account.pk).exists()
    assert Tier.objects.filter(pk=tenant.account.tier.pk).exists()
    assert _changes() == 0


def test_an_account_without_invoices_is_deleted_with_its_keys(staff: APIClient) -> None:
    account = account_create(name="short-lived", tier_slug="free")
    assert staff.delete(f"/api/v1/accounts/{account.pk}/").status_code == 204
    assert not Account.objects.filter(pk=account.pk).exists()


@pytest.mark.parametrize(
    "query",
    [
        {"from": "2030-01-01T00:00:00Z", "to": "2031-06-01T00:00:00Z"},
        {"from": "2030-02-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"},
        {"from": "0001-01-01T00:00:00Z"},
        {"from": "yesterday"},
        {"group_by": "day,planet"},
        {"account": "99999999999999999999999"},
    ],
)
def test_bad_usage_queries_are_400(staff: APIClient, query: dict[str, str]) -> None:
    assert_error(staff.get("/api/v1/usage/", query), 400)


@pytest.mark.parametrize(
    "query",
    [
        {"from": "2030-01-01T00:00:00Z", "to": "2031-06-01T00:00:00Z"},
        {"from": "2030-01-01T00:00:00Z"},
        {"from": "2030-01-01T00:00:00Z", "to": "2030-02-01T00:00:00Z", "file_format": "xls"},
    ],
)
def test_bad_export_queries_are_400(staff: APIClient, query: dict[str, str]) -> None:
    assert_error(staff.get("/api/v1/exports/usage/", query, HTTP_ACCEPT="text/csv"), 400)


def test_unknown_urls_under_the_api_answer_in_its_format(staff: APIClient) -> None:
    assert_error(staff.get("/api/v1/nothing-here/"), 404, "unknown_url")
    assert_error(staff.get("/api/v1/accounts/0/"), 404, "not_found")
    assert_error(staff.get("/api/v1/accounts/99999999999999999999999/"), 404, "not_found")
