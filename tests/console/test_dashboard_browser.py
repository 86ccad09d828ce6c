"""The staff dashboard (/admin/dashboard/) in a real headless Chromium: drawn from real
traffic, holding still while it refreshes, one axis per unit, empty charts that say why, and
the last update in the viewer's time zone.

Each test leaves a screenshot in var/artifacts/screenshots/ (tests/support/browser.py).
"""

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import openai
import pytest
from django.contrib.auth.models import User
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.browser import (
    PASSWORD,
    canvas_heights,
    chart_of,
    chromium,
    page_height,
    shot,
    sign_in,
)
from tests.support.ledger import drain
from tests.support.servers import Server
from tests.support.tenants import MODEL, Tenant

# The viewer's time zone in these tests: half an hour off UTC, so that even the minutes of a
# time differ between UTC and the viewer's.
VIEWER_ZONE = "Asia/Kolkata"
CHART_HEIGHT = 240  # console/static/console/dashboard.css, .tf-chart


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": VIEWER_ZONE})
        yield driver


@pytest.fixture
def staff(live_db: None) -> User:
    return User.objects.create_user(
        username=f"staff-{uuid.uuid4().hex[:6]}",
        password=PASSWORD,
        is_staff=True,
        is_superuser=True,
    )


def _send(gateway: Server, tenant: Tenant, count: int, *, streamed: int = 0) -> None:
    api = openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)
    for n in range(count):
        # Streamed answers have a time to first token; the TTFT chart draws those.
        answer = api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=16,
            stream=n < streamed,
        )
        if n < streamed:
            list(answer)
    drain()


def _open_dashboard(browser: WebDriver, gateway: Server, staff: User) -> None:
    sign_in(browser, gateway.url, staff)
    browser.get(gateway.url + "/admin/dashboard/")
    # Drawn once the first figures have come: the last update is then a <time>.
    WebDriverWait(browser, 15).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#tf-updated time"))


def _points(browser: WebDriver, canvas_id: str) -> float:
    chart = chart_of(browser, canvas_id)
    return sum(v or 0 for d in chart["datasets"] for v in d["data"]) if chart else 0.0


def _empty_text(browser: WebDriver, canvas_id: str) -> str:
    """The empty-state line over a chart, as a reader sees it ('' when hidden)."""
    return str(
        browser.execute_script(
            "const p = document.getElementById(arguments[0]).parentElement"
            ".querySelector('.tf-empty');"
            "return p && !p.hidden && p.offsetHeight > 0 ? p.innerText : '';",
            canvas_id,
        )
    )


def test_the_dashboard_draws_charts_from_real_traffic(
    browser: WebDriver, gateway: Server, staff: User, tenant: Tenant
) -> None:
    _send(gateway, tenant, 5, streamed=2)
    _open_dashboard(browser, gateway, staff)
    WebDriverWait(browser, 10).until(lambda b: _points(b, "chart-traffic") > 0)
    assert _points(browser, "chart-top") > 0  # this tenant's tokens
    assert _points(browser, "chart-ttft") > 0
    assert _empty_text(browser, "chart-traffic") == ""
    assert _empty_text(browser, "chart-ttft") == ""
    shot(browser, "dashboard")


def test_the_dashboard_holds_still_while_it_refreshes(
    browser: WebDriver, gateway: Server, staff: User, tenant: Tenant
) -> None:
    _send(gateway, tenant, 3, streamed=1)
    _open_dashboard(browser, gateway, staff)
    WebDriverWait(browser, 10).until(lambda b: _points(b, "chart-traffic") > 0)
    start_page, start_charts = page_height(browser), canvas_heights(browser)
    assert len(start_charts) == 9
    assert set(start_charts.values()) == {CHART_HEIGHT}, start_charts

    first_update = browser.find_element(By.CSS_SELECTOR, "#tf-updated time").get_attribute(
        "datetime"
    )
    pages = [start_page]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _send(gateway, tenant, 1)  # new figures at every refresh
        time.sleep(5)
        pages.append(page_height(browser))
        assert canvas_heights(browser) == start_charts, f"after {len(pages) - 1} refreshes"
    last_update = browser.find_element(By.CSS_SELECTOR, "#tf-updated time").get_attribute(
        "datetime"
    )
    assert last_update != first_update  # it did refresh meanwhile
    # A table row more (a tier that has its first usage of the month) is all that may change.
    assert max(pages) - start_page < 60, pages
    shot(browser, "dashboard-after-30s")


def test_each_unit_has_its_own_axis(
    browser: WebDriver, gateway: Server, staff: User, tenant: Tenant
) -> None:
    _send(gateway, tenant, 4, streamed=2)
    _open_dashboard(browser, gateway, staff)
    WebDriverWait(browser, 10).until(lambda b: _points(b, "chart-traffic") > 0)

    traffic = chart_of(browser, "chart-traffic")
    by_label = {d["label"]: d for d in traffic["datasets"]}
    tokens, requests = by_label["tokens/s"], by_label["requests/s"]
    assert requests["yAxisID"] != tokens["yAxisID"]
    assert traffic["scales"][tokens["yAxisID"]]["title"] == "tokens/s"
    requests_axis = traffic["scales"][requests["yAxisID"]]
    assert requests_axis["title"] == "requests/s"
    assert {requests_axis["position"], traffic["scales"][tokens["yAxisID"]]["position"]} == {
        "left",
        "right",
    }
    # On its own axis the requests line is drawn to its own scale, not flat along the bottom.
    assert max(requests["data"]) > 0.4 * requests_axis["max"]

    ttft = chart_of(browser, "chart-ttft")
    assert {d["yAxisID"] for d in ttft["datasets"]} == {"y"}
    assert ttft["scales"]["y"]["title"] == "ms"

    power = chart_of(browser, "chart-power")
    power_axes = {d["label"]: d["yAxisID"] for d in power["datasets"]}
    assert power_axes["power (W)"] != power_axes["tokens per watt"]
    shot(browser, "dashboard-axes")


def test_an_empty_chart_says_why_and_the_last_update_is_the_viewers_time(
    browser: WebDriver, gateway: Server, staff: User, tenant: Tenant
) -> None:
    _send(gateway, tenant, 1)
    _open_dashboard(browser, gateway, staff)

    # Every request has been answered: nothing waits in any queue.
    queues = _empty_text(browser, "chart-queues")
    assert queues.startswith("No request is waiting"), queues
    assert "capacity" in queues
    assert _empty_text(browser, "chart-traffic") == ""  # this chart has something to draw

    updated = browser.find_element(By.CSS_SELECTOR, "#tf-updated time")
    instant = datetime.fromisoformat(str(updated.get_attribute("datetime")))
    assert (
        instant.utcoffset() is not None and abs((datetime.now(UTC) - instant).total_seconds()) < 30
    )
    assert instant.isoformat() in str(updated.get_attribute("title"))
    local = instant.astimezone(ZoneInfo(VIEWER_ZONE))
    assert f"{local:%M:%S}" in updated.text, updated.text  # 30 minutes off UTC's
    assert instant.isoformat() not in browser.find_element(By.ID, "tf-updated").text
    shot(browser, "dashboard-empty-states")
