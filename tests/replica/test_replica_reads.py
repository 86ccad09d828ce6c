"""What staff see of a read replica (config/db_routing.py): pages, API reads, exports and the
finance report come from it, lag and all; a save shows on its own redirect, from the primary;
a replica that is down leaves the console working on the primary.

The replica's lag is made at will by pausing its replay: a row changed on the primary meanwhile
is old on the replica and new on the primary, so each page says which one it read."""

import time
from datetime import timedelta

import requests

from config.db_routing import PIN_COOKIE
from tests.replica.support import MODEL, ROLLED_UP_TO, STARTED_AT, Console
from tests.support.html_forms import form_values
from tests.support.postgres_pair import PostgresPair
from tests.support.waiting import wait_until

ACCOUNTS = "/admin/customers/account/"
PERIOD = f"{STARTED_AT:%Y-%m}"
EXPORT = (
    f"/api/v1/exports/usage/?from={STARTED_AT:%Y-%m-01T00:00:00Z}"
    f"&to={STARTED_AT + timedelta(days=30):%Y-%m-01T00:00:00Z}"
)


def account_name(console: Console) -> str:
    reply = console.api(f"/api/v1/accounts/{console.account_id}/")
    reply.raise_for_status()
    return str(reply.json()["name"])


def listed(page: requests.Response, name: str) -> bool:
    """Whether the console's account list shows an account of exactly this name."""
    page.raise_for_status()
    return f">{name}</a>" in page.text


def account_save(staff: requests.Session, console: Console, name: str) -> requests.Response:
    """The account's change form, saved with a new name; the page its redirect lands on."""
    change = f"{console.url}{ACCOUNTS}{console.account_id}/change/"
    form = form_values(staff.get(change, timeout=30).text, "account_form")
    values = [(field, name if field == "name" else value) for field, value in form]
    return staff.post(change, data=values, timeout=30)


def name_on_primary(pair: PostgresPair, console: Console) -> str:
    query = "SELECT name FROM customers_account WHERE id = %s"
    return str(pair.sql("primary", query, console.account_id, database="tf")[0][0])


def test_a_lagging_replica_shows_the_old_row_and_a_save_shows_the_new_one_on_its_redirect(
    console: Console, pair: PostgresPair
) -> None:
    reader, writer = console.staff(), console.staff()
    old = name_on_primary(pair, console)
    new = f"{old} renamed"
    with pair.replay_paused():
        saved = account_save(writer, console, new)
        # The save's redirect, to the list, reads the primary: the client is pinned to it.
        assert saved.history and saved.history[0].status_code == 302
        assert saved.url == console.url + ACCOUNTS
        assert listed(saved, new)
        assert PIN_COOKIE in writer.cookies
        assert listed(writer.get(console.url + ACCOUNTS, timeout=30), new)
        # Everyone else reads the replica, which has not replayed the save.
        assert listed(reader.get(console.url + ACCOUNTS, timeout=30), old)
        assert account_name(console) == old
    wait_until(lambda: account_name(console) == new, what="the API to read the replayed save")
    assert listed(reader.get(console.url + ACCOUNTS, timeout=30), new)


def test_the_pin_of_a_save_is_released_once_the_replica_has_replayed_it(
    console: Console, pair: PostgresPair
) -> None:
    writer = console.staff()
    name = name_on_primary(pair, console)
    with pair.replay_paused():
        account_save(writer, console, f"{name} again").raise_for_status()
        assert PIN_COOKIE in writer.cookies
        time.sleep(3)  # the scenario: longer than the replica's probe interval, still paused
        writer.get(console.url + ACCOUNTS, timeout=30).raise_for_status()
        assert PIN_COOKIE in writer.cookies

    def released() -> bool:
        writer.get(console.url + ACCOUNTS, timeout=30).raise_for_status()
        return PIN_COOKIE not in writer.cookies

    wait_until(released, what="the pin to be released once replayed", timeout=15, interval=0.2)


