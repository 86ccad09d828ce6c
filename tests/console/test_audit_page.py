"""The audit log's pages: who, what, when and on which object in the list; on an entry, the
fields that changed, old and new, in a table, with the whole before and after one click away."""

import uuid
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from audit.models import AuditEntry
from customers.models import Account
from customers.services import (
    account_create,
    account_status_set,
    account_update,
    tiers_ensure_defaults,
)
from tests.support.browser import PASSWORD, chromium, shot, sign_in
from tests.support.servers import Server


class _Tables(HTMLParser):
    """The rows (cells' text) of the table with class `audit-changes`, and the `<details>`
    element's summary."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.summaries: list[str] = []
        self._in_table = self._in_summary = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("class", "audit-changes") in attrs:
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("th", "td"):
            self._cell = []
        elif tag == "summary":
            self._in_summary = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag in ("th", "td") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "summary":
            self._in_summary = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_summary:
            self.summaries.append(data.strip())


@pytest.fixture
def staff(db: None) -> tuple[User, Client]:
    user = User.objects.create_superuser("root", "root@example.com", "a long passphrase")
    client = Client()
    client.force_login(user)
    return user, client


@pytest.fixture
def account(db: None) -> Account:
    tiers_ensure_defaults()
    return account_create(name="umbrella", tier_slug="free")


def _entry_page(client: Client, entry: AuditEntry) -> _Tables:
    response = client.get(reverse("admin:audit_auditentry_change", args=[entry.pk]))
    assert response.status_code == 200
    page = _Tables()
    page.feed(response.content.decode())
    return page


def test_an_entry_shows_only_the_fields_that_changed_old_and_new(
    staff: tuple[User, Client], account: Account
) -> None:
    user, client = staff
    account_status_set(account=account, status="suspended", actor=user)
    entry = AuditEntry.objects.get(action="suspend", object_id=account.pk)

    page = _entry_page(client, entry)

    assert page.rows == [["Field", "Before", "", "After"], ["status", "active", "→", "suspended"]]
    assert page.summaries == ["Show the full before and after"]


def test_nested_fields_are_named_by_their_path(
    staff: tuple[User, Client], account: Account
) -> None:
    user, client = staff
    account_update(
        actor=user, account=account, data={}, limits={"requests_per_minute": 100}, request=None
    )
    entry = AuditEntry.objects.get(action="update", object_id=account.pk)

    page = _entry_page(client, entry)

    assert ["limits.requests_per_minute", "—", "→", "100"] in page.rows
    assert all(row[0] != "name" for row in page.rows)


def test_the_full_record_is_on_the_page_behind_a_click(
    staff: tuple[User, Client], account: Account
) -> None:
    _, client = staff
    entry = AuditEntry.objects.get(
        action="create", object_type="customers.account", object_id=account.pk
    )

    response = client.get(reverse("admin:audit_auditentry_change", args=[entry.pk]))

    html = response.content.decode()
    details = html[html.index("<details") : html.index("</details>")]
    assert "&quot;name&quot;: &quot;umbrella&quot;" in details
    assert "<pre>—</pre>" in details  # nothing before a creation


def test_the_list_shows_who_what_when_and_the_object(
    staff: tuple[User, Client], account: Account
) -> None:
    user, client = staff
    account_status_set(account=account, status="suspended", actor=user)

    changelist = reverse("admin:audit_auditentry_changelist")
    response = client.get(f"{changelist}?action=suspend&q={account.pk}")

    html = response.content.decode()
    assert response.status_code == 200
    for heading in ("At", "Actor", "Action", "Object", "What changed"):
        assert f">{heading}</a>" in html or f"<span>{heading}</span>" in html, heading
    row = html[html.index('<td class="field-actor">') :]
    row = row[: row.index("</tr>")]
    assert ">root<" in row
    assert ">suspend<" in row
    assert f">customers.account {account.pk}<" in row
    assert '<td class="field-changed_fields">status</td>' in row


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def test_in_a_browser_the_full_record_opens_with_one_click(
    browser: WebDriver, gateway: Server
) -> None:
    staff = User.objects.create_user(
        f"staff-{uuid.uuid4().hex[:6]}", password=PASSWORD, is_staff=True, is_superuser=True
    )
    account = account_create(name=f"acct-{uuid.uuid4().hex[:8]}", tier_slug="interactive")
    account_update(actor=staff, account=account, data={}, limits={"requests_per_minute": 100})
    account_status_set(account=account, status="suspended", actor=staff)
    entry = AuditEntry.objects.get(action="update", object_id=account.pk)
    sign_in(browser, gateway.url, staff)

    browser.get(f"{gateway.url}/admin/audit/auditentry/?q={account.pk}")
    shot(browser, "audit-log")
    browser.get(f"{gateway.url}/admin/audit/auditentry/{entry.pk}/change/")
    table = browser.find_element(By.CSS_SELECTOR, "table.audit-changes")
    assert "limits.requests_per_minute" in table.text
    record = browser.find_element(By.CSS_SELECTOR, "details.audit-full-record pre")
    assert not record.is_displayed()
    browser.find_element(By.CSS_SELECTOR, "details.audit-full-record summary").click()
    assert record.is_displayed()
    shot(browser, "audit-entry")
