import uuid
from datetime import date
from typing import Any

import orjson
import pytest
from django.db import connection

from metering.events import FINAL, LOST, record_from_event
from metering.models import UsageRecord
from metering.services import usage_partitions_ensure, usage_records_write
from tests.support.events import usage


def record(**overrides: Any) -> dict[str, Any]:
    fields = {b"kind": FINAL, b"record": orjson.dumps(usage(**overrides))}
    return record_from_event(fields)


@pytest.mark.django_db
def test_writing_a_batch_twice_stores_each_record_once() -> None:
    batch = [record() for _ in range(50)]
    assert usage_records_write(records=batch) == 50
    assert usage_records_write(records=[*batch, record()]) == 1
    assert UsageRecord.objects.count() == 51


@pytest.mark.django_db
def test_a_stored_record_keeps_every_field() -> None:
    original = record(prompt_tokens=123, cached_prompt_tokens=64, reasoning_tokens=7)
    usage_records_write(records=[original])
    stored = UsageRecord.objects.get(request_id=original["request_id"])
    assert (stored.prompt_tokens, stored.cached_prompt_tokens, stored.reasoning_tokens) == (
        123,
        64,
        7,
    )
    assert stored.started_at == original["started_at"]
    assert stored.energy_joules is None


def test_a_lost_request_becomes_an_estimated_record_with_its_last_progress() -> None:
    started = 1_700_000_000.0
    entry = {
        "request_id": str(uuid.uuid4()),
        "account_id": 1,
        "api_key_id": 2,
        "tier": "free",
        "model": "m",
        "backend": "b",
        "endpoint": "chat.completions",
        "streamed": True,
        "started_at": started,
        "prompt_tokens": 40,
        "queue_wait_ms": 0.0,
    }
    lost = record_from_event(
        {b"kind": LOST, b"record": orjson.dumps(entry), b"progress": f"17 {started + 2}".encode()}
    )
    assert lost["outcome"] == "gateway_lost"
    assert lost["tokens_estimated"] is True
    assert (lost["prompt_tokens"], lost["completion_tokens"]) == (40, 17)
    assert lost["latency_ms"] == pytest.approx(2000)


@pytest.mark.django_db
def test_records_land_in_their_month_partition() -> None:
    usage_partitions_ensure(today=date(2031, 1, 15), months_ahead=1)
    usage_records_write(records=[record(started_at=1927584000.0, ended_at=1927584001.0)])
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metering_usagerecord_y2031m01")
        assert cursor.fetchone() == (1,)


@pytest.mark.django_db
def test_a_months_stray_rows_move_into_its_partition_when_it_is_created() -> None:
    stray = record(started_at=1990000000.0, ended_at=1990000001.0)  # 2033-01, no partition yet
    usage_records_write(records=[stray])
    usage_partitions_ensure(today=date(2033, 1, 1), months_ahead=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metering_usagerecord_y2033m01")
        assert cursor.fetchone() == (1,)
    assert UsageRecord.objects.filter(request_id=stray["request_id"]).exists()
