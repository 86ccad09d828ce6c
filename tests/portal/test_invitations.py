"""Accepting an invitation: a new person signs up with the invited address, someone with a
sign-in signs in first; a link works once. The email, and the console's "Sent mail"."""

import re

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client, RequestFactory, override_settings

from customers.mail import invitation_send
from customers.members import invitation_create, invitation_revoke, owner_add
from customers.models import Member
from customers.services import account_create, tiers_ensure_defaults
from portal.models import SentMail
from tests.support.members import PASSWORD, account_with_owner, client_of, email_new

pytestmark = pytest.mark.django_db


def _link(sent: object) -> str:
    """The path of the invitation link in the one email sent."""
    (message,) = mail.outbox
    found = re.search(r"https?://[^/\s]+(/portal/invite/\S+/)", str(message.body))
    assert found is not None, message.body
    return found[1]


def test_staff_invite_a_new_customers_owner_who_signs_up() -> None:
    tiers_ensure_defaults()
    account = account_create(name="Acme", tier_slug="premium")
    sent = owner_add(account=account, email="Boss@Acme.example")
    link = invitation_send(sent, request=None)
    assert link.startswith("http://localhost:8000/portal/invite/tfi_")
    (message,) = mail.outbox
    assert message.to == ["boss@acme.example"]
    assert "Acme" in message.subject and link in message.body
    client = Client()
    page = client.get(_link(sent))
    assert page.status_code == 200 and "boss@acme.example" in page.content.decode()
    response = client.post(
        _link(sent),
        {"first_name": "Ada", "last_name": "Boss", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response["Location"] == "/portal/"
    member = Member.objects.get(account=account)
    assert (member.role, member.user.username, member.user.first_name) == (
        "owner",
        "boss@acme.example",
        "Ada",
    )
    assert not member.user.is_staff
    assert "Acme" in client.get("/portal/").content.decode()


def test_a_link_works_once() -> None:
    owner = account_with_owner()
    sent = invitation_create(account=owner.account, email=email_new(), role="admin")
    invitation_send(sent, request=RequestFactory().get("/"))
    path = _link(sent)
    Client().post(path, {"first_name": "A", "password1": PASSWORD, "password2": PASSWORD})
    again = Client().post(path, {"first_name": "B", "password1": PASSWORD, "password2": PASSWORD})
    assert again.status_code == 404
    assert "not valid" in again.content.decode()
    assert Member.objects.filter(account=owner.account).count() == 2


def test_a_weak_or_mismatched_password_creates_nothing() -> None:
    owner = account_with_owner()
    sent = invitation_create(account=owner.account, email=email_new(), role="admin")
    invitation_send(sent, request=RequestFactory().get("/"))
    for password1, password2 in (("123", "123"), (PASSWORD, PASSWORD + "x")):
        page = Client().post(
            _link(sent), {"first_name": "A", "password1": password1, "password2": password2}
        )
        assert page.status_code == 200 and "errorlist" in page.content.decode()
    assert not User.objects.filter(username=sent.invitation.email).exists()


def test_revoked_and_unknown_links_are_not_valid() -> None:
    owner = account_with_owner()
    sent = invitation_create(account=owner.account, email=email_new(), role="billing")
    invitation_revoke(invitation=sent.invitation)
    assert Client().get(f"/portal/invite/{sent.secret}/").status_code == 404
    assert Client().get("/portal/invite/tfi_nothing_here/").status_code == 404
    assert Client().get("/portal/invite/%00%ff/").status_code == 404


def test_someone_with_a_sign_in_signs_in_then_accepts() -> None:
    elsewhere = account_with_owner()
    owner = account_with_owner()
    sent = invitation_create(account=owner.account, email=elsewhere.user.email, role="developer")
    path = f"/portal/invite/{sent.secret}/"
    client = Client()
    page = client.get(path).content.decode()
    assert "sign in as" in page
    assert Client().post(path).status_code == 200  # not signed in: nothing accepted
    response = client.post(
        "/portal/login/", {"username": elsewhere.user.email, "password": PASSWORD, "next": path}
    )
    assert response["Location"] == path
    client.post(path)
    member = Member.objects.get(account=owner.account, user=elsewhere.user)
    assert member.role == "developer"
    assert owner.account.name in client.get("/portal/").content.decode()


def test_someone_else_signed_in_cannot_take_the_invitation() -> None:
    owner = account_with_owner()
    invited = account_with_owner()
    sent = invitation_create(account=owner.account, email=invited.user.email, role="admin")
    intruder = client_of(account_with_owner())
    response = intruder.post(f"/portal/invite/{sent.secret}/")
    assert response.status_code == 200
    assert not Member.objects.filter(account=owner.account, role="admin").exists()


@override_settings(EMAIL_BACKEND="portal.mail_backend.SentMailBackend")
def test_a_local_instance_keeps_sent_mail_for_the_console() -> None:
    owner = account_with_owner()
    sent = invitation_create(account=owner.account, email="new@example.com", role="admin")
    link = invitation_send(sent, request=RequestFactory().get("/", SERVER_NAME="localhost"))
    kept = SentMail.objects.get(to="new@example.com")
    assert link.startswith("http://localhost/portal/invite/") and link in kept.body
    staff = User.objects.create_user("ops", password=PASSWORD, is_staff=True, is_superuser=True)
    console = Client()
    console.force_login(staff)
    listing = console.get("/admin/portal/sentmail/")
    assert listing.status_code == 200 and "new@example.com" in listing.content.decode()
    detail = console.get(f"/admin/portal/sentmail/{kept.pk}/change/")
    assert link in detail.content.decode()
    assert console.post(f"/admin/portal/sentmail/{kept.pk}/delete/").status_code == 403
