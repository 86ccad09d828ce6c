"""The staff console in a real headless Chromium (Debian's chromium + chromium-driver).

Each test leaves a screenshot in var/artifacts/screenshots/ (kept by CI as artefacts).
"""

import re
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import openai
import pytest
from django.contrib.auth.models import User
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from billing.models import Invoice, InvoiceLine
from tests.conftest import MODEL, Tenant, drain, tenant_create
from tests.servers import ROOT, Server

SCREENSHOTS = ROOT / "var" / "artifacts" / "screenshots"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "install Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-extensions",
        "--window-size=1400,1100",
    ):
        options.add_argument(argument)
    # No password manager: its prompts and leak checks have no place in a test browser.
    options.add_experimental_option(
        "prefs",
        {
            "credentials_enable_service": False,
            "profile.password_manager_enabled": False,
            "profile.password_manager_leak_detection": False,
        },
    )
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(5)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture
def staff(live_db: None) -> User:
    return User.objects.create_user(
        username=f"staff-{uuid.uuid4().hex[:6]}",
        password=PASSWORD,
        is_staff=True,
        is_superuser=True,
    )


def login_page(browser: WebDriver, gateway: Server) -> None:
    """The sign-in form, signed out: cookies are deleted on the gateway's own origin (Selenium
    deletes only the current page's), then the form is loaded afresh."""
    browser.get(gateway.url + "/admin/login/")
    browser.delete_all_cookies()
    browser.get(gateway.url + "/admin/login/")
    if not browser.find_elements(By.NAME, "username"):
        shot(browser, "no-login-form")
        raise AssertionError(f"no sign-in form at {browser.current_url}: {browser.page_source}")


def sign_in(browser: WebDriver, gateway: Server, user: User, token: str | None = None) -> None:
    login_page(browser, gateway)
    browser.find_element(By.NAME, "username").send_keys(user.username)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    if token is not None:
        browser.find_element(By.NAME, "otp_token").send_keys(token)
    submit_and_wait(browser)


def _detached(element: WebElement) -> bool:
    """Whether the page holding `element` has been replaced. While it is being replaced,
    chromedriver answers either "stale element" or an inspector error about the node."""
    try:
        element.is_enabled()
    except WebDriverException:  # StaleElementReferenceException is one
        return True
    return False


def submit_and_wait(browser: WebDriver, name: str | None = None) -> None:
    """Submit the form (by its button `name`, else its submit input) and wait for the
    answer's page: reading the page before it has arrived reads the old one, and a navigation
    started meanwhile cancels the form's (and a sign-in's session cookie with it)."""
    if name is None:
        submit = browser.find_element(By.CSS_SELECTOR, "input[type=submit]")
    else:
        submit = browser.find_element(By.NAME, name)
    submit.click()
    WebDriverWait(browser, 15).until(lambda _: _detached(submit))
    WebDriverWait(browser, 15).until(
        lambda b: b.execute_script("return document.readyState") == "complete"
    )


def signed_in(browser: WebDriver) -> bool:
    return bool(browser.find_elements(By.ID, "logout-form"))


def shot(browser: WebDriver, name: str) -> None:
    browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def test_staff_sign_in_with_and_without_two_factor(
    browser: WebDriver, gateway: Server, staff: User
) -> None:
    sign_in(browser, gateway, staff)
    assert signed_in(browser)
    shot(browser, "signed-in")

    device = TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    sign_in(browser, gateway, staff)  # the password alone is no longer enough
    assert not signed_in(browser)
    assert browser.find_elements(By.CSS_SELECTOR, ".errornote, .errorlist")
    sign_in(browser, gateway, staff, token=f"{totp(device.bin_key):06d}")
    assert signed_in(browser)
    shot(browser, "signed-in-two-factor")


