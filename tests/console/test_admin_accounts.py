"""The console's account and key pages: an account's keys, its usage and spend this month,
and each key's spend this month on the key list, as money, in a bounded number of queries."""

import uuid
from datetime import timedelta
from decimal import Decimal as D
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from selenium.webdriver.common.by import By

from audit.models import AuditEntry
from billing.jobs import month_start
from customers.models import Account, ApiKey, LimitOverride
from customers.services import account_create, api_key_issue, tiers_ensure_defaults
from tests.billing.factories import MONTH, BookSpec, PriceSpec, book_create, usage, usage_write
from tests.support.browser import PASSWORD, chromium, shot, sign_in
from tests.support.servers import Server
from tests.support.tenants import MODEL

# Each test but the browser's runs in a transaction rolled back after it; the browser's
# writes for the server it drives to read (live_db).
db = pytest.mark.django_db

KEYS = reverse("admin:customers_apikey_changelist")


@pytest.fixture
def client() -> Client:
    user = User.objects.create_superuser("root", "root@example.com", "a long passphrase")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def priced() -> None:
    """premium/llama at $2 in, $8 out per million tokens and a cent a request, since long ago."""
    book_create(
        BookSpec(MONTH, [PriceSpec("premium", "llama", D(2), D(1), D(8), fee=D("0.01"))]),
        currency="USD",
    )


def _account(name: str) -> Account:
    tiers_ensure_defaults()
    return account_create(name=name, tier_slug="premium")


def _used(key: ApiKey, *, prompt: int, completion: int, ago_days: int = 0) -> None:
    """A request of `key` this month (or `ago_days` before this month began)."""
    at = month_start(timezone.now()) + timedelta(seconds=1) - timedelta(days=ago_days)
    usage_write(
        [
            usage(
                at,
                account_id=key.account_id,
                api_key_id=key.pk,
                prompt=prompt,
                completion=completion,
            )
        ]
    )


def _page(account: Account) -> str:
    return reverse("admin:customers_account_change", args=[account.pk])


@db
def test_an_accounts_page_shows_its_keys_usage_and_spend_this_month(
    client: Client, priced: None
) -> None:
    acme = _account("Acme Robotics")
    production = api_key_issue(account=acme, name="production").api_key
    batch = api_key_issue(account=acme, name="batch").api_key
    unused = api_key_issue(account=acme, name="spare").api_key
    # $2 + $4 + $0.01 a request; $0.50 + $0.01.
    _used(production, prompt=1_000_000, completion=500_000)
    _used(production, prompt=1_000_000, completion=500_000)
    _used(batch, prompt=250_000, completion=0)
    # Not this month's, nor this account's.
    _used(production, prompt=9_000_000, completion=0, ago_days=3)
    _used(api_key_issue(account=_account("Globex"), name="x").api_key, prompt=9, completion=9)

    response = client.get(_page(acme))
    assert response.status_code == 200
    page = response.content.decode()
    for key in (production, batch, unused):
        assert f"tf_{key.key_id}_…" in page
        assert reverse("admin:customers_apikey_change", args=[key.pk]) in page
    assert "production" in page and "batch" in page and "spare" in page
    # The month: 3 requests, 3,250,000 tokens, $12.53, the exact amount on hover.
    assert '<div class="readonly">3</div>' in page
    assert '<div class="readonly">3,250,000</div>' in page
    assert ">$12.53</span>" in page
    assert 'title="12.530000000000 USD"' in page
    # Per key, in the keys table.
    assert ">$12.02</span>" in page
    assert ">$0.51</span>" in page
    assert ">$0.00</span>" in page
    # The keys are read here, not edited: no form for them on the account's page.
    assert "api_keys-TOTAL_FORMS" not in page


@db
def test_an_account_without_keys_or_usage_says_so(client: Client, priced: None) -> None:
    page = client.get(_page(_account("Initech"))).content.decode()
    assert "No keys: issue one on the API keys page." in page
    assert ">$0.00</span>" in page


