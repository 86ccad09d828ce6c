"""The usage ledger: one row per request that reached a backend (promise P1)."""

from django.contrib.postgres.fields import ArrayField
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
    # The key's project (customers.Project); null only for usage of keys deleted before
    # projects existed.
    project_id = models.BigIntegerField(null=True)
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
    # When the record reached the ledger (the database's clock at the insert; null for records
    # stored before migration 0008): billing bills usage by arrival (docs/billing.md, "Late
    # usage"). A correction of a `gateway_lost` guess keeps the guess's arrival.
    stored_at = models.DateTimeField(
        null=True,
        db_default=models.Func(function="clock_timestamp", output_field=models.DateTimeField()),
    )
    # When a `gateway_lost` guess was replaced by the request's final record (the database's
    # clock, as stored_at); null for a record never corrected. Billing's rollups rebuild the
    # hours of records corrected since their last run.
    revised_at = models.DateTimeField(null=True)
    # Filled by energy attribution; null until then.
    energy_joules = models.FloatField(null=True)
    # The backend's own usage report when the gateway refused it (negative, not a number, out
    # of range): kept for review while the record carries the gateway's count (estimated).
    usage_anomaly = models.JSONField(null=True, blank=True)

    class Meta:
        db_table = "metering_usagerecord"

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.outcome}"


class QuarantinedEvent(models.Model):
    """A usage event the meter could not store (the database refused its data, not for want of
    a connection): kept whole, with the reason, so that one bad event never blocks the others.
    """

    stream_id = models.CharField(max_length=64, unique=True)
    request_id = models.CharField(max_length=64, blank=True)
    fields = models.JSONField()
    error = models.TextField()
    quarantined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["quarantined_at"])]

    def __str__(self) -> str:
        return f"{self.stream_id} {self.request_id}"


class GpuSample(models.Model):
    """One scrape of one GPU's DCGM exporter counters (raw, as reported)."""

    backend = models.CharField(max_length=64)
    gpu_uuid = models.CharField(max_length=64)
    gpu_index = models.PositiveSmallIntegerField()
    scraped_at = models.DateTimeField()
    # DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION: millijoules since the driver or exporter started.
    energy_mj = models.BigIntegerField()
    # DCGM_FI_DEV_POWER_USAGE at the scrape, watts.
    power_w = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["backend", "gpu_uuid", "scraped_at"], name="gpusample_unique"
            )
        ]
        indexes = [models.Index(fields=["backend", "scraped_at"])]

    def __str__(self) -> str:
        return f"{self.backend}/{self.gpu_index} {self.scraped_at:%H:%M:%S}"


class EnergyInterval(models.Model):
    """The energy one backend used between two consecutive scrapes: what attribution splits.

    Written by the telemetry collector; the attribution job fills the last four fields once,
    in the same transaction that adds the interval's shares to the usage records.
    """

    backend = models.CharField(max_length=64)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField()
    # Sum over the backend's GPUs of their counter deltas, counter resets accounted for.
    energy_j = models.FloatField()
    gpus = models.PositiveSmallIntegerField()
    # vLLM counter deltas over the interval; null when the engine's /metrics was not readable.
    prompt_tokens = models.BigIntegerField(null=True)
    generation_tokens = models.BigIntegerField(null=True)
    # What the engine (vLLM) reported of its own work in the interval; null when it does not
    # export it. Calibration times a step and a prefill pass with these (docs/energy.md):
    # engine steps (the count of iteration_tokens_total), and the requests whose prefill time
    # it observed (they finished) with those times' sum (request_prefill_time_seconds).
    iterations = models.BigIntegerField(null=True)
    engine_prefills = models.BigIntegerField(null=True)
    engine_prefill_seconds = models.FloatField(null=True)
    # A counter went backwards inside the interval: energy_j is a lower bound (see docs/energy.md).
    counter_reset = models.BooleanField(default=False)
    idle_j = models.FloatField(null=True)
    attributed_j = models.FloatField(null=True)
    requests = models.PositiveIntegerField(null=True)
    attributed_at = models.DateTimeField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["backend", "started_at"], name="energyinterval_unique")
        ]
        indexes = [
            models.Index(fields=["backend", "ended_at"]),
            models.Index(
                fields=["ended_at"],
                name="energyinterval_pending",
                condition=models.Q(attributed_at__isnull=True),
            ),
            # Billing's rollups find the intervals attributed since their last run.
            models.Index(fields=["attributed_at"], name="energyinterval_attributed"),
        ]

    def __str__(self) -> str:
        return f"{self.backend} {self.started_at:%H:%M:%S}+{self.energy_j:.0f} J"


class EnergyCalibration(models.Model):
    """Coefficients of one backend's energy model, fitted from telemetry or set by staff.

    interval energy ≈ idle_watts * seconds with no request active
                      + prefill_j_per_token * uncached prompt tokens
                      + prefill_j_per_request * requests prefilled
                      + decode power(sequences decoding) * seconds with a sequence decoding
                      + decode_j_per_token * output tokens
    Watts are joules per wall-clock second for the whole backend (all its GPUs); see
    docs/energy.md for the model, how it is fitted and how attribution uses it.
    """

    class Source(models.TextChoices):
        FITTED = "fitted"
        CONFIGURED = "configured"

    backend = models.CharField(max_length=64)
    source = models.CharField(max_length=16, choices=Source.choices)
    fitted_at = models.DateTimeField()
    idle_watts = models.FloatField()
    prefill_j_per_token = models.FloatField()
    # A prefill pass's fixed cost, whatever the prompt's length.
    prefill_j_per_request = models.FloatField(default=0.0)
    # Drawn while sequences decode, shared equally by those decoding at each moment: the
    # power at 1, 2, 4, 8, ... sequences decoding together (metering.attribution.BATCH_KNOTS,
    # up to 256), linear in between and flat after the last value given. It grows with the
    # batch and flattens out as the GPUs near their limit.
    decode_watts = ArrayField(models.FloatField(), size=9)
    decode_j_per_token = models.FloatField()
    # Time to first token after the gateway's queue ≈ ttft_seconds + ttft_seconds_per_token *
    # uncached prompt tokens: where decode starts for answers that were not streamed.
    ttft_seconds = models.FloatField(default=0.0)
    ttft_seconds_per_token = models.FloatField(default=0.0)
    # GPU time of a prefill pass besides its tokens' (ttft_seconds_per_token each).
    prefill_seconds = models.FloatField(default=0.0)
    # A decode step over n sequences lasts decode_step_seconds + n *
    # decode_step_seconds_per_sequence (0: not known): a request's decode time by its output.
    decode_step_seconds = models.FloatField(default=0.0)
    decode_step_seconds_per_sequence = models.FloatField(default=0.0)
    # Intervals the fit used and its coefficient of determination; null when configured.
    intervals = models.PositiveIntegerField(null=True)
    r_squared = models.FloatField(null=True)

    class Meta:
        get_latest_by = "fitted_at"
        indexes = [models.Index(fields=["backend", "-fitted_at"])]

    def __str__(self) -> str:
        return f"{self.backend} {self.source} {self.fitted_at:%Y-%m-%d %H:%M}"
