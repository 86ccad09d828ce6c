"""Where calls go: the inference backends of the fleet."""

from django.contrib.postgres.fields import ArrayField
from django.db import models

from fleet.network_policy import backend_url_validate


class Backend(models.Model):
    """An OpenAI-compatible inference engine (vLLM, SGLang, TGI, NIM, Dynamo, the simulator)."""

    class Health(models.TextChoices):
        UNKNOWN = "unknown"
        HEALTHY = "healthy"
        UNHEALTHY = "unhealthy"

    name = models.SlugField(max_length=64, unique=True)
    base_url = models.URLField(
        help_text="Root URL, without /v1, e.g. http://10.0.0.5:8000",
        validators=[backend_url_validate],
    )
    # The model name the engine knows; clients use the public names.
    upstream_model = models.CharField(max_length=200)
    public_models = ArrayField(models.CharField(max_length=128))
    max_concurrent_sequences = models.PositiveIntegerField(default=256)
    # vLLM with --scheduling-policy priority (and the simulator) take a request `priority`.
    supports_priority = models.BooleanField(default=False)
    telemetry_url = models.URLField(
        blank=True, help_text="DCGM exporter /metrics URL", validators=[backend_url_validate]
    )
    enabled = models.BooleanField(default=True)
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.UNKNOWN)
    health_checked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name
