"""Driving the staff console in a real headless Chromium (Debian's chromium + chromium-driver).

Screenshots go to var/artifacts/screenshots/ (kept by CI as artefacts).
"""

import base64
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from django.contrib.auth.models import User
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.servers import ROOT

SCREENSHOTS = ROOT / "var" / "artifacts" / "screenshots"
PASSWORD = "correct horse battery staple"


@contextmanager
def chromium() -> Iterator[WebDriver]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert browser and driver_path, "install Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
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
    try:
        yield driver
    finally:
        driver.quit()


def login_page(browser: WebDriver, url: str) -> None:
    """The sign-in form of the console at `url`, signed out: cookies are deleted on the
    console's own origin (Selenium deletes only the current page's), then the form is loaded
    afresh."""
    browser.get(url + "/admin/login/")
    browser.delete_all_cookies()
    browser.get(url + "/admin/login/")
    if not browser.find_elements(By.NAME, "username"):
        shot(browser, "no-login-form")
        raise AssertionError(f"no sign-in form at {browser.current_url}: {browser.page_source}")


def sign_in(browser: WebDriver, url: str, user: User | str, token: str | None = None) -> None:
    login_page(browser, url)
    username = user if isinstance(user, str) else user.username
    browser.find_element(By.NAME, "username").send_keys(username)
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


def page_height(browser: WebDriver) -> int:
    """How tall the page is, in CSS pixels (what a reader scrolls through)."""
    return int(browser.execute_script("return document.body.scrollHeight"))


def canvas_heights(browser: WebDriver) -> dict[str, int]:
    """Each chart canvas's drawn height in CSS pixels, by the canvas's id."""
    heights = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('canvas')]"
        ".map(c => [c.id, Math.round(c.getBoundingClientRect().height)]));"
    )
    return {str(name): int(height) for name, height in heights.items()}


def chart_of(browser: WebDriver, canvas_id: str) -> dict[str, Any]:
    """What the Chart.js chart on a canvas draws: its datasets (label, y axis, data) and its
    scales (id, axis title, min, max, position), as the page's own Chart.getChart reads them;
    None where the canvas has no chart."""
    return cast(
        dict[str, Any],
        browser.execute_script(
            """
            const c = Chart.getChart(document.getElementById(arguments[0]));
            if (!c) return null;
            return {
              datasets: c.data.datasets.map(d => ({
                label: d.label, yAxisID: d.yAxisID || "y", xAxisID: d.xAxisID || "x",
                data: d.data,
              })),
              scales: Object.fromEntries(Object.values(c.scales).map(s => [s.id, {
                title: s.options.title && s.options.title.display ? s.options.title.text : null,
                min: s.min, max: s.max, position: s.position, axis: s.axis,
              }])),
            };
            """,
            canvas_id,
        ),
    )


def status_of(browser: WebDriver, path: str) -> dict[str, Any]:
    """The HTTP status of GET `path` with the browser's session, and whether it was redirected
    (e.g. to the sign-in page), read with the page's fetch."""
    return cast(
        dict[str, Any],
        browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {credentials: 'same-origin'})"
            ".then(r => done({status: r.status, redirected: r.redirected, url: r.url}))"
            ".catch(e => done({status: 0, redirected: false, url: String(e)}));",
            path,
        ),
    )


def shot_page(browser: WebDriver, name: str, max_height: int = 8000) -> None:
    """A screenshot of the whole page, below the window's fold too (up to `max_height` CSS
    pixels), through the DevTools protocol."""
    metrics = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    capture = browser.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": min(size["height"], max_height),
                "scale": 1,
            },
        },
    )
    (SCREENSHOTS / f"{name}.png").write_bytes(base64.b64decode(capture["data"]))
