"""/api/v1/org/webhooks/ and /api/v1/org/webhook-deliveries/: an owner or admin manages the
account's endpoints and reads and replays deliveries with a member token."""

import pytest

from customers.models import WebhookDelivery
from customers.services import api_key_issue, api_key_revoke
from customers.webhook_delivery import SIGNATURE_HEADER, deliveries_send_due, signature_verify
from tests.console.api_support import assert_error
from tests.console.org_support import org_create
from tests.customers.receiver import receiver_running

pytestmark = pytest.mark.django_db


def test_an_admin_runs_an_endpoint_through_the_api() -> None:
    org = org_create()
    client = org.client("admin")
    with receiver_running() as receiver:
        created = client.post(
            "/api/v1/org/webhooks/",
            {"url": receiver.url, "events": ["api_key.revoked"], "description": "ops"},
            format="json",
        )
        assert created.status_code == 201, created.content
        body = created.json()
        secret = body["secret"]
        assert secret.startswith("whsec_") and body["events"] == ["api_key.revoked"]
        listed = client.get("/api/v1/org/webhooks/").json()["results"]
        assert [e["id"] for e in listed] == [body["id"]] and "secret" not in listed[0]
        url = f"/api/v1/org/webhooks/{body['id']}/"
        assert client.patch(url, {"enabled": False}, format="json").json()["enabled"] is False
        client.patch(url, {"enabled": True}, format="json")
        rotated = client.post(url + "rotate-secret/").json()
        assert rotated["secret"] != secret and rotated["previous_secret_expires_at"]
        assert client.post(url + "reveal-secret/").json() == {"secret": rotated["secret"]}
        receiver.status = 500
        key = api_key_issue(account=org.tenant.account, name="ci").api_key
        api_key_revoke(key_id=key.key_id)
        deliveries_send_due()
        [delivery] = client.get(f"/api/v1/org/webhook-deliveries/?endpoint={body['id']}").json()[
            "results"
        ]
        assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
            "pending",
            1,
            500,
        )
        receiver.status = 200
        replayed = client.post(f"/api/v1/org/webhook-deliveries/{delivery['id']}/replay/")
        assert replayed.status_code == 200
        assert deliveries_send_due().delivered == 1
    last = receiver.received[-1]
    header = last.headers[SIGNATURE_HEADER.lower()]
    assert signature_verify(rotated["secret"], header, last.body)
    assert signature_verify(secret, header, last.body)  # the previous one, for a day
    assert client.delete(url).status_code == 204
    assert not WebhookDelivery.objects.exists()


def test_mistakes_are_400s_and_other_roles_403s() -> None:
    org = org_create()
    client = org.client("owner")
    for body, field in (
        ({"url": "http://10.0.0.1/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "http://127.0.0.1:9/x", "events": ["nope"]}, "events"),
        ({}, "url"),
    ):
        error = assert_error(client.post("/api/v1/org/webhooks/", body, format="json"), 400)
        assert field in str(error), error
    assert_error(client.get("/api/v1/org/webhook-deliveries/?status=lost"), 400)
    assert_error(client.get("/api/v1/org/webhook-deliveries/?endpoint=x"), 400)
    for role in ("developer", "billing"):
        assert_error(org.client(role).get("/api/v1/org/webhooks/"), 403, "role_required")
