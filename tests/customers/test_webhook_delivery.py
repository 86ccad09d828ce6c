"""Customer webhooks as a customer's receiver sees them: signed, retried with back-off while
the endpoint fails, delivered once it recovers, failed after a day and then replayable, and
never sent twice by concurrent workers.

Time is driven, not slept: each sweep runs at the delivery's `next_attempt_at`.
"""

import itertools
import json
import re
import socket
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from audit.models import AuditEntry
from customers.models import Account, WebhookDelivery, WebhookEndpoint
from customers.webhook_delivery import (
    GIVE_UP_AFTER,
    SIGNATURE_HEADER,
    deliveries_send_due,
    signature_verify,
)
from customers.webhooks import (
    webhook_delivery_replay,
    webhook_emit,
    webhook_endpoint_create,
    webhook_endpoint_rotate_secret,
    webhook_endpoint_update,
)
from tests.customers.receiver import receiver_running
from tests.support.members import account_with_owner

pytestmark = pytest.mark.django_db

FAST = 0.5  # the tests' send timeout, in seconds


def _account() -> Account:
    return account_with_owner().account


def _emit(account: Account, number: int = 1) -> str:
    event = webhook_emit(
        account_id=account.pk, event="credits.balance_low", data={"balance": str(number)}
    )
    return event.public_id


def _delivery() -> WebhookDelivery:
    return WebhookDelivery.objects.select_related("event").get()


def _dead_url() -> str:
    """An address where nothing listens: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks"


def _sweep_until(until: datetime) -> list[datetime]:
    """Run the sweep at each attempt's due time while it falls before `until`."""
    times = []
    while True:
        delivery = _delivery()
        due = delivery.next_attempt_at
        if delivery.status != WebhookDelivery.Status.PENDING or due is None or due >= until:
            return times
        deliveries_send_due(now=due, timeout=FAST)
        times.append(due)


def test_an_event_arrives_signed_as_documented() -> None:
    account = _account()
    with receiver_running() as receiver:
        endpoint = webhook_endpoint_create(account=account, url=receiver.url, actor="test")
        event_id = _emit(account)
        sweep = deliveries_send_due()
        assert (sweep.delivered, sweep.retrying, sweep.failed) == (1, 0, 0)
    [request] = receiver.received
    body = json.loads(request.body)
    assert body["id"] == event_id and body["type"] == "credits.balance_low"
    assert body["account"] == account.pk and body["data"] == {"balance": "1"}
    assert request.headers["content-type"] == "application/json"
    header = request.headers[SIGNATURE_HEADER.lower()]
    assert signature_verify(endpoint.secret, header, request.body)
    assert not signature_verify(endpoint.secret, header, request.body.replace(b"1", b"2"))
    assert not signature_verify("whsec_" + "x" * 43, header, request.body)
    signed_at = int(header.split(",")[0].removeprefix("t="))
    assert not signature_verify(endpoint.secret, header, request.body, now=signed_at + 301)
    assert signature_verify(endpoint.secret, header, request.body, now=signed_at + 299)
    delivery = _delivery()
    assert delivery.status == "delivered" and delivery.attempts == 1
    assert delivery.last_status_code == 200 and delivery.delivered_at is not None
    assert deliveries_send_due().delivered == 0  # delivered once


def test_an_endpoint_failing_for_an_hour_gets_the_event_once_it_recovers() -> None:
    """500s, then timeouts, then refused connections for an hour; then it answers 200."""
    account = _account()
    with receiver_running() as receiver:
        endpoint = webhook_endpoint_create(account=account, url=receiver.url, actor="test")
        _emit(account)
        start = _delivery().event.created_at
        receiver.status = 500
        errors = _sweep_until(start + timedelta(minutes=10))
        receiver.status, receiver.delay = 200, FAST * 2
        timeouts = _sweep_until(start + timedelta(minutes=20))
        receiver.delay = 0
        webhook_endpoint_update(endpoint=endpoint, data={"url": _dead_url()}, actor="test")
        refused = _sweep_until(start + timedelta(hours=1))
        assert errors and timeouts and refused
        assert _delivery().last_error.startswith("NewConnectionError")
        webhook_endpoint_update(endpoint=endpoint, data={"url": receiver.url}, actor="test")
        sent_before = len(receiver.received)
        due = _delivery().next_attempt_at
        assert due is not None and due > start + timedelta(hours=1)
        assert deliveries_send_due(now=due, timeout=FAST).delivered == 1
        assert deliveries_send_due(now=due + timedelta(days=2)).delivered == 0
    delivery = _delivery()
    attempts = len(errors) + len(timeouts) + len(refused) + 1
    assert delivery.status == "delivered" and delivery.attempts == attempts
    assert len(receiver.received) == sent_before + 1
    # Each wait at least doubles (jitter takes off at most a fifth) up to the hour.
    times = [*errors, *timeouts, *refused, due]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 30 * 0.8 and all(b > a for a, b in itertools.pairwise(gaps))
    ids = {json.loads(r.body)["id"] for r in receiver.received}
    assert len(ids) == 1  # every attempt carried the same event


