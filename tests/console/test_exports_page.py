"""The console's exports page: links and buttons that download the same file as the API and
the command, for staff who may see the rows, with DEBUG on as the local profile runs."""

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from tests.console.api_support import tenant_create, usage_create

pytestmark = pytest.mark.django_db
PAGE = "/admin/exports/"
FORMATS = {"csv": "CSV", "parquet": "Parquet"}


def signed_in(*codenames: str, superuser: bool = False) -> Client:
    user = User.objects.create_user("finance", is_staff=True, is_superuser=superuser)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def links(html: str, row: str) -> dict[str, str]:
    """The download links of one row of the page ("Last month", ...) by their text."""
    cells = re.search(rf"<th>{row} .*?</tr>", html, re.DOTALL)
    assert cells, html
    found = re.findall(r'<a class="button" href="([^"]+)" download>([^<]+)</a>', cells.group())
    return {text: unescape(href) for href, text in found}


def downloaded(response: Any) -> bytes:
    assert response.streaming
    return b"".join(response.streaming_content)


def command_export(tmp_path: Path, *args: str) -> bytes:
    out = tmp_path / "export"
    call_command("export", *args, "--output", str(out))
    return out.read_bytes()


def test_the_usage_records_list_links_to_the_exports_page() -> None:
    client = signed_in(superuser=True)

    html = client.get("/admin/metering/usagerecord/").content.decode()

    assert f'href="{PAGE}?kind=usage"' in html
    page = client.get(f"{PAGE}?kind=usage")
    assert page.status_code == 200
    assert 'option value="usage" selected' in page.content.decode()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_this_months_usage_link_downloads_the_file_the_command_writes(
    settings: Any, tmp_path: Path, fmt: str
) -> None:
    settings.DEBUG = True
    tenant = tenant_create()
    today = timezone.now().date()
    usage_create(tenant.account, at=datetime.combine(today, datetime.min.time(), UTC), prompt=42)
    client = signed_in("view_usagerecord")

    page = client.get(PAGE).content.decode()
    link = links(page, "This month so far")[f"Usage, {FORMATS[fmt]}"]
    response = client.get(link)
    body = downloaded(response)

    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    since, until = today.replace(day=1), today + timedelta(days=1)
    assert body == command_export(
        tmp_path, "usage", "--from", f"{since}", "--to", f"{until}", "--format", fmt
    )
    rows = (
        list(csv.DictReader(io.StringIO(body.decode())))
        if fmt == "csv"
        else pq.read_table(io.BytesIO(body)).to_pylist()
    )
    assert [int(r["prompt_tokens"]) for r in rows if int(r["account_id"]) == tenant.account.pk] == [
        42
    ]


def test_the_form_downloads_one_accounts_invoices_of_the_days_chosen(
    settings: Any, tmp_path: Path
) -> None:
    settings.DEBUG = True
    mine, other = tenant_create(), tenant_create()
    client = signed_in("view_invoice")
    # The Parquet button, over January 2030 (both days included): mine's finalised invoice.
    query: dict[str, Any] = {
        "kind": "invoices",
        "first_day": "2030-01-01",
        "last_day": "2030-01-31",
        "account": mine.account.pk,
        "file_format": "parquet",
    }

    response = client.get(PAGE, query)
    body = downloaded(response)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/vnd.apache.parquet"
    rows = pq.read_table(io.BytesIO(body)).to_pylist()
    assert [(r["number"], r["account_id"]) for r in rows] == [
        (mine.invoice.number, mine.account.pk)
    ]
    assert other.invoice.number not in {r["number"] for r in rows}
    assert body == command_export(
        tmp_path,
        *("invoices", "--from", "2030-01-01", "--to", "2030-02-01"),
        *("--account", str(mine.account.pk), "--format", "parquet"),
    )


def test_a_last_day_before_the_first_is_said_and_nothing_is_downloaded() -> None:
    client = signed_in(superuser=True)
    query = {"kind": "usage", "first_day": "2030-02-01", "last_day": "2030-01-31"}

    response = client.get(PAGE, {**query, "file_format": "csv"})

    assert response.status_code == 400
    assert not response.streaming
    assert "The last day is before the first day." in response.content.decode()


def test_a_range_over_a_year_is_refused() -> None:
    client = signed_in(superuser=True)
    query = {"kind": "usage", "first_day": "2029-01-01", "last_day": "2030-01-02"}

    response = client.get(PAGE, {**query, "file_format": "csv"})

    assert response.status_code == 400
    assert "at most 366 days" in response.content.decode()


def test_staff_who_may_not_see_invoices_cannot_export_them() -> None:
    client = signed_in("view_usagerecord")
    query = {"kind": "invoices", "first_day": "2030-01-01", "last_day": "2030-01-31"}

    response = client.get(PAGE, {**query, "file_format": "csv"})

    assert response.status_code == 403
    assert "billing.view_invoice" in response.content.decode()


def test_anyone_else_is_sent_to_sign_in(client: Client) -> None:
    response = client.get(PAGE, {"kind": "usage", "file_format": "csv"})

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_the_page_offers_last_month_by_default() -> None:
    today = date.today()
    last = today.replace(day=1) - timedelta(days=1)

    html = signed_in(superuser=True).get(PAGE).content.decode()

    assert f'value="{last.replace(day=1)}"' in html
    assert f'value="{last}"' in html
    assert set(links(html, "Last month")) == {
        "Usage, CSV",
        "Usage, Parquet",
        "Invoices, CSV",
        "Invoices, Parquet",
    }
