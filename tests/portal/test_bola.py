"""No member of one account reaches another's data (broken object level authorisation).

Every portal URL is taken from the URLconf, so a page added later is checked too (or fails
`test_every_page_is_covered` until it is named here): with account B's object ids in the URL,
account A's owner (who may do everything in A) gets a 404 or a 403, by GET and by POST, and
nothing of B's changes; the list pages, asked with B's ids in their filters, show nothing of B.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.urls import URLPattern, reverse
from django.utils import timezone

from audit.models import AuditEntry
from billing.models import Invoice
from customers.members import invitation_create
from customers.models import ApiKey, Invitation, Member, Project, WebhookDelivery, WebhookEndpoint
from customers.services import api_key_issue, api_key_revoke, project_create
from customers.webhooks import webhook_endpoint_create
from metering.models import UsageRecord
from portal import urls as portal_urls
from tests.billing.factories import invoice_with_line, usage
from tests.support.members import account_with_owner, client_of, member_add

pytestmark = pytest.mark.django_db

# Pages anyone may open: they read or write nothing of an account by id.
PUBLIC = {
    "login",
    "logout",
    "account-switch",
    "invite",
    "password-reset",
    "password-reset-done",
    "password-reset-confirm",
    "password-reset-complete",
}


@dataclass
class Victim:
    owner: Member
    admin: Member
    project: Project
    key: ApiKey
    invoice: Invoice
    invitation: Invitation
    record: UsageRecord
    endpoint: WebhookEndpoint
    delivery: WebhookDelivery


def _victim() -> Victim:
    owner = account_with_owner()
    account = owner.account
    project = project_create(account=account, name="secret-project")
    key = api_key_issue(account=account, project=project, name="secret-key").api_key
    invoice = invoice_with_line(
        account, start=datetime(2026, 10, 1, tzinfo=UTC), amount=Decimal("7.5"), model="m"
    )
    Invoice.objects.filter(pk=invoice.pk).update(
        status=Invoice.Status.FINALISED, number=f"SECRET-{invoice.pk}", finalised_at=timezone.now()
    )
    record = UsageRecord.objects.create(
        **usage(
            timezone.now(),
            account_id=account.pk,
            api_key_id=key.pk,
            project_id=project.pk,
            model="secret-model",
        )
    )
    endpoint = webhook_endpoint_create(account=account, url="http://127.0.0.1:9/secret-hook")
    # Its revocation is an api_key.revoked event, with a delivery to B's endpoint.
    revoked = api_key_issue(account=account, project=project, name="revoked-key").api_key
    api_key_revoke(key_id=revoked.key_id)
    return Victim(
        owner=owner,
        admin=member_add(account, Member.Role.ADMIN),
        project=project,
        key=key,
        invoice=invoice,
        invitation=invitation_create(
            account=account, email="secret-invitee@example.com", role="admin"
        ).invitation,
        record=record,
        endpoint=endpoint,
        delivery=WebhookDelivery.objects.get(endpoint=endpoint),
    )


# Each URL argument, as B's object.
ARGUMENTS: dict[str, Callable[[Victim], Any]] = {
    "project_id": lambda v: v.project.pk,
    "api_key_id": lambda v: v.key.pk,
    "invoice_id": lambda v: v.invoice.pk,
    "member_id": lambda v: v.admin.pk,
    "invitation_id": lambda v: v.invitation.pk,
    "endpoint_id": lambda v: v.endpoint.pk,
    "delivery_id": lambda v: v.delivery.pk,
}


def _patterns() -> list[URLPattern]:
    return [p for p in portal_urls.urlpatterns if isinstance(p, URLPattern)]


def _state(victim: Victim) -> dict[str, Any]:
    """Everything of B's an action could change."""
    account_id = victim.owner.account_id
    return {
        "projects": list(Project.objects.filter(account_id=account_id).values()),
        "keys": list(ApiKey.objects.filter(account_id=account_id).values()),
        "members": list(Member.objects.filter(account_id=account_id).values()),
        "invitations": list(Invitation.objects.filter(account_id=account_id).values()),
        "webhooks": list(WebhookEndpoint.objects.filter(account_id=account_id).values()),
        "deliveries": list(
            WebhookDelivery.objects.filter(endpoint__account_id=account_id).values()
        ),
        "audit": AuditEntry.objects.filter(account_id=account_id).count(),
    }


def test_every_page_is_covered() -> None:
    for pattern in _patterns():
        if pattern.name in PUBLIC:
            continue
        unknown = set(pattern.pattern.converters) - set(ARGUMENTS)
        assert not unknown, f"{pattern.name}: name B's object for {unknown} in ARGUMENTS"


def test_another_accounts_objects_are_not_found() -> None:
    victim = _victim()
    before = _state(victim)
    attacker = client_of(account_with_owner())
    reached = []
    checked = 0
    for pattern in _patterns():
        arguments = set(pattern.pattern.converters)
        if pattern.name in PUBLIC or not arguments:
            continue
        url = reverse(f"portal:{pattern.name}", kwargs={a: ARGUMENTS[a](victim) for a in arguments})
        for method in ("get", "post"):
            response = getattr(attacker, method)(url)
            checked += 1
            if response.status_code not in (403, 404, 405):
                reached.append(f"{method.upper()} {url}: {response.status_code}")
    assert checked >= 16
    assert not reached
    assert _state(victim) == before


def test_list_pages_show_nothing_of_another_account() -> None:
    victim = _victim()
    before = _state(victim)
    attacker = client_of(account_with_owner())
    secrets = [
        "secret-project",
        "secret-key",
        victim.key.key_id,
        victim.record.request_id.hex,
        "SECRET-",
        "secret-invitee",
        victim.admin.user.email,
        victim.owner.account.name,
        "secret-hook",
        victim.endpoint.secret,
        victim.delivery.event.public_id,
    ]
    hostile: dict[str, Any] = {
        "project": victim.project.pk,
        "key": victim.key.pk,
        # Echoed in the filter's own field; the record's id shows whether a row leaked.
        "model": "secret-model",
        "projects": victim.project.pk,
        "name": "x",
        "email": "someone@example.com",
        "role": "developer",
    }
    shown = []
    for pattern in _patterns():
        if pattern.name in PUBLIC or pattern.pattern.converters:
            continue
        url = reverse(f"portal:{pattern.name}")
        for response in (attacker.get(url, hostile), attacker.post(url, hostile)):
            assert response.status_code < 500, url
            body = (
                response.content
                if not response.streaming
                else b"".join(
                    response.streaming_content  # type: ignore[attr-defined]
                )
            )
            shown += [f"{url}: {s}" for s in secrets if s.encode() in body]
    assert not shown
    assert _state(victim) == before


def test_an_account_put_in_the_session_by_hand_is_ignored() -> None:
    """The portal reads the session's account from the user's own memberships: an account id
    put in the session by hand (as a forged cookie would) is ignored."""
    victim = _victim()
    attacker = account_with_owner()
    client = client_of(attacker)
    session = client.session
    session["portal_account_id"] = victim.owner.account_id
    session.save()
    page = client.get("/portal/projects/").content.decode()
    assert "secret-project" not in page and attacker.account.name in page
    assert client.post("/portal/account/", {"account": victim.owner.account_id}).status_code == 302
    assert "secret-project" not in client.get("/portal/projects/").content.decode()
