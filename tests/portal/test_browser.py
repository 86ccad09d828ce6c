"""The issue's "done when", in a real headless Chromium against a live gateway: staff invite a
new customer's owner, who accepts from the email, signs in, makes a project and a key, calls
the gateway with the official SDK, sees the call on the usage page within seconds and
downloads the month's invoice. Every portal page is shot on the way, as
var/artifacts/screenshots/portal-*.png."""

import re
import uuid
from collections.abc import Iterator
from typing import Any, cast

import openai
import pytest
from django.contrib.auth.models import User
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from customers.models import Member
from customers.services import account_create
from portal.models import SentMail
from tests.support.browser import (
    PASSWORD,
    chromium,
    shot_page,
    sign_in,
    status_of,
    submit_and_wait,
)
from tests.support.ledger import drain
from tests.support.members import member_add
from tests.support.servers import Server
from tests.support.tenants import MODEL
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def _fill(browser: WebDriver, values: dict[str, str]) -> None:
    for name, value in values.items():
        field = browser.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)


def _pdf_head(browser: WebDriver, path: str) -> dict[str, Any]:
    """GET `path` with the browser's session: its status, type, file name and first bytes."""
    return cast(
        dict[str, Any],
        browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {credentials: 'same-origin'}).then(async r => {"
            "  const bytes = new Uint8Array(await r.arrayBuffer());"
            "  done({status: r.status, type: r.headers.get('content-type'),"
            "        disposition: r.headers.get('content-disposition'),"
            "        head: String.fromCharCode(...bytes.slice(0, 5))});"
            "});",
            path,
        ),
    )


def test_a_new_customer_runs_themselves_from_invitation_to_invoice(
    browser: WebDriver, gateway: Server
) -> None:
    url = gateway.url
    email = f"owner-{uuid.uuid4().hex[:8]}@example.com"
    account = account_create(name=f"Acme {uuid.uuid4().hex[:6]}", tier_slug="premium")
    staff = User.objects.create_user(
        username=f"staff-{uuid.uuid4().hex[:6]}",
        password=PASSWORD,
        is_staff=True,
        is_superuser=True,
    )
    sign_in(browser, url, staff)
    browser.get(f"{url}/admin/customers/account/{account.pk}/invite-owner/")
    _fill(browser, {"email": email})
    shot_page(browser, "console-invite-owner")
    submit_and_wait(browser)
    assert f"Invitation sent to {email}" in browser.page_source
    # The console's Sent mail page shows it (a local instance keeps its mail).
    mail = SentMail.objects.get(to=email)
    browser.get(f"{url}/admin/portal/sentmail/{mail.pk}/change/")
    assert "/portal/invite/" in browser.page_source
    shot_page(browser, "console-sent-mail")
    link = re.search(r"http\S+/portal/invite/\S+/", mail.body)
    assert link is not None, mail.body

    browser.get(url + "/portal/login/")
    browser.delete_all_cookies()  # the staff session ends: the owner is someone else
    browser.get(link[0])
    shot_page(browser, "portal-invitation")
    _fill(browser, {"first_name": "Ada", "password1": PASSWORD, "password2": PASSWORD})
    submit_and_wait(browser)
    assert browser.current_url == url + "/portal/"

    browser.find_element(By.CSS_SELECTOR, "#logout-form button").click()
    wait_until(lambda: "/portal/login/" in browser.current_url, what="the sign-in page")
    shot_page(browser, "portal-login")
    _fill(browser, {"username": email, "password": PASSWORD})
    submit_and_wait(browser)
    assert account.name in browser.page_source

    browser.get(url + "/portal/projects/new/")
    _fill(browser, {"name": "Chatbot", "tokens_per_day": "1000000", "monthly_budget": "50"})
    shot_page(browser, "portal-project-form")
    submit_and_wait(browser)
    assert "Project Chatbot created" in browser.page_source
    shot_page(browser, "portal-projects")

    browser.get(url + "/portal/keys/new/")
    _fill(browser, {"name": "sdk"})
    Select(browser.find_element(By.NAME, "project")).select_by_visible_text("Chatbot")
    shot_page(browser, "portal-key-form")
    submit_and_wait(browser)
    secret = browser.find_element(By.ID, "new-key").text
    assert re.fullmatch(r"tf_[0-9a-f]{12}_\S+", secret)
    shot_page(browser, "portal-key-created")

    api = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
    raw = api.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello from the portal"}], max_tokens=16
    )
    request_ref = raw.headers["x-request-id"]
    answer = raw.parse()
    assert answer.usage is not None and answer.usage.completion_tokens > 0

    def on_the_usage_page() -> bool:
        drain()
        browser.get(url + "/portal/usage/")
        return request_ref in browser.page_source

    wait_until(on_the_usage_page, timeout=10, interval=0.5, what="the call on the usage page")
    row = browser.find_element(By.XPATH, f"//tr[contains(., '{request_ref}')]").text
    assert "Chatbot" in row and "sdk" in row and MODEL in row
    shot_page(browser, "portal-usage")

    browser.get(url + "/portal/")
    assert browser.find_element(By.ID, "requests-total").text == "1"
    shot_page(browser, "portal-dashboard")

    browser.get(url + "/portal/invoices/")
    shot_page(browser, "portal-invoices")
    pdf_url = str(browser.find_element(By.ID, "estimate-pdf").get_attribute("href"))
    pdf = _pdf_head(browser, pdf_url)
    assert (pdf["status"], pdf["type"], pdf["head"]) == (200, "application/pdf", "%PDF-")
    assert "attachment" in pdf["disposition"]
    browser.get(url + "/portal/invoices/current.html")
    shot_page(browser, "portal-invoice")

    member_add(account, Member.Role.DEVELOPER)
    for name, path in (
        ("keys", "/portal/keys/"),
        ("members", "/portal/members/"),
        ("member-invite", "/portal/members/invite/"),
        ("audit", "/portal/audit/"),
        ("profile", "/portal/profile/"),
        ("two-factor", "/portal/profile/two-factor/"),
        ("credits", "/portal/credits/"),
        ("webhooks", "/portal/webhooks/"),
        ("webhook-new", "/portal/webhooks/new/"),
    ):
        assert status_of(browser, path)["status"] == 200, path
        browser.get(url + path)
        shot_page(browser, f"portal-{name}")