def test_a_page_read_from_a_lagging_replica_says_how_far_behind_it_is(
    console: Console, pair: PostgresPair
) -> None:
    reader = console.staff()
    with pair.replay_paused():
        # Something for the replica to be behind on.
        pair.sql("primary", "SELECT txid_current()", database="tf")

        def noted() -> bool:
            page = reader.get(console.url + ACCOUNTS, timeout=30)
            return (
                listed(page, name_on_primary(pair, console)) and "behind the primary" in page.text
            )

        wait_until(
            noted, what="the page to say it reads a lagging replica", timeout=20, interval=0.5
        )
    assert "read replica behind the primary" in console.log()
    wait_until(
        lambda: "behind the primary" not in reader.get(console.url + ACCOUNTS, timeout=30).text,
        what="the note to go once the replica has caught up",
        timeout=15,
    )
    assert "read replica caught up" in console.log()


def test_exports_and_the_finance_report_read_the_replica(
    console: Console, pair: PostgresPair
) -> None:
    later = ROLLED_UP_TO + timedelta(hours=1)
    with pair.replay_paused():
        record = "UPDATE metering_usagerecord SET model = 'renamed' WHERE request_id = %s"
        pair.sql("primary", record, console.request_id, database="tf")
        rollups = "UPDATE billing_jobrun SET watermark = %s WHERE job = 'rollups'"
        pair.sql("primary", rollups, later, database="tf")
        export = console.api(EXPORT)
        assert export.status_code == 200, export.text
        assert f",{MODEL}," in export.text
        assert "renamed" not in export.text
        report = console.api(f"/billing/report/{PERIOD}.html")
        assert report.status_code == 200, report.text
        assert f"usage rolled up to {ROLLED_UP_TO:%Y-%m-%d %H:%M} UTC" in report.text
    wait_until(lambda: ",renamed," in console.api(EXPORT).text, what="the export to read it")
    assert (
        f"usage rolled up to {later:%Y-%m-%d %H:%M} UTC"
        in console.api(f"/billing/report/{PERIOD}.html").text
    )


def test_the_console_keeps_working_on_the_primary_while_the_replica_is_down(
    console: Console, pair: PostgresPair
) -> None:
    reader = console.staff()
    name = name_on_primary(pair, console)
    pair.replica_stop()
    try:
        for _ in range(3):
            started = time.monotonic()
            assert listed(reader.get(console.url + ACCOUNTS, timeout=30), name)
            assert account_name(console) == name
            assert console.api(f"/billing/report/{PERIOD}.csv").status_code == 200
            assert console.api(EXPORT).status_code == 200
            # At most one wait for a connection the replica does not give (2 s).
            assert time.monotonic() - started < 5
        assert "read replica unreachable: reads go to the primary" in console.log()
    finally:
        pair.replica_start()

    def back() -> bool:
        reader.get(console.url + ACCOUNTS, timeout=30).raise_for_status()
        return "read replica back" in console.log()

    wait_until(back, what="the console to read the replica again", timeout=20, interval=0.5)


def test_who_is_asking_is_read_from_the_primary_however_far_behind_the_replica_is(
    console: Console, pair: PostgresPair
) -> None:
    """A staff token revoked is refused at once, not a lag later (sessions, users, permissions,
    two-factor devices and lockouts are read the same way: config.db_routing.PRIMARY_ONLY)."""
    account = f"/api/v1/accounts/{console.account_id}/"
    assert console.api(account, token=console.spare_token).status_code == 200
    with pair.replay_paused():
        rename = "UPDATE customers_account SET name = name || ' (lagging)' WHERE id = %s"
        pair.sql("primary", rename, console.account_id, database="tf")
        revoke = "UPDATE console_stafftoken SET revoked_at = now() WHERE token_id = %s"
        pair.sql("primary", revoke, console.spare_token.split("_")[1], database="tf")
        refused = console.api(account, token=console.spare_token)
        assert refused.status_code == 401
        assert refused.json()["error"]["message"] == "This staff token has been revoked."
        # The same request with a valid token still reads the replica, which lags.
        assert "(lagging)" not in account_name(console)
    wait_until(lambda: "(lagging)" in account_name(console), what="the API to read the rename")
