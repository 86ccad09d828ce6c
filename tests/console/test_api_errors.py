"""Every error of the API is its one JSON error shape, whatever was wrong (issue 12): bodies
too deep or too large, wrong methods, unknown URLs, requests Django refuses before any view,
through the test client and through the real ASGI server."""

import json
from typing import Any

import pytest
from django.conf import settings
from django.test import RequestFactory
from rest_framework.test import APIClient

from console.api.errors import bad_request, page_not_found, server_error
from console.api.parsers import MAX_DEPTH
from customers.models import Account
from tests.console.api_support import assert_error, staff_client, staff_token, superuser_create
from tests.support.http import call
from tests.support.servers import Server

# Each test but the last runs in a transaction; the last needs committed rows, which the
# ASGI server's own connections can see.
db = pytest.mark.django_db


def _post(body: str | bytes, content_type: str = "application/json") -> Any:
    return staff_client().generic("POST", "/api/v1/accounts/", body, content_type=content_type)


def _nested(depth: int) -> str:
    return '{"name": "deep", "tier": "free", "limits": ' + "[" * depth + "]" * depth + "}"


@db
@pytest.mark.parametrize("depth", [MAX_DEPTH, 5000])
def test_a_body_nested_too_deep_is_a_400(depth: int) -> None:
    assert_error(_post(_nested(depth)), 400, "too_deep")
    assert not Account.objects.filter(name="deep").exists()


@db
def test_a_body_nested_within_the_limit_is_read() -> None:
    error = assert_error(_post(_nested(MAX_DEPTH - 2)), 400)
    assert "limits.non_field_errors" in error["details"]  # read, then refused: not an object


@db
def test_a_body_over_the_upload_limit_is_a_413() -> None:
    body = json.dumps({"name": "x" * (20 * 1024 * 1024), "tier": "free"})
    error = assert_error(_post(body), 413, "body_too_large")
    assert str(settings.DATA_UPLOAD_MAX_MEMORY_SIZE) in error["message"]
    assert not Account.objects.exists()


@db
def test_a_form_or_multipart_body_is_a_415() -> None:
    assert_error(_post("name=x&tier=free", "application/x-www-form-urlencoded"), 415)
    assert_error(_post("--b\r\n", "multipart/form-data; boundary=b"), 415)


@db
def test_too_many_query_fields_is_a_400() -> None:
    query = "&".join(f"f{n}=1" for n in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    assert_error(staff_client().get(f"/api/v1/accounts/?{query}"), 400, "too_many_fields")


@db
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/v1/accounts/"),
        ("TRACE", "/api/v1/keys/"),
        ("POST", "/api/schema/"),
        ("POST", "/api/docs/"),
        ("DELETE", "/api/redoc/"),
    ],
)
def test_a_method_not_allowed_is_a_405(method: str, path: str) -> None:
    assert_error(staff_client().generic(method, path), 405, "method_not_allowed")


@db
@pytest.mark.parametrize("path", ["/api/v1/nope/", "/api/v1/accounts", "/api/nothing/here"])
def test_an_unknown_url_is_a_404_whatever_the_method(path: str) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(superuser_create())
    for method in ("GET", "POST", "DELETE"):
        assert_error(client.generic(method, path), 404, "unknown_url")


@db
def test_a_client_that_accepts_only_html_gets_json() -> None:
    response = staff_client().get("/api/v1/accounts/", HTTP_ACCEPT="text/html")
    assert_error(response, 406, "not_acceptable")


@db
def test_a_host_django_refuses_is_a_400_in_the_api_shape() -> None:
    response = staff_client().get("/api/v1/accounts/", HTTP_HOST="evil.example")
    assert_error(response, 400, "bad_request")


@db
def test_djangos_own_error_pages_are_json_under_api_only() -> None:
    factory = RequestFactory()
    api, console = factory.get("/api/v1/x/"), factory.get("/admin/x/")
    for response, status, code in [
        (server_error(api), 500, "server_error"),
        (bad_request(api, ValueError()), 400, "bad_request"),
        (page_not_found(api, ValueError()), 404, "unknown_url"),
    ]:
        assert response.status_code == status
        assert json.loads(response.content)["error"]["code"] == code
    assert server_error(console)["Content-Type"].startswith("text/html")


def test_errors_through_the_asgi_server_are_json(gateway: Server) -> None:
    """What the audit met under uvicorn: HTML for a wrong method, a huge body, a deep one."""
    token = staff_token(superuser_create(), ["read", "billing"])
    url = f"{gateway.url}/api/v1/accounts/"
    for method, body, status in [
        ("POST", b"[" * 100_000, 400),
        ("POST", b"{" + b" " * (20 * 1024 * 1024) + b"}", 413),
        ("PUT", None, 405),
        ("POST", None, 400),
    ]:
        reply = call(method, url, body=body, key=token)
        assert reply.status == status, (method, reply.status, reply.body[:200])
        assert set(reply.json()["error"]) >= {"message", "type", "param", "code"}
    reply = call("POST", f"{gateway.url}/api/v1/no-such-thing/")
    assert (reply.status, reply.json()["error"]["code"]) == (404, "unknown_url")
