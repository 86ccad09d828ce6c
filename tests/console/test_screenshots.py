"""A screenshot of every console page staff use, as a signed-in staff user sees it, kept as a
test artefact in var/artifacts/screenshots/console-*.png (whole pages, below the fold too).

One browser session visits them all; each page must answer 200 without an error or a detour
to the sign-in page. Every page is visited and shot before the test says which failed.
"""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import openai
import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from billing.models import CostModel
from catalogue.services import price_book_create
from tests.billing.factories import invoice_with_line
from tests.support.browser import PASSWORD, chromium, shot_page, sign_in, signed_in, status_of
from tests.support.ledger import drain
from tests.support.servers import Server
from tests.support.tenants import MODEL, Tenant, tenant_create

# A currency nobody bills in, for a draft price book that changes no one's prices.
BOOK_CURRENCY = "XTS"


@pytest.fixture
def staff(live_db: None) -> User:
    return User.objects.create_user(
        username=f"staff-{uuid.uuid4().hex[:6]}",
        password=PASSWORD,
        is_staff=True,
        is_superuser=True,
    )


def _pages(tenant: Tenant, staff: User) -> list[tuple[str, str]]:
    """(screenshot name, path) of each page, with something on it to see."""
    start = datetime(2026, 10, 1, tzinfo=UTC)
    invoice = invoice_with_line(tenant.account, start=start, amount=Decimal("13.406"), model=MODEL)
    now = timezone.now()
    book = price_book_create(
        actor=staff,
        data={
            "name": f"draft {uuid.uuid4().hex[:6]}",
            "currency": BOOK_CURRENCY,
            "effective_from": now + timedelta(days=30),
        },
        prices=[
            {
                "tier": "premium",
                "model": MODEL,
                "input_per_million": Decimal("0.50"),
                "cached_input_per_million": Decimal("0.25"),
                "output_per_million": Decimal("1.50"),
            }
        ],
    )
    CostModel.objects.get_or_create(
        backend="screenshot-rack",
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        defaults={
            "electricity_per_kwh": Decimal("0.12"),
            "pue": Decimal("1.3"),
            "gpu_cost_per_hour": Decimal("2.40"),
        },
    )
    return [
        ("dashboard", "/admin/dashboard/"),
        ("accounts", "/admin/customers/account/"),
        ("account", f"/admin/customers/account/{tenant.account.pk}/change/"),
        ("keys", "/admin/customers/apikey/"),
        ("usage-records", "/admin/metering/usagerecord/"),
        ("invoices", "/admin/billing/invoice/"),
        ("invoice", f"/admin/billing/invoice/{invoice.pk}/change/"),
        ("price-books", "/admin/catalogue/pricebook/"),
        ("price-book", f"/admin/catalogue/pricebook/{book.pk}/change/"),
        ("cost-models", "/admin/billing/costmodel/"),
        ("audit-log", "/admin/audit/auditentry/"),
        ("finance-report", f"/billing/report/{now:%Y-%m}.html"),
        ("quarantine", "/admin/metering/quarantinedevent/"),
        ("exports", "/admin/exports/"),
        ("price-book-preview", f"/admin/catalogue/pricebook/{book.pk}/preview/"),
    ]


def test_every_console_page_answers_and_is_kept_as_a_screenshot(
    gateway: Server, staff: User
) -> None:
    tenant = tenant_create("premium")
    api = openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)
    for streamed in (True, False):
        answer = api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=16,
            stream=streamed,
        )
        if streamed:
            list(answer)
    drain()
    pages = _pages(tenant, staff)

    failures: list[str] = []
    with chromium() as browser:
        sign_in(browser, gateway.url, staff)
        assert signed_in(browser)
        for name, path in pages:
            reply = status_of(browser, gateway.url + path)
            browser.get(gateway.url + path)
            _settle(browser, name)
            shot_page(browser, f"console-{name}")
            title = browser.title
            if reply["status"] != 200 or reply["redirected"]:
                failures.append(f"{path}: HTTP {reply['status']}, ended at {reply['url']}")
            elif "error" in title.lower() or "not found" in title.lower():
                failures.append(f"{path}: the page is titled {title!r}")
            elif name != "finance-report" and not signed_in(browser):
                failures.append(f"{path}: not a console page ({title!r})")
    assert not failures, "\n".join(failures)


def _settle(browser: WebDriver, name: str) -> None:
    """Wait until the page shows what it is for."""
    WebDriverWait(browser, 15).until(
        lambda b: b.execute_script("return document.readyState") == "complete"
    )
    if name == "dashboard":
        # Its figures come from a script after the page loads.
        WebDriverWait(browser, 15).until(
            lambda b: b.find_elements(By.CSS_SELECTOR, "#tf-updated time")
        )
