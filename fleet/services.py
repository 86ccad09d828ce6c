"""Every change to the fleet's backends: registration and enabling audited, health probed.

Gateways follow a change within one backend-list refresh.
"""

import urllib.error
import urllib.request

from django.db import transaction
from django.utils import timezone

from audit.services import AnyRequest, audit_change, snapshot
from fleet.models import Backend
from fleet.network_policy import backend_url_validate


def backend_register(
    *,
    name: str,
    base_url: str,
    upstream_model: str,
    public_models: list[str],
    max_concurrent_sequences: int = 256,
    telemetry_url: str = "",
    supports_priority: bool = False,
) -> Backend:
    """Create or update a backend by name (registering twice is harmless).

    Its health goes back to `unknown` (routable) until the next probe: a backend registered
    again has usually just been (re)started. A URL outside the allowed networks is a
    ValidationError (fleet/network_policy.py).
    """
    backend_url_validate(base_url)
    backend_url_validate(telemetry_url)
    backend, _ = Backend.objects.update_or_create(
        name=name,
        defaults={
            "base_url": base_url.rstrip("/"),
            "upstream_model": upstream_model,
            "public_models": public_models,
            "max_concurrent_sequences": max_concurrent_sequences,
            "telemetry_url": telemetry_url,
            "supports_priority": supports_priority,
            "enabled": True,
            "health": Backend.Health.UNKNOWN,
        },
    )
    return backend


def backend_enabled_set(
    *, backend: Backend, enabled: bool, actor: object = None, request: AnyRequest | None = None
) -> Backend:
    """Take a backend out of (or back into) routing."""
    with transaction.atomic():
        locked = Backend.objects.select_for_update().get(pk=backend.pk)
        before = snapshot(locked)
        locked.enabled = enabled
        locked.save(update_fields=["enabled"])
        action = "enable" if enabled else "disable"
        audit_change(actor, action, locked, before, snapshot(locked), request)
    backend.enabled = enabled
    return locked


def backend_health_set(*, backend: Backend, healthy: bool) -> None:
    backend.health = Backend.Health.HEALTHY if healthy else Backend.Health.UNHEALTHY
    backend.health_checked_at = timezone.now()
    backend.save(update_fields=["health", "health_checked_at"])


def backends_probe(*, timeout: float = 2.0) -> dict[str, bool]:
    """Ask every enabled backend's /health and store the verdict the gateways route by."""
    verdicts = {}
    for backend in Backend.objects.filter(enabled=True):
        healthy = _answers_health(backend.base_url + "/health", timeout)
        backend_health_set(backend=backend, healthy=healthy)
        verdicts[backend.name] = healthy
    return verdicts


def _answers_health(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (admin URL)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