def test_after_a_day_of_failures_the_delivery_fails_and_a_replay_delivers_it() -> None:
    account = _account()
    with receiver_running() as receiver:
        webhook_endpoint_create(account=account, url=receiver.url, actor="test")
        _emit(account)
        receiver.status = 503
        created = _delivery().event.created_at
        times = _sweep_until(created + GIVE_UP_AFTER + timedelta(days=1))
        delivery = _delivery()
        assert delivery.status == "failed" and delivery.next_attempt_at is None
        assert times[-1] == created + GIVE_UP_AFTER  # the last try is at the day's end
        assert delivery.attempts == len(times) == len(receiver.received)
        assert max(b - a for a, b in itertools.pairwise(times)) <= timedelta(hours=1)
        assert delivery.last_status_code == 503 and delivery.last_error.startswith("HTTP 503")
        receiver.status = 200
        webhook_delivery_replay(delivery=delivery, actor="test")
        assert deliveries_send_due().delivered == 1
    assert _delivery().status == "delivered" and _delivery().attempts == len(times) + 1
    replay = AuditEntry.objects.get(action="replay")
    assert replay.account_id == account.pk and replay.before["status"] == "failed"


def test_redirects_are_not_followed() -> None:
    account = _account()
    with receiver_running() as receiver, receiver_running("/elsewhere") as elsewhere:
        receiver.status, receiver.location = 302, elsewhere.url
        webhook_endpoint_create(account=account, url=receiver.url, actor="test")
        _emit(account)
        assert deliveries_send_due().retrying == 1
    assert len(receiver.received) == 1 and not elsewhere.received
    assert _delivery().last_status_code == 302


def test_a_rotated_secret_signs_beside_the_new_one_for_a_day() -> None:
    account = _account()
    with receiver_running() as receiver:
        endpoint = webhook_endpoint_create(account=account, url=receiver.url, actor="test")
        old = endpoint.secret
        rotated = webhook_endpoint_rotate_secret(endpoint=endpoint, actor="test")
        assert rotated.secret != old and rotated.secret.startswith("whsec_")
        assert len(rotated.secret) == len("whsec_") + 43
        _emit(account, 1)
        deliveries_send_due()
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
            previous_secret_expires_at=timezone.now() - timedelta(seconds=1)
        )
        _emit(account, 2)
        deliveries_send_due()
    first, second = receiver.received
    for request, old_verifies in ((first, True), (second, False)):
        header = request.headers[SIGNATURE_HEADER.lower()]
        assert signature_verify(rotated.secret, header, request.body)
        assert signature_verify(old, header, request.body) is old_verifies
    assert "secret" not in json.dumps(AuditEntry.objects.get(action="rotate_secret").after)


def test_events_go_only_to_the_endpoints_that_want_them() -> None:
    account = _account()
    with receiver_running() as all_events, receiver_running() as keys_only:
        webhook_endpoint_create(account=account, url=all_events.url, actor="test")
        webhook_endpoint_create(
            account=account, url=keys_only.url, events=["api_key.revoked"], actor="test"
        )
        other = _account()
        webhook_endpoint_create(account=other, url=keys_only.url, actor="test")
        _emit(account)
        assert deliveries_send_due().delivered == 1
    assert len(all_events.received) == 1 and not keys_only.received


