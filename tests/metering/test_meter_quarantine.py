"""Bad data never stops metering: an event the database refuses, that cannot be read, or that
claims more tokens than a request can have, is set aside with its reason, and every other event
is stored and acknowledged; staff release what they judge true into the ledger."""

import logging
import threading
from typing import Any

import orjson
import pytest
import redis
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.urls import reverse
from prometheus_client import REGISTRY

from audit.models import AuditEntry
from metering.events import FINAL, LOST, USAGE_GROUP, USAGE_STREAM
from metering.models import QuarantinedEvent, UsageRecord
from metering.services import quarantined_event_release
from tests.support.meter import (
    ACCOUNT_ID,
    consumers,
    final,
    new_meter,
    put,
    request_id,
    running,
    stored_once,
    usage,
)
from tests.support.waiting import wait_until


def quarantined(stream_id: bytes) -> QuarantinedEvent | None:
    return QuarantinedEvent.objects.filter(stream_id=stream_id.decode()).first()


def pending(client: redis.Redis) -> int:
    summary: Any = client.xpending(USAGE_STREAM, USAGE_GROUP)
    return int(summary["pending"])


def quarantine_count(reason: str) -> float:
    labels = {"reason": reason}
    return REGISTRY.get_sample_value("tf_meter_quarantined_events_total", labels) or 0.0


