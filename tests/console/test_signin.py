"""Staff sign-in that holds against a hostile client (issue 12): lockouts keyed on the address
the trusted proxies vouch for, and two-factor required where the setting says so."""

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, RequestFactory, override_settings
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.client_ip import client_address
from audit.models import AuditEntry
from customers.services import account_status_set
from tests.console.api_support import tenant_create
from tests.support.manage import manage
from tests.support.servers import gateway_env, start_gateway

PASSWORD = "correct horse battery staple"
LOCAL = "127.0.0.1"
PROXY = "10.0.0.2"


@pytest.fixture
def staff(db: None) -> User:
    return User.objects.create_user("ops", password=PASSWORD, is_staff=True, is_superuser=True)


def _sign_in(client: Client, password: str, peer: str, forwarded: str | None = None) -> bool:
    """One try at the console's sign-in form; whether it signed the client in."""
    headers = {"REMOTE_ADDR": peer}
    if forwarded is not None:
        headers["HTTP_X_FORWARDED_FOR"] = forwarded
    client.post("/admin/login/", {"username": "ops", "password": password}, **headers)
    return "_auth_user_id" in client.session


def _fail_until_locked(client: Client, peer: str, forwarded: list[str | None]) -> None:
    assert len(forwarded) == settings.AXES_FAILURE_LIMIT
    for hop in forwarded:
        assert not _sign_in(client, "wrong", peer, hop)


def test_the_correct_password_is_refused_while_locked(staff: User) -> None:
    client = Client()
    _fail_until_locked(client, LOCAL, [None] * settings.AXES_FAILURE_LIMIT)
    assert not _sign_in(client, PASSWORD, LOCAL)


def test_x_forwarded_for_from_an_untrusted_peer_does_not_move_the_lockout(staff: User) -> None:
    client = Client()
    spoofed = [f"198.51.100.{n}" for n in range(settings.AXES_FAILURE_LIMIT)]
    _fail_until_locked(client, LOCAL, list(spoofed))
    assert not _sign_in(client, PASSWORD, LOCAL, "198.51.100.200")
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {LOCAL}


@override_settings(TRUSTED_PROXIES=["10.0.0.0/8"])
def test_behind_a_trusted_proxy_each_client_has_its_own_lockout(staff: User) -> None:
    """The proxy is everyone's peer: keyed on it, one attacker would lock every user out."""
    attacker, colleague = "203.0.113.5", "203.0.113.6"
    _fail_until_locked(Client(), PROXY, [attacker] * settings.AXES_FAILURE_LIMIT)
    assert not _sign_in(Client(), PASSWORD, PROXY, attacker)
    assert _sign_in(Client(), PASSWORD, PROXY, colleague)
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {attacker}


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "client"),
    [
        ([], LOCAL, "198.51.100.7", LOCAL),
        (["10.0.0.0/8"], "192.0.2.1", "198.51.100.7", "192.0.2.1"),
        (["10.0.0.0/8"], PROXY, "198.51.100.7", "198.51.100.7"),
        # What a client puts left of the proxies' entries is its own invention.
        (["10.0.0.0/8"], PROXY, "1.1.1.1, 198.51.100.7, 10.0.0.9", "198.51.100.7"),
        (["10.0.0.2", "10.0.0.9"], PROXY, "198.51.100.7,10.0.0.9", "198.51.100.7"),
        (["10.0.0.0/8"], PROXY, "", PROXY),
        (["10.0.0.0/8"], PROXY, "not-an-address", PROXY),
        (["10.0.0.0/8"], "::ffff:10.0.0.2", "2001:db8::1", "2001:db8::1"),
        ([], "", "198.51.100.7", None),
    ],
)
def test_the_client_address_follows_trusted_proxies_only(
    trusted: list[str], peer: str, forwarded: str, client: str | None
) -> None:
    request = RequestFactory().get("/", REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=forwarded)
    with override_settings(TRUSTED_PROXIES=trusted):
        assert client_address(request) == client