def test_repeated_failed_sign_ins_are_throttled(
    browser: WebDriver, gateway: Server, staff: User
) -> None:
    for _ in range(5):
        login_page(browser, gateway)
        browser.find_element(By.NAME, "username").send_keys(staff.username)
        browser.find_element(By.NAME, "password").send_keys("wrong")
        submit_and_wait(browser)
    sign_in(browser, gateway, staff)  # now even the right password is refused for a while
    assert not signed_in(browser)
    assert "locked" in browser.page_source.lower()
    shot(browser, "throttled")


def test_the_dashboard_draws_charts_from_real_traffic(
    browser: WebDriver, gateway: Server, staff: User, tenant: Tenant
) -> None:
    api = openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)
    for n in range(5):
        # Streamed answers have a time to first token; the TTFT chart draws those.
        answer = api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=16, stream=n < 2
        )
        if n < 2:
            list(answer)  # type: ignore[call-overload]
    drain()
    sign_in(browser, gateway, staff)
    browser.get(gateway.url + "/admin/dashboard/")

    def points(chart: str) -> float:
        script = (
            "const c = Chart.getChart(arguments[0]);"
            "return c ? c.data.datasets.flatMap(d => d.data).reduce((a, b) => a + (b || 0), 0) : 0;"
        )
        return float(browser.execute_script(script, chart))

    WebDriverWait(browser, 10).until(lambda _: points("chart-traffic") > 0)
    assert points("chart-top") > 0  # this tenant's tokens
    assert points("chart-ttft") > 0
    shot(browser, "dashboard")


def test_an_issued_key_is_shown_once_and_revoking_it_makes_the_gateway_refuse_it(
    browser: WebDriver, gateway: Server, staff: User
) -> None:
    tenant = tenant_create("interactive")
    sign_in(browser, gateway, staff)
    browser.get(gateway.url + "/admin/gateway/apikey/add/")
    Select(browser.find_element(By.NAME, "account")).select_by_visible_text(tenant.account.name)
    browser.find_element(By.NAME, "name").send_keys("ci")
    submit_and_wait(browser, "_save")
    secret = browser.find_element(By.ID, "issued-key").text
    assert re.fullmatch(r"tf_[0-9a-f]{12}_\S+", secret)
    shot(browser, "key-issued")

    api = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    assert [model.id for model in api.models.list()] == [MODEL]

    key_id = secret.split("_")[1]
    browser.get(gateway.url + "/admin/gateway/apikey/")
    assert key_id in browser.page_source and secret not in browser.page_source
    browser.refresh()
    assert secret not in browser.page_source  # never again

    row = browser.find_element(By.XPATH, f"//tr[contains(., '{key_id}')]")
    row.find_element(By.NAME, "_selected_action").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("revoke_keys")
    submit_and_wait(browser, "index")
    assert "revoked" in browser.page_source.lower()
    deadline = time.monotonic() + 5
    while True:
        try:
            api.models.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "the gateway still accepts a revoked key"
        time.sleep(0.2)


def test_an_invoice_page_shows_its_lines(browser: WebDriver, gateway: Server, staff: User) -> None:
    tenant = tenant_create("premium")
    start = datetime(2026, 10, 1, tzinfo=UTC)
    invoice = Invoice.objects.create(
        account=tenant.account,
        period_start=start,
        period_end=start + timedelta(days=31),
        amount=Decimal("12.345"),
        total_minor=1235,
    )
    InvoiceLine.objects.create(
        invoice=invoice,
        item=InvoiceLine.Item.OUTPUT,
        tier="premium",
        model=MODEL,
        quantity=1_234_500,
        unit_price=Decimal("10"),
        amount=Decimal("12.345"),
        amount_minor=1235,
        usage_from=start,
        usage_to=start + timedelta(days=31),
    )
    sign_in(browser, gateway, staff)
    browser.get(gateway.url + f"/admin/billing/invoice/{invoice.pk}/change/")
    page = browser.page_source
    assert tenant.account.name in page and "1234500" in page.replace(",", "")
    shot(browser, "invoice")
