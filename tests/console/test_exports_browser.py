"""The exports page in a real headless Chromium: from the usage records list to a file on
disk, with screenshots of both pages (var/artifacts/screenshots/)."""

import csv
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.console.api_support import tenant_create, usage_create
from tests.support.browser import PASSWORD, chromium, shot, sign_in
from tests.support.servers import Server
from tests.support.waiting import wait_until


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def test_staff_download_an_accounts_usage_from_the_console(
    browser: WebDriver, gateway: Server, tmp_path: Path
) -> None:
    tenant = tenant_create()
    for day, prompt in ((4, 31), (5, 32)):
        usage_create(tenant.account, at=datetime(2030, 3, day, tzinfo=UTC), prompt=prompt)
    staff = User.objects.create_user(
        f"staff-{uuid.uuid4().hex[:6]}", password=PASSWORD, is_staff=True, is_superuser=True
    )
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)}
    )
    sign_in(browser, gateway.url, staff)
    browser.get(f"{gateway.url}/admin/metering/usagerecord/")
    shot(browser, "usage-records-export-link")

    browser.find_element(By.ID, "export-usage").click()
    for field, value in (("id_first_day", "2030-03-01"), ("id_last_day", "2030-03-31")):
        # A date input's typing order follows the browser's locale; its value does not.
        browser.execute_script(
            "arguments[0].value = arguments[1]", browser.find_element(By.ID, field), value
        )
    Select(browser.find_element(By.ID, "id_account")).select_by_visible_text(tenant.account.name)
    shot(browser, "exports-page")
    browser.find_element(By.CSS_SELECTOR, "button[value=csv]").click()

    files = wait_until(
        lambda: [p for p in tmp_path.iterdir() if p.suffix == ".csv"],
        what="the CSV downloaded",
        timeout=15,
    )
    rows = list(csv.DictReader(io.StringIO(files[0].read_text())))
    assert files[0].name == "usage-20300301T000000-20300401T000000.csv"
    assert [int(row["prompt_tokens"]) for row in rows] == [31, 32]
