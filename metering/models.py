"""The usage ledger: one row per request that reached a backend (promise P1)."""

from django.db import models


class UsageRecord(models.Model):
    """One request's usage. Append-only; written only by the meter consumer.

    The table is partitioned by month on `started_at` (see migration 0001), so in PostgreSQL
    the primary key is (request_id, started_at). The gateway fixes both values when the request
    starts, so a replayed or re-delivered record always collides with the first copy.
    Account, key and backend are plain ids, not foreign keys: the ledger outlives what it names
    and must accept writes without touching other tables.
    """

    class Outcome(models.TextChoices):
        OK = "ok"
        CLIENT_DISCONNECTED = "client_disconnected"
        BACKEND_ERROR = "backend_error"
        REJECTED = "rejected"
        # The gateway died mid-request; the reaper recorded what its lease knew.
        GATEWAY_LOST = "gateway_lost"

    request_id = models.UUIDField(primary_key=True)
    account_id = models.BigIntegerField()
    api_key_id = models.BigIntegerField()
    tier = models.CharField(max_length=32)
    model = models.CharField(max_length=128)
    backend = models.CharField(max_length=64)
    endpoint = models.CharField(max_length=32)
    prompt_tokens = models.PositiveIntegerField(default=0)
    cached_prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    # True when the backend did not report usage and the counts were derived by the gateway.
    tokens_estimated = models.BooleanField(default=False)
    queue_wait_ms = models.FloatField(default=0)
    ttft_ms = models.FloatField(null=True)
    latency_ms = models.FloatField()
    status_code = models.PositiveSmallIntegerField()
    outcome = models.CharField(max_length=24, choices=Outcome.choices)
    streamed = models.BooleanField()
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField()
    # Filled by energy attribution; null until then.
    energy_joules = models.FloatField(null=True)

    class Meta:
        db_table = "metering_usagerecord"

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.outcome}"
