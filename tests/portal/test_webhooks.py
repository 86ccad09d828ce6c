"""The portal's Webhooks page: owners and admins add endpoints and see their secret, rotate
and reveal it, change and delete endpoints, read the deliveries and replay one; other roles
are refused."""

import re

import pytest

from audit.models import AuditEntry
from customers.models import Member, WebhookDelivery, WebhookEndpoint
from customers.services import api_key_issue, api_key_revoke
from customers.webhook_delivery import SIGNATURE_HEADER, deliveries_send_due, signature_verify
from tests.customers.receiver import receiver_running
from tests.support.members import account_with_owner, client_of, member_add

pytestmark = pytest.mark.django_db


def _secret(page: str) -> str:
    found = re.search(r'id="webhook-secret"[^>]*>(whsec_[A-Za-z0-9_-]{43})<', page)
    assert found, page
    return found.group(1)


def test_an_admin_adds_an_endpoint_and_receives_a_revoked_key() -> None:
    owner = account_with_owner()
    admin = member_add(owner.account, Member.Role.ADMIN)
    client = client_of(admin)
    assert "Webhooks" in client.get("/portal/").content.decode()
    with receiver_running() as receiver:
        response = client.post(
            "/portal/webhooks/new/",
            {"url": receiver.url, "events": ["api_key.revoked"], "enabled": "on"},
        )
        assert response.status_code == 200 and response["Cache-Control"] == "no-store"
        secret = _secret(response.content.decode())
        endpoint = WebhookEndpoint.objects.get(account=owner.account)
        assert endpoint.secret == secret and endpoint.events == ["api_key.revoked"]
        assert "api_key.revoked" in client.get(f"/portal/webhooks/{endpoint.pk}/").content.decode()
        client.post(
            f"/portal/webhooks/{endpoint.pk}/",
            {"url": receiver.url, "description": "ops", "events": [], "enabled": "on"},
        )
        endpoint.refresh_from_db()
        assert (endpoint.description, endpoint.events, endpoint.enabled) == ("ops", [], True)
        api_key_revoke(key_id=api_key_issue(account=owner.account, name="ci").api_key.key_id)
        deliveries_send_due()
    [request] = receiver.received
    assert signature_verify(secret, request.headers[SIGNATURE_HEADER.lower()], request.body)
    page = client.get("/portal/webhooks/").content.decode()
    assert receiver.url in page and "delivered" in page
    assert secret not in page
    created = AuditEntry.objects.get(action="create", object_type="customers.webhookendpoint")
    assert created.actor == admin.user.email and "secret" not in str(created.after)


def test_bad_addresses_are_refused_on_the_form() -> None:
    client = client_of(account_with_owner())
    for url, says in (("ftp://example.com/x", "https URL"), ("http://10.0.0.1/x", "private")):
        page = client.post("/portal/webhooks/new/", {"url": url}).content.decode()
        assert says in page, page
    assert not WebhookEndpoint.objects.exists()


def test_rotating_and_revealing_the_secret() -> None:
    owner = account_with_owner()
    client = client_of(owner)
    first = _secret(
        client.post("/portal/webhooks/new/", {"url": "http://127.0.0.1:9/h"}).content.decode()
    )
    endpoint = WebhookEndpoint.objects.get()
    rotated = _secret(client.post(f"/portal/webhooks/{endpoint.pk}/rotate/").content.decode())
    assert rotated != first
    endpoint.refresh_from_db()
    assert endpoint.previous_secret == first and endpoint.secret == rotated
    revealed = client.post(f"/portal/webhooks/{endpoint.pk}/secret/")
    assert _secret(revealed.content.decode()) == rotated
    assert client.get(f"/portal/webhooks/{endpoint.pk}/secret/").status_code == 405
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"rotate_secret", "reveal_secret"} <= actions


def test_replaying_a_failed_delivery_and_deleting_the_endpoint() -> None:
    owner = account_with_owner()
    client = client_of(owner)
    with receiver_running() as receiver:
        client.post("/portal/webhooks/new/", {"url": receiver.url, "enabled": "on"})
        api_key_revoke(key_id=api_key_issue(account=owner.account).api_key.key_id)
        delivery = WebhookDelivery.objects.get()
        WebhookDelivery.objects.filter(pk=delivery.pk).update(status="failed", next_attempt_at=None)
        page = client.get("/portal/webhooks/").content.decode()
        assert "failed" in page and f"/portal/webhooks/deliveries/{delivery.pk}/replay/" in page
        assert client.post(f"/portal/webhooks/deliveries/{delivery.pk}/replay/").status_code == 302
        assert deliveries_send_due().delivered == 1
    assert len(receiver.received) == 1
    endpoint = WebhookEndpoint.objects.get()
    assert "Delete" in client.get(f"/portal/webhooks/{endpoint.pk}/delete/").content.decode()
    client.post(f"/portal/webhooks/{endpoint.pk}/delete/")
    assert not WebhookEndpoint.objects.exists() and not WebhookDelivery.objects.exists()


@pytest.mark.parametrize("role", [Member.Role.DEVELOPER, Member.Role.BILLING])
def test_other_roles_are_refused(role: str) -> None:
    owner = account_with_owner()
    client = client_of(member_add(owner.account, role))
    assert client.get("/portal/webhooks/").status_code == 403
    assert client.post("/portal/webhooks/new/", {"url": "http://127.0.0.1:9/h"}).status_code == 403
    assert "/portal/webhooks/" not in client.get("/portal/").content.decode()
    assert not WebhookEndpoint.objects.exists()