@db
def test_the_account_form_still_saves_and_is_audited(client: Client) -> None:
    acme = _account("Acme Robotics")
    response = client.post(
        _page(acme),
        {
            "name": "Acme Robotics Inc",
            "status": acme.status,
            "tier": acme.tier_id,
            "billing_mode": acme.billing_mode,
            "stripe_customer_id": "",
            "limits-TOTAL_FORMS": "0",
            "limits-INITIAL_FORMS": "0",
            "limits-MIN_NUM_FORMS": "0",
            "limits-MAX_NUM_FORMS": "1",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    acme.refresh_from_db()
    assert acme.name == "Acme Robotics Inc"
    entry = AuditEntry.objects.filter(object_type="customers.account", action="update").get()
    assert entry.after is not None and entry.after["name"] == "Acme Robotics Inc"
    assert not LimitOverride.objects.filter(account=acme).exists()


@db
def test_the_key_list_shows_each_keys_spend_this_month_in_one_query(
    client: Client, priced: None, django_assert_max_num_queries: Any
) -> None:
    acme = _account("Acme Robotics")
    production = api_key_issue(account=acme, name="production").api_key
    _used(production, prompt=1_000_000, completion=500_000)
    with CaptureQueriesContext(connection) as few:
        response = client.get(KEYS)
    page = response.content.decode()
    assert "spend this month" in page.lower()
    assert ">$6.01</span>" in page

    for n in range(20):
        key = api_key_issue(account=_account(f"Account {n}"), name=f"key {n}").api_key
        _used(key, prompt=250_000 * (n + 1), completion=0)
    # Session, user, devices, counts, the page, the spend, the filters: not one per row.
    assert len(few.captured_queries) <= 12
    with django_assert_max_num_queries(len(few.captured_queries)):
        page = client.get(KEYS).content.decode()
    assert ">$6.01</span>" in page
    assert ">$0.51</span>" in page  # 250,000 tokens in
    assert ">$10.01</span>" in page  # 5,000,000 tokens in (the 20th key)
    assert "Acme Robotics" in page


@db
def test_the_account_page_reads_a_bounded_number_of_queries(
    client: Client, priced: None, django_assert_max_num_queries: Any
) -> None:
    acme = _account("Acme Robotics")
    first = api_key_issue(account=acme, name="k0").api_key
    _used(first, prompt=1000, completion=10)
    with CaptureQueriesContext(connection) as few:
        assert client.get(_page(acme)).status_code == 200
    for n in range(1, 15):
        _used(api_key_issue(account=acme, name=f"k{n}").api_key, prompt=1000, completion=10)
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert client.get(_page(acme)).status_code == 200


def test_staff_read_an_accounts_month_and_find_its_request_in_a_browser(
    live_db: None, gateway: Server
) -> None:
    """The pages as staff see them (screenshots account-month, keys-spend and
    usage-search-by-request-id in var/artifacts/screenshots/)."""
    staff = User.objects.create_user(
        username=f"staff-{uuid.uuid4().hex[:6]}",
        password=PASSWORD,
        is_staff=True,
        is_superuser=True,
    )
    account = _account(f"Acme {uuid.uuid4().hex[:6]}")
    key = api_key_issue(account=account, name="production").api_key
    record = usage(
        month_start(timezone.now()) + timedelta(seconds=1),
        account_id=account.pk,
        api_key_id=key.pk,
        model=MODEL,
    )
    usage_write([record])
    with chromium() as browser:
        sign_in(browser, gateway.url, staff)
        browser.get(gateway.url + _page(account))
        shot(browser, "account-month")
        table = browser.find_element(By.CSS_SELECTOR, "table.account-keys")
        assert f"tf_{key.key_id}_…" in table.text and "production" in table.text
        assert "$" in browser.find_element(By.CSS_SELECTOR, ".field-spend_this_month").text

        browser.get(gateway.url + KEYS + f"?q={key.key_id}")
        shot(browser, "keys-spend")
        assert "$" in browser.find_element(By.CSS_SELECTOR, "td.field-spend_this_month").text

        header = f"req_{record['request_id'].hex}"
        browser.get(gateway.url + reverse("admin:metering_usagerecord_changelist") + f"?q={header}")
        shot(browser, "usage-search-by-request-id")
        rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
        assert len(rows) == 1 and header in rows[0].text and account.name in rows[0].text