def test_a_disabled_endpoint_is_not_sent_to() -> None:
    account = _account()
    with receiver_running() as receiver:
        endpoint = webhook_endpoint_create(account=account, url=receiver.url, actor="test")
        _emit(account)
        webhook_endpoint_update(endpoint=endpoint, data={"enabled": False}, actor="test")
        assert deliveries_send_due().retrying == 1
        assert _delivery().last_error == "the endpoint is disabled"
        assert not receiver.received


@pytest.mark.django_db(transaction=True)
def test_concurrent_sweeps_send_each_delivery_once() -> None:
    account = _account()
    with receiver_running() as receiver:
        receiver.delay = 0.02
        webhook_endpoint_create(account=account, url=receiver.url, actor="test")
        emitted = {_emit(account, n) for n in range(30)}
        start = threading.Barrier(3)
        counts: list[int] = []

        def sweep() -> None:
            start.wait()
            try:
                while (done := deliveries_send_due(limit=4).delivered) > 0:
                    counts.append(done)
            finally:
                connection.close()

        threads = [threading.Thread(target=sweep) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    sent = [json.loads(r.body)["id"] for r in receiver.received]
    assert sorted(sent) == sorted(emitted)  # each once, none twice
    assert sum(counts) == 30
    assert set(WebhookDelivery.objects.values_list("status", "attempts")) == {("delivered", 1)}


def test_a_slow_endpoint_costs_a_sweep_at_most_the_timeout() -> None:
    account = _account()
    with receiver_running() as receiver:
        receiver.delay = 5
        webhook_endpoint_create(account=account, url=receiver.url, actor="test")
        _emit(account)
        began = time.monotonic()
        assert deliveries_send_due(timeout=FAST).retrying == 1
        assert time.monotonic() - began < FAST + 1
        assert _delivery().last_error.startswith("timed out")
        receiver.delay = 0


def test_the_address_policy() -> None:
    account = _account()
    from customers.webhooks import WebhookError

    ok = webhook_endpoint_create(account=account, url="http://127.0.0.1:9/local", actor="test")
    assert ok.pk
    with override_settings(LOCAL=False):
        for url, says in (
            ("http://127.0.0.1:9/x", "loopback"),
            ("https://10.1.2.3/x", "private"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("https://[::1]/x", "loopback"),
            ("http://8.8.8.8/x", "must be https"),
            ("ftp://8.8.8.8/x", "https URL"),
            ("https://user:pw@8.8.8.8/x", "user name"),
            ("https://no-such-host.invalid/x", "does not resolve"),
        ):
            with pytest.raises(WebhookError, match=says):
                webhook_endpoint_create(account=account, url=url, actor="test")
        assert webhook_endpoint_create(account=account, url="https://8.8.8.8/x", actor="test")
        # An address that became private after it was registered is not sent to.
        WebhookEndpoint.objects.filter(pk=ok.pk).update(url="https://10.1.2.3/x")
        WebhookEndpoint.objects.exclude(pk=ok.pk).update(enabled=False)
        _emit(account)
        deliveries_send_due(timeout=FAST)
        assert _delivery().last_error.startswith("refused: 10.1.2.3 is 10.1.2.3")
    with pytest.raises(WebhookError, match="Unknown event type"):
        webhook_endpoint_create(account=account, url=ok.url, events=["nope"], actor="test")


def test_an_event_with_no_endpoint_makes_no_delivery() -> None:
    account = _account()
    _emit(account)
    assert not WebhookDelivery.objects.exists()


def test_the_documented_receiver_verifies_real_deliveries() -> None:
    """docs/portal.md's snippet, run as a customer would run it."""
    docs = (Path(__file__).parents[2] / "docs" / "portal.md").read_text()
    snippet = docs.split("## Webhooks", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)  # noqa: S102 (our own documentation)
    verify = namespace["verify"]
    account = _account()
    with receiver_running() as receiver:
        endpoint = webhook_endpoint_create(account=account, url=receiver.url, actor="test")
        _emit(account)
        deliveries_send_due()
    [request] = receiver.received
    header = request.headers[SIGNATURE_HEADER.lower()]
    assert verify(endpoint.secret, header, request.body)
    assert not verify(endpoint.secret, header, request.body + b" ")
    stale = re.sub(r"t=\d+", lambda m: f"t={int(m.group()[2:]) - 301}", header)
    assert not verify(endpoint.secret, stale, request.body)
