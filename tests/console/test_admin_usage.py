"""The console's usage records: found by the request id a client quotes, newest first, with
the account and key by name, in a bounded number of queries."""

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from customers.models import Account, ApiKey
from customers.services import account_create, api_key_issue, tiers_ensure_defaults
from metering.events import request_id_parse
from metering.models import QuarantinedEvent
from tests.billing.factories import usage, usage_write

pytestmark = pytest.mark.django_db

PAGE = reverse("admin:metering_usagerecord_changelist")
AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
ROW_REF = re.compile(r"req_[0-9a-f]{32}")


@pytest.fixture
def client() -> Client:
    user = User.objects.create_superuser("root", "root@example.com", "a long passphrase")
    client = Client()
    client.force_login(user)
    return client


def _key(account_name: str, key_name: str) -> ApiKey:
    tiers_ensure_defaults()
    account = account_create(name=account_name, tier_slug="premium")
    return api_key_issue(account=account, name=key_name).api_key


def _records(key: ApiKey, times: list[datetime]) -> list[dict[str, Any]]:
    records = [usage(at, account_id=key.account_id, api_key_id=key.pk) for at in times]
    usage_write(records)
    return records


def _listed(response: Any) -> list[str]:
    """The request ids of the listed rows, top to bottom (each row shows its id once)."""
    assert response.status_code == 200
    body = response.content.decode()
    if 'id="result_list"' not in body:  # the page lists nothing
        assert "0 results" in body or "0 usage records" in body
        return []
    rows = body[body.index('id="result_list"') :]
    return list(dict.fromkeys(ROW_REF.findall(rows)))


def test_a_request_id_as_the_client_quotes_it_finds_the_record(client: Client) -> None:
    key = _key("Acme Robotics", "production")
    wanted, *others = _records(key, [AT, AT + timedelta(seconds=1), AT + timedelta(seconds=2)])
    rid: uuid.UUID = wanted["request_id"]
    header = f"req_{rid.hex}"  # the x-request-id the gateway sent (gateway/app.py)

    for quoted in (header, f" {header} ", str(rid), rid.hex, str(rid).upper(), f'"{header}"'):
        assert _listed(client.get(PAGE, {"q": quoted})) == [header], quoted
    page = client.get(PAGE, {"q": header}).content.decode()
    assert "1 result" in page

    # Someone else's id, or one that is no request id, finds nothing and breaks nothing.
    assert _listed(client.get(PAGE, {"q": f"req_{uuid.uuid4().hex}"})) == []
    assert _listed(client.get(PAGE, {"q": "req_18bc"})) == []
    # A response id is the backend's: the page says which id to search by.
    response = client.get(PAGE, {"q": "chatcmpl-9f2c1b"}, follow=True)
    assert _listed(response) == []
    assert "x-request-id header (req_…)" in response.content.decode()
    assert len(others) == 2


def test_request_ids_are_read_as_clients_write_them() -> None:
    rid = uuid.uuid4()
    assert request_id_parse(f"req_{rid.hex}") == rid
    assert request_id_parse(f"REQ_{rid.hex.upper()}") == rid
    assert request_id_parse(str(rid)) == rid
    assert request_id_parse(rid.hex) == rid
    assert request_id_parse(f"req_{rid.hex[:-1]}") is None
    assert request_id_parse("llama") is None


def test_records_are_listed_newest_first_with_account_and_key_names(client: Client) -> None:
    key = _key("Acme Robotics", "production")
    times = [AT + timedelta(minutes=m) for m in (5, 1, 9, 3)]
    records = _records(key, times)
    newest_first = [
        f"req_{r['request_id'].hex}"
        for r in sorted(records, key=lambda r: r["started_at"], reverse=True)
    ]

    response = client.get(PAGE)
    assert _listed(response) == newest_first
    page = response.content.decode()
    assert "Acme Robotics" in page
    assert f"production (tf_{key.key_id}_…)" in page
    assert reverse("admin:customers_account_change", args=[key.account_id]) in page
    # Not the ids as bare numbers in the account column.
    assert f'<td class="field-account">{key.account_id}</td>' not in page

    # A record's own page names them too, and the id as the client saw it.
    rid = records[0]["request_id"]
    record = client.get(reverse("admin:metering_usagerecord_change", args=[rid]))
    assert record.status_code == 200
    shown = record.content.decode()
    assert "Acme Robotics" in shown and f"req_{rid.hex}" in shown
    assert f"production (tf_{key.key_id}_…)" in shown


def test_records_of_a_deleted_account_name_it_by_id(client: Client) -> None:
    key = _key("Gone Ltd", "old")
    _records(key, [AT])
    account_id, key_id = key.account_id, key.pk
    Account.objects.filter(pk=account_id).delete()

    page = client.get(PAGE).content.decode()
    assert f"#{account_id} (deleted)" in page
    assert f"#{key_id} (deleted)" in page


def test_records_are_searched_by_account_name(client: Client) -> None:
    acme = _key("Acme Robotics", "production")
    other = _key("Globex", "batch")
    mine = _records(acme, [AT])
    _records(other, [AT + timedelta(seconds=1)])

    assert _listed(client.get(PAGE, {"q": "acme"})) == [f"req_{mine[0]['request_id'].hex}"]


def test_the_list_reads_a_bounded_number_of_queries(
    client: Client, django_assert_max_num_queries: Any
) -> None:
    keys = [_key(f"Account {n}", f"key {n}") for n in range(3)]
    _records(keys[0], [AT])
    with CaptureQueriesContext(connection) as few:
        assert len(_listed(client.get(PAGE))) == 1

    for n, key in enumerate(keys):
        _records(key, [AT + timedelta(seconds=s) for s in range(1 + 20 * n)])
    # Session, user, devices, counts, the page, the date and filter choices: not one per row.
    assert len(few.captured_queries) <= 12
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert len(_listed(client.get(PAGE))) == 64


def test_a_quarantined_event_is_found_by_the_request_id_the_client_quotes(
    client: Client,
) -> None:
    rid = uuid.uuid4()
    QuarantinedEvent.objects.create(
        stream_id="1700000000000-0",
        request_id=str(rid),
        fields={"record": "{}"},
        error="completion_tokens_check",
    )
    QuarantinedEvent.objects.create(
        stream_id="1700000000001-0", request_id=str(uuid.uuid4()), fields={}, error="other"
    )
    page = reverse("admin:metering_quarantinedevent_changelist")
    for quoted in (f"req_{rid.hex}", str(rid), rid.hex):
        listed = client.get(page, {"q": quoted}).content.decode()
        assert "1700000000000-0" in listed and "1700000000001-0" not in listed, quoted