@override_settings(TRUSTED_PROXIES=["10.0.0.0/8"])
def test_the_audit_log_records_the_client_behind_a_trusted_proxy(staff: User) -> None:
    account = tenant_create().account
    request = RequestFactory().post("/", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="203.0.113.5")
    account_status_set(actor=staff, account=account, status="suspended", request=request)
    assert AuditEntry.objects.get(action="suspend").remote_addr == "203.0.113.5"


@override_settings(CONSOLE_REQUIRE_TWO_FACTOR=True)
def test_with_two_factor_required_staff_without_a_device_set_one_up_first(staff: User) -> None:
    client = Client()
    assert _sign_in(client, PASSWORD, LOCAL)
    for page in ("/admin/", "/admin/dashboard/", "/admin/dashboard/data.json", "/admin/customers/"):
        response = client.get(page)
        assert (response.status_code, response["Location"]) == (302, "/admin/two-factor/"), page
    setup = client.get("/admin/two-factor/")
    assert b'id="two-factor-required"' in setup.content

    device = TOTPDevice.objects.get(user=staff, confirmed=False)
    response = client.post("/admin/two-factor/", {"token": f"{totp(device.bin_key):06d}"})
    assert response.status_code == 302
    assert client.get("/admin/dashboard/").status_code == 200


@override_settings(CONSOLE_REQUIRE_TWO_FACTOR=True)
def test_with_two_factor_required_staff_may_still_sign_out(staff: User) -> None:
    client = Client()
    assert _sign_in(client, PASSWORD, LOCAL)
    assert client.post("/admin/logout/").status_code == 200
    assert "_auth_user_id" not in client.session


@override_settings(CONSOLE_REQUIRE_TWO_FACTOR=False)
def test_without_the_requirement_the_password_alone_opens_the_console(staff: User) -> None:
    client = Client()
    assert _sign_in(client, PASSWORD, LOCAL)
    assert client.get("/admin/dashboard/").status_code == 200


@pytest.mark.parametrize(("profile", "required"), [("production", "True"), ("local", "False")])
def test_two_factor_is_required_by_default_in_production_only(profile: str, required: str) -> None:
    result = manage(
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings; print(settings.CONSOLE_REQUIRE_TWO_FACTOR)",
        TF_PROFILE=profile,
        SECRET_KEY="x" * 50,
    )
    assert result.stdout.strip().splitlines()[-1] == required, result.stderr


def test_through_the_asgi_server_a_spoofed_x_forwarded_for_moves_no_lockout(
    fleet: None,
) -> None:
    """As the audit found it: a local peer rotating X-Forwarded-For through uvicorn, which
    must believe it no more than TRUSTED_PROXIES says (here: not at all)."""
    name = f"ops-{uuid.uuid4().hex[:6]}"
    User.objects.create_user(name, password=PASSWORD, is_staff=True, is_superuser=True)
    server = start_gateway(gateway_env())
    try:
        for n in range(settings.AXES_FAILURE_LIMIT):
            assert _http_sign_in(server.url, name, "wrong", f"198.51.100.{n}") != 302
        assert _http_sign_in(server.url, name, PASSWORD, "198.51.100.200") == 429
    finally:
        server.stop()


def _http_sign_in(base_url: str, username: str, password: str, forwarded: str) -> int:
    """The status of one sign-in through the form over HTTP (302: signed in; 429: locked)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect)
    with opener.open(f"{base_url}/admin/login/") as page:
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.read().decode())
    assert csrf is not None
    form = {"csrfmiddlewaretoken": csrf[1], "username": username, "password": password}
    request = urllib.request.Request(  # noqa: S310 (a local test server)
        f"{base_url}/admin/login/",
        data=urllib.parse.urlencode(form).encode(),
        headers={"X-Forwarded-For": forwarded},
    )
    try:
        with opener.open(request) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
