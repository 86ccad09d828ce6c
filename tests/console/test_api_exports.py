"""Exports through the API: CSV and Parquet, streamed, one account's or all (staff only)."""

import csv
import io
import logging
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.db import connection

from tests.console.api_support import (
    assert_error,
    staff_client,
    staff_token,
    superuser_create,
    tenant_create,
    usage_create,
)
from tests.support.http import call
from tests.support.servers import Server, gateway_env, start_gateway

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


def command_export(tmp_path: Path, *args: str) -> bytes:
    out = tmp_path / "export"
    call_command("export", *args, "--output", str(out))
    return out.read_bytes()


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_with_debug_on_the_api_sends_the_same_file_as_the_command(
    settings: Any, tmp_path: Path, fmt: str
) -> None:
    """DEBUG (the local profile) wraps cursors in Django's debug wrapper, which once made the
    export a 200 with no body."""
    settings.DEBUG = True
    tenant = tenant_create()
    for day, prompt in ((2, 7), (3, 8)):
        usage_create(tenant.account, at=datetime(2030, 3, day, tzinfo=UTC), prompt=prompt)
    query = {**RANGE, "account": tenant.account.pk, "file_format": fmt}

    response = staff_client().get("/api/v1/exports/usage/", query, HTTP_ACCEPT="*/*")
    body = b"".join(response.streaming_content)

    assert response.status_code == 200
    assert body == command_export(
        tmp_path,
        *("usage", "--from", RANGE["from"], "--to", RANGE["to"]),
        *("--account", str(tenant.account.pk), "--format", fmt),
    )
    rows = (
        list(csv.DictReader(io.StringIO(body.decode())))
        if fmt == "csv"
        else pq.read_table(io.BytesIO(body)).to_pylist()
    )
    assert [int(row["prompt_tokens"]) for row in rows] == [7, 8]


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_with_debug_on_invoices_export_with_their_lines(
    settings: Any, tmp_path: Path, fmt: str
) -> None:
    settings.DEBUG = True
    tenant = tenant_create()
    query = {"from": "2030-01-01T00:00:00Z", "to": "2030-03-01T00:00:00Z"}

    response = staff_client().get(
        "/api/v1/exports/invoices/",
        {**query, "account": tenant.account.pk, "file_format": fmt},
        HTTP_ACCEPT="*/*",
    )
    body = b"".join(response.streaming_content)

    assert response.status_code == 200
    assert body == command_export(
        tmp_path,
        *("invoices", "--from", query["from"], "--to", query["to"]),
        *("--account", str(tenant.account.pk), "--format", fmt),
    )
    rows = (
        list(csv.DictReader(io.StringIO(body.decode())))
        if fmt == "csv"
        else pq.read_table(io.BytesIO(body)).to_pylist()
    )
    assert [(row["number"] or None, row["status"]) for row in rows] == [
        (tenant.invoice.number, "finalised"),
        (None, "draft"),
    ]
    assert {int(row["amount_minor"]) for row in rows} == {1250}


@pytest.mark.django_db
def test_an_export_that_cannot_start_is_a_logged_500_not_an_empty_200(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.DEBUG = True
    client = staff_client()
    with connection.cursor() as cursor:  # undone with the test's transaction
        cursor.execute("ALTER TABLE metering_usagerecord RENAME COLUMN ttft_ms TO ttft_gone")

    with caplog.at_level(logging.ERROR, logger="billing.exports"):
        response = client.get("/api/v1/exports/usage/", RANGE)

    error = assert_error(response, 500, "export_failed")
    assert "failed before any of it was sent" in error["message"]
    assert "ttft_ms" in error["message"]
    failure = next(r for r in caplog.records if r.name == "billing.exports")
    assert failure.getMessage() == "export failed before it started"
    assert failure.exc_info is not None


@pytest.fixture(scope="module")
def debug_gateway(fleet: None) -> Iterator[Server]:
    """The server as `tf up` runs it: the local profile with DEBUG on."""
    server = start_gateway({**gateway_env(), "DEBUG": "true"})
    yield server
    server.stop()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_export_streams_through_the_asgi_server_with_debug_on(
    debug_gateway: Server, fmt: str
) -> None:
    tenant = tenant_create()
    for day in range(1, 4):
        usage_create(tenant.account, at=datetime(2030, 3, day, tzinfo=UTC), prompt=day)
    token = staff_token(superuser_create(), ["read"])
    query = urllib.parse.urlencode({**RANGE, "account": tenant.account.pk, "file_format": fmt})

    reply = call("GET", f"{debug_gateway.url}/api/v1/exports/usage/?{query}", key=token)

    assert reply.status == 200, reply.body[:300]
    rows = (
        list(csv.DictReader(io.StringIO(reply.body.decode())))
        if fmt == "csv"
        else pq.read_table(io.BytesIO(reply.body)).to_pylist()
    )
    assert [int(row["prompt_tokens"]) for row in rows] == [1, 2, 3]
