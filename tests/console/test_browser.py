"""The staff console in a real headless Chromium (Debian's chromium + chromium-driver).

Each test leaves a screenshot in var/artifacts/screenshots/ (tests/support/browser.py). The
dashboard has its own: test_dashboard_browser.py; every page staff use: test_screenshots.py.
"""

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import openai
import pytest
from django.contrib.auth.models import User
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.billing.factories import invoice_with_line
from tests.support.browser import (
    PASSWORD,
    chromium,
    login_page,
    shot,
    sign_in,
    signed_in,
    submit_and_wait,
)
from tests.support.servers import Server
from tests.support.tenants import MODEL, tenant_create
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def staff(live_db: None) -> User:
    return User.objects.create_user(
        username=f"staff-{uuid.uuid4().hex[:6]}",
        password=PASSWORD,
        is_staff=True,
        is_superuser=True,
    )


def test_staff_sign_in_with_and_without_two_factor(
    browser: WebDriver, gateway: Server, staff: User
) -> None:
    sign_in(browser, gateway.url, staff)
    assert signed_in(browser)
    shot(browser, "signed-in")

    device = TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    sign_in(browser, gateway.url, staff)  # the password alone is no longer enough
    assert not signed_in(browser)
    assert browser.find_elements(By.CSS_SELECTOR, ".errornote, .errorlist")
    sign_in(browser, gateway.url, staff, token=f"{totp(device.bin_key):06d}")
    assert signed_in(browser)
    shot(browser, "signed-in-two-factor")


def test_repeated_failed_sign_ins_are_throttled(
    browser: WebDriver, gateway: Server, staff: User
) -> None:
    for _ in range(5):
        login_page(browser, gateway.url)
        browser.find_element(By.NAME, "username").send_keys(staff.username)
        browser.find_element(By.NAME, "password").send_keys("wrong")
        submit_and_wait(browser)
    sign_in(browser, gateway.url, staff)  # now even the right password is refused for a while
    assert not signed_in(browser)
    assert "locked" in browser.page_source.lower()
    shot(browser, "throttled")


def test_an_issued_key_is_shown_once_and_revoking_it_makes_the_gateway_refuse_it(
    browser: WebDriver, gateway: Server, staff: User
) -> None:
    tenant = tenant_create("interactive")
    sign_in(browser, gateway.url, staff)
    browser.get(gateway.url + "/admin/customers/apikey/add/")
    Select(browser.find_element(By.NAME, "account")).select_by_visible_text(tenant.account.name)
    browser.find_element(By.NAME, "name").send_keys("ci")
    submit_and_wait(browser, "_save")
    secret = browser.find_element(By.ID, "issued-key").text
    assert re.fullmatch(r"tf_[0-9a-f]{12}_\S+", secret)
    shot(browser, "key-issued")

    api = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    assert [model.id for model in api.models.list()] == [MODEL]

    key_id = secret.split("_")[1]
    browser.get(gateway.url + "/admin/customers/apikey/")
    assert key_id in browser.page_source and secret not in browser.page_source
    browser.refresh()
    assert secret not in browser.page_source  # never again

    row = browser.find_element(By.XPATH, f"//tr[contains(., '{key_id}')]")
    row.find_element(By.NAME, "_selected_action").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("revoke_keys")
    submit_and_wait(browser, "index")
    assert "revoked" in browser.page_source.lower()

    def refused() -> bool:
        try:
            api.models.list()
        except openai.AuthenticationError:
            return True
        return False

    wait_until(refused, timeout=5, interval=0.2, what="the gateway to refuse the revoked key")


def test_an_invoice_page_shows_its_lines(browser: WebDriver, gateway: Server, staff: User) -> None:
    tenant = tenant_create("premium")
    start = datetime(2026, 10, 1, tzinfo=UTC)
    invoice = invoice_with_line(tenant.account, start=start, amount=Decimal("12.345"), model=MODEL)
    sign_in(browser, gateway.url, staff)
    browser.get(gateway.url + f"/admin/billing/invoice/{invoice.pk}/change/")
    page = browser.page_source
    assert tenant.account.name in page and "1234500" in page.replace(",", "")
    shot(browser, "invoice")
