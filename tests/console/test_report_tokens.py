"""The finance report for a staff token: with the billing scope it is the report, without it
the API's 403, never the sign-in page; signed-in staff still read it in the browser."""

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from tests.console.api_support import assert_error, staff_token, tenant_create, token_client

pytestmark = pytest.mark.django_db
# tenant_create's finalised invoice is January 2030's.
REPORT = "/billing/report/2030-01"


def finance_user() -> User:
    user = User.objects.create_user("finance", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_invoice"))
    return user


@pytest.mark.parametrize(
    ("fmt", "content_type", "start"),
    [("csv", "text/csv", b"period,"), ("html", "text/html", b"<!doctype html>")],
)
def test_a_token_with_the_billing_scope_reads_the_report(
    fmt: str, content_type: str, start: bytes
) -> None:
    tenant = tenant_create()
    client = token_client(staff_token(finance_user(), ["billing"]))

    response = client.get(f"{REPORT}.{fmt}")

    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith(content_type)
    assert response.content.startswith(start)
    assert str(tenant.invoice.number).encode() in response.content


def test_a_token_without_the_billing_scope_is_refused_in_the_api_shape() -> None:
    client = token_client(staff_token(finance_user(), ["read", "keys", "fleet"]))

    error = assert_error(client.get(f"{REPORT}.csv"), 403, "insufficient_scope")

    assert error["type"] == "permission_error"
    assert "`billing` scope" in error["message"]


def test_a_token_whose_user_may_not_view_invoices_is_refused() -> None:
    user = User.objects.create_user("support", is_staff=True)

    assert_error(token_client(staff_token(user, ["billing"])).get(f"{REPORT}.csv"), 403)


def test_a_wrong_token_is_a_401_not_the_sign_in_page() -> None:
    assert_error(token_client("tfs_nope_nope").get(f"{REPORT}.csv"), 401)
    assert_error(Client().get(f"{REPORT}.csv", HTTP_AUTHORIZATION="Basic eDp5"), 401)


def test_a_key_holders_key_is_refused() -> None:
    tenant = tenant_create()

    assert_error(tenant.client().get(f"{REPORT}.csv"), 401)


def test_a_tokens_bad_currency_or_period_is_said_in_the_api_shape() -> None:
    client = token_client(staff_token(finance_user(), ["billing"]))

    error = assert_error(client.get(f"{REPORT}.csv?currency=U$D"), 400)
    assert error["param"] == "currency"
    assert "three-letter code" in error["message"]
    assert_error(client.get("/billing/report/2030-13.csv"), 404)
    assert_error(client.get(f"{REPORT}.xls"), 404)


def test_signed_in_staff_still_read_it_and_others_are_sent_to_sign_in(client: Client) -> None:
    tenant_create()
    anonymous = client.get(f"{REPORT}.html")
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/admin/login/")

    client.force_login(User.objects.create_user("finance", is_staff=True))
    response = client.get(f"{REPORT}.html")

    assert response.status_code == 200
    assert response.content.startswith(b"<!doctype html>")