@pytest.mark.timeout(30)
def test_drain_quarantines_a_negative_count_and_a_non_json_event_and_stores_the_rest(
    live_db: None, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    good = [final() for _ in range(5)]
    negative = final(completion_tokens=-5)
    not_json = {b"kind": FINAL, b"record": b"{not json"}
    counted = (quarantine_count("refused"), quarantine_count("malformed"))
    ids = [
        put(redis_client, fields)
        for fields in [good[0], negative, good[1], good[2], not_json, good[3], good[4]]
    ]
    negative_id, not_json_id = ids[1], ids[4]

    with caplog.at_level(logging.ERROR, logger="metering.consumer"):
        new_meter(redis_client).drain()

    assert stored_once(good)
    assert not UsageRecord.objects.filter(request_id=request_id(negative)).exists()
    bad = quarantined(negative_id)
    assert bad is not None
    assert bad.request_id == request_id(negative)
    assert "metering_usagerecord_completion_tokens_check" in bad.error
    assert bad.fields == {"kind": "final", "record": negative[b"record"].decode()}
    broken = quarantined(not_json_id)
    assert broken is not None
    assert (broken.request_id, broken.fields) == ("", {"kind": "final", "record": "{not json"})
    assert broken.error.startswith("JSONDecodeError")
    assert (quarantine_count("refused"), quarantine_count("malformed")) == (
        counted[0] + 1,
        counted[1] + 1,
    )
    assert any(
        negative_id.decode() in record.getMessage() and request_id(negative) in record.getMessage()
        for record in caplog.records
    )
    assert pending(redis_client) == 0
    assert redis_client.xlen(USAGE_STREAM) == 0


BAD_EVENTS = {
    "a negative token count": (final(completion_tokens=-5), "completion_tokens_check"),
    "a tier longer than its column": (final(tier="x" * 100), "value too long"),
    "an object where a number belongs": (final(prompt_tokens={"n": 1}), "cannot adapt"),
    "a missing column": (
        {b"kind": FINAL, b"record": orjson.dumps({"started_at": 1.0, "ended_at": 2.0})},
        "KeyError",
    ),
    "no record at all": ({b"kind": FINAL}, "KeyError"),
    "a lost request with garbled progress (NUL)": (
        {b"kind": LOST, b"record": orjson.dumps(usage()), b"progress": b"\x00\xff"},
        "ValueError",
    ),
}


def test_the_running_meter_sets_every_kind_of_bad_event_aside_and_stores_the_rest(
    live_db: None, redis_client: redis.Redis
) -> None:
    good = [final() for _ in range(len(BAD_EVENTS) + 1)]
    bad_ids: dict[str, bytes] = {}
    for (case, (fields, _)), before in zip(BAD_EVENTS.items(), good, strict=False):
        put(redis_client, before)
        bad_ids[case] = put(redis_client, fields)
    put(redis_client, good[-1])

    meter = new_meter(redis_client)
    with running(meter):
        wait_until(
            lambda: stored_once(good), timeout=15, what="the good events (a bad one held them)"
        )
        wait_until(lambda: pending(redis_client) == 0, timeout=15, what="no event pending")

    for case, (_, reason) in BAD_EVENTS.items():
        event = quarantined(bad_ids[case])
        assert event is not None, case
        assert reason in event.error, (case, event.error)
    nul = quarantined(bad_ids["a lost request with garbled progress (NUL)"])
    assert nul is not None
    assert nul.fields["progress"] == "\\x00\\xff"
    assert redis_client.xlen(USAGE_STREAM) == 0
    assert meter.name not in consumers(redis_client)


@pytest.mark.timeout(30)
def test_a_final_event_after_its_lost_guess_in_one_batch_leaves_the_final_record(
    live_db: None, redis_client: redis.Redis
) -> None:
    """A gateway that came back settles a request the reaper already recorded as lost; both
    events, and a copy of the final one, can reach the meter in one batch."""
    request = usage(completion_tokens=42)
    started = request["started_at"]
    progress = f"3 {started + 1}".encode()
    put(redis_client, {b"kind": LOST, b"record": orjson.dumps(request), b"progress": progress})
    put(redis_client, {b"kind": FINAL, b"record": orjson.dumps(request)})
    put(redis_client, {b"kind": FINAL, b"record": orjson.dumps(request)})

    new_meter(redis_client).drain()

    stored = UsageRecord.objects.get(request_id=request["request_id"])
    assert (stored.outcome, stored.completion_tokens, stored.tokens_estimated) == ("ok", 42, False)
    assert not QuarantinedEvent.objects.filter(request_id=request["request_id"]).exists()
    assert pending(redis_client) == 0


@pytest.mark.django_db
def test_staff_find_a_quarantined_event_in_the_console_and_cannot_change_it(
    redis_client: redis.Redis,
) -> None:
    negative = final(completion_tokens=-5)
    stream_id = put(redis_client, negative)
    new_meter(redis_client).drain()
    event = QuarantinedEvent.objects.get(stream_id=stream_id.decode())
    staff = Client()
    staff.force_login(User.objects.create_superuser("ops", "ops@example.com", "a passphrase"))

    listed = staff.get(
        reverse("admin:metering_quarantinedevent_changelist"), {"q": request_id(negative)}
    )
    assert listed.status_code == 200
    assert stream_id in listed.content
    assert b"completion_tokens_check" in listed.content
    shown = staff.get(reverse("admin:metering_quarantinedevent_change", args=[event.pk]))
    assert shown.status_code == 200
    assert b'name="_save"' not in shown.content
    assert staff.get(reverse("admin:metering_quarantinedevent_add")).status_code == 403


# Counts no request can have (a buggy or hostile backend): quarantined, released by staff.


@pytest.mark.timeout(30)
def test_counts_beyond_what_a_request_can_have_are_quarantined_and_the_rest_stored(
    live_db: None, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    good = [final() for _ in range(4)]
    long_prompt = final(prompt_tokens=2_500_000, account_id=ACCOUNT_ID + 1)
    long_answer = final(completion_tokens=1_500_000, reasoning_tokens=1_400_000)
    at_the_limits = final(prompt_tokens=2_000_000, completion_tokens=1_048_576)
    counted = quarantine_count("beyond_limits")
    ids = [
        put(redis_client, fields)
        for fields in [good[0], long_prompt, good[1], long_answer, good[2], at_the_limits, good[3]]
    ]

    with caplog.at_level(logging.ERROR, logger="metering.consumer"):
        new_meter(redis_client).drain()

    assert stored_once([*good, at_the_limits])
    for fields in (long_prompt, long_answer):
        assert not UsageRecord.objects.filter(request_id=request_id(fields)).exists()
    prompt_event, answer_event = quarantined(ids[1]), quarantined(ids[3])
    assert prompt_event is not None and answer_event is not None
    assert prompt_event.request_id == request_id(long_prompt)
    assert "prompt_tokens 2,500,000 > 2,000,000" in prompt_event.error
    assert "completion_tokens 1,500,000 > 1,048,576" in answer_event.error
    assert "reasoning_tokens 1,400,000 > 1,048,576" in answer_event.error
    assert answer_event.fields == {"kind": "final", "record": long_answer[b"record"].decode()}
    assert quarantine_count("beyond_limits") == counted + 2
    [line] = [r.getMessage() for r in caplog.records if request_id(long_prompt) in r.getMessage()]
    assert ids[1].decode() in line
    assert f"account {ACCOUNT_ID + 1}" in line
    assert "prompt_tokens 2,500,000 > 2,000,000" in line
    assert pending(redis_client) == 0


def test_the_limits_are_settings(live_db: None, redis_client: redis.Redis, settings: Any) -> None:
    settings.METERING = {**settings.METERING, "MAX_PROMPT_TOKENS": 100}
    small, large = final(prompt_tokens=100), final(prompt_tokens=101)
    large_id = [put(redis_client, fields) for fields in (small, large)][1]

    new_meter(redis_client).drain()

    assert stored_once([small])
    event = quarantined(large_id)
    assert event is not None and "prompt_tokens 101 > 100" in event.error


def staff_client(username: str) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser(username, f"{username}@example.com", "pw"))
    return client


def release(client: Client, *events: QuarantinedEvent) -> Any:
    return client.post(
        reverse("admin:metering_quarantinedevent_changelist"),
        {"action": "release_events", "_selected_action": [event.pk for event in events]},
        follow=True,
    )


@pytest.mark.django_db
def test_staff_release_an_event_into_the_ledger_once_and_it_is_audited(
    redis_client: redis.Redis,
) -> None:
    absurd = final(prompt_tokens=3_000_000, completion_tokens=7)
    negative = final(completion_tokens=-5)
    absurd_id, negative_id = put(redis_client, absurd), put(redis_client, negative)
    new_meter(redis_client).drain()
    event, refused = quarantined(absurd_id), quarantined(negative_id)
    assert event is not None and refused is not None
    staff = staff_client("ops")

    reply = release(staff, event, refused)

    assert reply.status_code == 200
    assert b"1 event(s) stored in the usage ledger" in reply.content
    assert f"Event {negative_id.decode()} was not released: the ledger refuses it".encode() in (
        reply.content
    )
    stored = UsageRecord.objects.get(request_id=request_id(absurd))
    assert (stored.prompt_tokens, stored.completion_tokens) == (3_000_000, 7)
    assert quarantined(absurd_id) is None
    assert quarantined(negative_id) is not None
    entry = AuditEntry.objects.get(object_type="metering.quarantinedevent", object_id=event.pk)
    assert (entry.action, entry.actor, entry.after) == ("release", "ops", None)
    assert entry.before is not None
    assert entry.before["fields"] == {"kind": "final", "record": absurd[b"record"].decode()}

    assert quarantined_event_release(event_id=event.pk, actor="ops") is False
    assert UsageRecord.objects.filter(request_id=request_id(absurd)).count() == 1


@pytest.mark.django_db
def test_staff_who_may_only_view_the_quarantine_cannot_release(redis_client: redis.Redis) -> None:
    stream_id = put(redis_client, final(prompt_tokens=3_000_000))
    new_meter(redis_client).drain()
    event = QuarantinedEvent.objects.get(stream_id=stream_id.decode())
    viewer = User.objects.create_user("viewer", "viewer@example.com", "pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_quarantinedevent"))
    client = Client()
    client.force_login(viewer)

    assert (
        b"release_events"
        not in client.get(reverse("admin:metering_quarantinedevent_changelist")).content
    )
    release(client, event)

    assert quarantined(stream_id) is not None
    assert not UsageRecord.objects.filter(request_id=event.request_id).exists()


@pytest.mark.timeout(30)
def test_two_staff_releasing_one_event_at_once_store_one_record(
    live_db: None, redis_client: redis.Redis
) -> None:
    absurd = final(completion_tokens=2_000_000)
    stream_id = put(redis_client, absurd)
    new_meter(redis_client).drain()
    event = quarantined(stream_id)
    assert event is not None
    start = threading.Barrier(2)
    results: list[bool] = []

    def staff(name: str) -> None:
        start.wait()
        try:
            results.append(quarantined_event_release(event_id=event.pk, actor=name))
        finally:
            connection.close()

    threads = [threading.Thread(target=staff, args=(name,)) for name in ("ann", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    assert sorted(results) == [False, True]
    assert UsageRecord.objects.filter(request_id=request_id(absurd)).count() == 1
    assert quarantined(stream_id) is None
