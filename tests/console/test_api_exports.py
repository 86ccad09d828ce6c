"""Exports through the API: CSV and Parquet, streamed, one account's or all (staff only)."""

import csv
import io
import urllib.parse
from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest
from django.contrib.auth.models import Permission, User

from tests.console.api_support import (
    assert_error,
    staff_client,
    staff_token,
    tenant_create,
    usage_create,
)
from tests.support.http import call
from tests.support.servers import Server

RANGE = {"from": "2030-03-01T00:00:00Z", "to": "2030-04-01T00:00:00Z"}


@pytest.mark.django_db
def test_usage_exports_as_csv_for_one_account() -> None:
    a, b = tenant_create(), tenant_create()
    usage_create(a.account, at=datetime(2030, 3, 5, tzinfo=UTC), prompt=11)
    usage_create(b.account, at=datetime(2030, 3, 5, tzinfo=UTC), prompt=22)
    response = staff_client().get("/api/v1/exports/usage/", {**RANGE, "account": a.account.pk})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    assert response.streaming
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(int(r["account_id"]), int(r["prompt_tokens"])) for r in rows] == [(a.account.pk, 11)]


@pytest.mark.django_db
def test_invoices_export_as_parquet() -> None:
    tenant = tenant_create()
    query = {"from": "2030-01-01T00:00:00Z", "to": "2030-12-01T00:00:00Z"}
    response = staff_client().get(
        "/api/v1/exports/invoices/", {**query, "file_format": "parquet"}, HTTP_ACCEPT="*/*"
    )
    assert response.status_code == 200
    table = pq.read_table(io.BytesIO(b"".join(response.streaming_content)))
    mine = [row for row in table.to_pylist() if row["account_id"] == tenant.account.pk]
    assert sorted(row["status"] for row in mine) == ["draft", "finalised"]
    assert {row["amount_minor"] for row in mine} == {1250}


@pytest.mark.django_db
def test_a_key_holder_cannot_export() -> None:
    tenant = tenant_create()
    assert_error(tenant.client().get("/api/v1/exports/usage/", RANGE), 401)


def test_an_export_streams_through_the_asgi_server(gateway: Server) -> None:
    """Under ASGI the pieces are pulled on the request's thread, where its connection lives."""
    tenant = tenant_create()
    for day in range(1, 4):
        usage_create(tenant.account, at=datetime(2030, 3, day, tzinfo=UTC), prompt=day)
    user = User.objects.create_user(f"ops-{tenant.account.pk}", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    token = staff_token(user, ["read"])
    query = urllib.parse.urlencode({**RANGE, "account": tenant.account.pk})
    reply = call("GET", f"{gateway.url}/api/v1/exports/usage/?{query}", key=token)
    assert reply.status == 200, reply.body[:300]
    rows = list(csv.DictReader(io.StringIO(reply.body.decode())))
    assert [int(row["prompt_tokens"]) for row in rows] == [1, 2, 3]
