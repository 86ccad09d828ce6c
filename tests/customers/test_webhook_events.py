"""`api_key.revoked` reaches the account's endpoints whichever way a key is revoked: the
portal, the customer API, the console, a rotation, a project archived, a member removed; and
the console shows deliveries and replays them."""

import json

import pytest
from django.contrib.auth.models import User
from django.test import Client

from audit.models import AuditEntry
from customers.members import member_remove, member_token_issue
from customers.models import Account, ApiKey, Member, WebhookDelivery, WebhookEvent
from customers.services import (
    api_key_issue,
    api_key_revoke,
    api_key_rotate,
    project_archive,
    project_create,
)
from customers.webhook_delivery import SIGNATURE_HEADER, deliveries_send_due, signature_verify
from customers.webhooks import webhook_endpoint_create
from tests.console.api_support import token_client
from tests.customers.receiver import receiver_running
from tests.support.members import account_with_owner, client_of, member_add

pytestmark = pytest.mark.django_db


def _revocations(account: Account) -> list[dict[str, object]]:
    events = WebhookEvent.objects.filter(account=account, type="api_key.revoked")
    return [event.data for event in events.order_by("pk")]


def _key(account: Account, name: str = "k") -> ApiKey:
    return api_key_issue(account=account, name=name).api_key


def test_a_revoked_key_is_told_once_signed() -> None:
    owner = account_with_owner()
    key = _key(owner.account, "ci")
    with receiver_running() as receiver:
        endpoint = webhook_endpoint_create(account=owner.account, url=receiver.url)
        api_key_revoke(key_id=key.key_id)
        api_key_revoke(key_id=key.key_id)  # already revoked: no second event
        deliveries_send_due()
    [request] = receiver.received
    assert signature_verify(
        endpoint.secret, request.headers[SIGNATURE_HEADER.lower()], request.body
    )
    body = json.loads(request.body)
    assert body["type"] == "api_key.revoked" and body["account"] == owner.account_id
    assert body["data"]["key_id"] == key.key_id and body["data"]["name"] == "ci"
    assert body["data"]["reason"] == "revoked"
    assert body["data"]["project"] == key.project_id


def test_every_way_of_revoking_a_key_tells_the_endpoints() -> None:
    owner = account_with_owner()
    account = owner.account
    webhook_endpoint_create(account=account, url="http://127.0.0.1:9/hooks")
    # The portal's revoke button.
    portal_key = _key(account, "portal")
    client_of(owner).post(f"/portal/keys/{portal_key.pk}/revoke/")
    # The customer API.
    token = member_token_issue(member=owner).plaintext
    api_key = _key(account, "api")
    assert token_client(token).post(f"/api/v1/org/keys/{api_key.key_id}/revoke/").status_code == 200
    # The console's action.
    staff = Client()
    staff.force_login(User.objects.create_superuser("root", "root@example.com", "a passphrase"))
    console_key = _key(account, "console")
    staff.post(
        "/admin/customers/apikey/",
        {"action": "revoke_keys", "_selected_action": [console_key.pk]},
    )
    # A rotation, a project archived, a member removed.
    rotated = _key(account, "rotated")
    api_key_rotate(key_id=rotated.key_id)
    project = project_create(account=account, name="gone")
    archived = api_key_issue(account=account, project=project, name="archived").api_key
    project_archive(project=project)
    developer = member_add(
        account, Member.Role.DEVELOPER, [project_create(account=account, name="d")]
    )
    leaving = api_key_issue(
        account=account, project=developer.projects.get(), name="leaving", created_by=developer
    ).api_key
    member_remove(member=developer, actor=owner.user)

    told = {(data["name"], data["reason"]) for data in _revocations(account)}
    assert told == {
        ("portal", "revoked"),
        ("api", "revoked"),
        ("console", "revoked"),
        ("rotated", "rotated"),
        ("archived", "project_archived"),
        ("leaving", "member_removed"),
    }
    assert archived.pk and leaving.pk
    assert WebhookDelivery.objects.filter(endpoint__account=account).count() == 6


def test_the_console_lists_deliveries_and_replays_them() -> None:
    owner = account_with_owner()
    with receiver_running() as receiver:
        receiver.status = 500
        webhook_endpoint_create(account=owner.account, url=receiver.url)
        api_key_revoke(key_id=_key(owner.account).key_id)
        deliveries_send_due()
        delivery = WebhookDelivery.objects.get()
        WebhookDelivery.objects.filter(pk=delivery.pk).update(status="failed", next_attempt_at=None)
        staff = Client()
        user = User.objects.create_superuser("root", "root@example.com", "a passphrase")
        staff.force_login(user)
        page = staff.get("/admin/customers/webhookdelivery/").content.decode()
        assert delivery.event.public_id in page and "failed" in page
        assert (
            staff.get(f"/admin/customers/webhookevent/{delivery.event_id}/change/").status_code
            == 200
        )
        endpoint_page = staff.get(
            f"/admin/customers/webhookendpoint/{delivery.endpoint_id}/change/"
        )
        assert delivery.endpoint.secret not in endpoint_page.content.decode()
        receiver.status = 200
        staff.post(
            "/admin/customers/webhookdelivery/",
            {"action": "replay_deliveries", "_selected_action": [delivery.pk]},
        )
        assert deliveries_send_due().delivered == 1
    assert len(receiver.received) == 2
    replay = AuditEntry.objects.get(action="replay")
    assert replay.actor == "root" and replay.account_id == owner.account_id
