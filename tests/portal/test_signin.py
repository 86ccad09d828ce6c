"""Members sign in to the portal: password, throttled by django-axes like the console, the
authenticator's code once they set one up, and resets by email."""

import re

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from customers.members import member_remove
from customers.models import Member
from tests.support.members import PASSWORD, account_with_owner, client_of, member_add

pytestmark = pytest.mark.django_db

LOGIN = "/portal/login/"


def _sign_in(client: Client, email: str, password: str = PASSWORD, code: str = "") -> bool:
    client.post(LOGIN, {"username": email, "password": password, "otp_token": code})
    return client.get("/portal/").status_code == 200


def test_a_member_signs_in_with_email_and_password() -> None:
    owner = account_with_owner()
    client = Client()
    response = client.post(LOGIN, {"username": owner.user.email.upper(), "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/portal/"
    page = client.get("/portal/")
    assert page.status_code == 200
    assert owner.account.name in page.content.decode()


def test_it_refuses_a_wrong_password() -> None:
    owner = account_with_owner()
    client = Client()
    response = client.post(LOGIN, {"username": owner.user.email, "password": "wrong"})
    assert response.status_code == 200
    assert "do not match a member" in response.content.decode()
    assert client.get("/portal/").status_code == 302


def test_repeated_failures_lock_out_the_username_from_the_address() -> None:
    owner = account_with_owner()
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        assert not _sign_in(client, owner.user.email, "wrong")
    response = client.post(LOGIN, {"username": owner.user.email, "password": PASSWORD})
    assert response.status_code == 429
    assert "locked" in response.content.decode().lower()
    assert client.get("/portal/").status_code == 302
    # Another member from the same address is not locked out.
    other = member_add(owner.account, Member.Role.ADMIN)
    assert _sign_in(Client(), other.user.email)


def test_once_two_factor_is_on_the_code_is_needed() -> None:
    owner = account_with_owner()
    device = TOTPDevice.objects.create(user=owner.user, name="phone", confirmed=True)
    assert not _sign_in(Client(), owner.user.email)
    assert _sign_in(Client(), owner.user.email, code=f"{totp(device.bin_key):06d}")


def test_a_wrong_code_is_refused() -> None:
    owner = account_with_owner()
    device = TOTPDevice.objects.create(user=owner.user, name="phone", confirmed=True)
    wrong = f"{(totp(device.bin_key) + 1) % 1_000_000:06d}"
    assert not _sign_in(Client(), owner.user.email, code=wrong)


def test_wrong_codes_count_towards_the_lockout() -> None:
    owner = account_with_owner()
    device = TOTPDevice.objects.create(user=owner.user, name="phone", confirmed=True)
    wrong = f"{(totp(device.bin_key) + 1) % 1_000_000:06d}"
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        assert not _sign_in(client, owner.user.email, code=wrong)
    response = client.post(
        LOGIN,
        {
            "username": owner.user.email,
            "password": PASSWORD,
            "otp_token": f"{totp(device.bin_key):06d}",
        },
    )
    assert response.status_code == 429


def test_a_session_without_the_code_reaches_nothing() -> None:
    owner = account_with_owner()
    client = client_of(owner)  # signed in by password only
    TOTPDevice.objects.create(user=owner.user, name="phone", confirmed=True)
    assert client.get("/portal/").status_code == 302


def test_staff_without_a_membership_are_not_members() -> None:
    User.objects.create_user("ops@example.com", "ops@example.com", PASSWORD, is_staff=True)
    client = Client()
    response = client.post(LOGIN, {"username": "ops@example.com", "password": PASSWORD})
    assert "not a member of any account" in response.content.decode()
    staff = User.objects.get(username="ops@example.com")
    client.force_login(staff)
    assert client.get("/portal/projects/").status_code == 302


def test_a_removed_member_is_out_on_the_next_request() -> None:
    owner = account_with_owner()
    admin = member_add(owner.account, Member.Role.ADMIN)
    client = client_of(admin)
    assert client.get("/portal/keys/").status_code == 200
    member_remove(member=admin, actor=owner.user)
    response = client.get("/portal/keys/")
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)
    assert "_auth_user_id" not in client.session


def test_a_member_of_two_accounts_switches_between_them() -> None:
    first = account_with_owner()
    second = account_with_owner()
    other = member_add(second.account, Member.Role.DEVELOPER, user=first.user)
    client = client_of(first)
    assert first.account.name in client.get("/portal/").content.decode()
    client.post("/portal/account/", {"account": str(other.account_id)})
    page = client.get("/portal/").content.decode()
    assert second.account.name in page and "(developer)" in page
    # An account they are not a member of is refused, and they stay where they were.
    stranger = account_with_owner()
    client.post("/portal/account/", {"account": str(stranger.account_id)})
    assert stranger.account.name not in client.get("/portal/").content.decode()
    # Removed from the account they work in: back in the one they still belong to.
    member_remove(member=other, actor=second.user)
    assert first.account.name in client.get("/portal/").content.decode()


def test_a_password_reset_by_email() -> None:
    owner = account_with_owner()
    client = Client()
    response = client.post("/portal/password-reset/", {"email": owner.user.email})
    assert response["Location"] == "/portal/password-reset/sent/"
    (message,) = mail.outbox
    assert message.to == [owner.user.email]
    link = re.search(r"http://testserver(/portal/password-reset/\S+/)", str(message.body))
    assert link is not None
    form = client.get(link[1], follow=True)
    assert form.status_code == 200
    new = "another horse battery staple"
    done = client.post(form.redirect_chain[-1][0], {"new_password1": new, "new_password2": new})
    assert done["Location"] == "/portal/password-reset/done/"
    assert _sign_in(Client(), owner.user.email, new)
    assert not _sign_in(Client(), owner.user.email, PASSWORD)


def test_resets_are_not_sent_to_staff_or_strangers() -> None:
    User.objects.create_user("ops@example.com", "ops@example.com", PASSWORD, is_staff=True)
    client = Client()
    for email in ("ops@example.com", "nobody@example.com"):
        response = client.post("/portal/password-reset/", {"email": email})
        assert response["Location"] == "/portal/password-reset/sent/"
    assert mail.outbox == []


def test_sign_in_sends_only_to_portal_pages() -> None:
    owner = account_with_owner()
    client = Client()
    response = client.post(
        LOGIN + "?next=https://evil.example/portal/",
        {"username": owner.user.email, "password": PASSWORD},
    )
    assert response["Location"] == "/portal/"
    client = Client()
    response = client.post(
        LOGIN, {"username": owner.user.email, "password": PASSWORD, "next": "/portal/usage/"}
    )
    assert response["Location"] == "/portal/usage/"
