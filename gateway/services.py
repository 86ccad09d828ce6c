"""Writes to the gateway's tables: tiers, accounts, keys, backends. Used by commands and admin."""

import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from gateway.keys import key_generate
from gateway.models import Account, ApiKey, Backend, Tier
from gateway.network_policy import backend_url_validate

# The three tiers the product sells, as created on a fresh install. Staff edit the rows after.
DEFAULT_TIERS = (
    {
        "slug": "premium",
        "name": "Premium",
        "priority": 0,
        "requests_per_minute": 6000,
        "tokens_per_minute": 2_000_000,
        "max_concurrent_requests": 256,
        "max_tokens_per_request": 32768,
        "queue_timeout_seconds": 60.0,
    },
    {
        "slug": "interactive",
        "name": "Interactive",
        "priority": 1,
        "requests_per_minute": 600,
        "tokens_per_minute": 400_000,
        "max_concurrent_requests": 64,
        "max_tokens_per_request": 8192,
        "queue_timeout_seconds": 10.0,
    },
    {
        "slug": "free",
        "name": "Free",
        "priority": 2,
        "requests_per_minute": 20,
        "tokens_per_minute": 20_000,
        "tokens_per_day": 200_000,
        "max_concurrent_requests": 4,
        "max_tokens_per_request": 1024,
        "queue_timeout_seconds": 2.0,
        "queue_depth": 100,
        "when_redis_down": "open",
    },
)


def tiers_ensure_defaults() -> list[Tier]:
    """Create the default tiers that do not exist yet; never overwrites staff edits."""
    return [
        Tier.objects.get_or_create(slug=spec["slug"], defaults=spec)[0] for spec in DEFAULT_TIERS
    ]


def account_create(*, name: str, tier_slug: str) -> Account:
    tier = Tier.objects.get(slug=tier_slug)
    return Account.objects.create(name=name, tier=tier)


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    # Shown once to the caller; not stored anywhere.
    plaintext: str


def api_key_issue(
    *, account: Account, name: str = "", expires_at: datetime | None = None
) -> IssuedKey:
    new = key_generate()
    api_key = ApiKey.objects.create(
        account=account,
        name=name,
        key_id=new.key_id,
        secret_hash=new.secret_hash,
        expires_at=expires_at,
    )
    return IssuedKey(api_key=api_key, plaintext=new.plaintext)


def api_key_revoke(*, key_id: str) -> ApiKey:
    """Revoke a key. Gateways stop accepting it within GATEWAY_KEY_CACHE_SECONDS."""
    with transaction.atomic():
        api_key = ApiKey.objects.select_for_update().get(key_id=key_id)
        if api_key.revoked_at is None:
            api_key.revoked_at = timezone.now()
            api_key.save(update_fields=["revoked_at"])
    return api_key


def api_key_rotate(*, key_id: str) -> IssuedKey:
    """Replace a key: a new key for the same account and name, the old one revoked at once."""
    with transaction.atomic():
        old = api_key_revoke(key_id=key_id)
        return api_key_issue(account=old.account, name=old.name, expires_at=old.expires_at)


def account_status_set(*, account: Account, status: str) -> Account:
    """Suspend or reactivate an account; gateways apply it within GATEWAY_KEY_CACHE_SECONDS."""
    if status not in Account.Status.values:
        raise ValueError(f"unknown account status {status!r}")
    account.status = status
    account.save(update_fields=["status"])
    return account


def backend_enabled_set(*, backend: Backend, enabled: bool) -> Backend:
    """Take a backend out of (or back into) routing; gateways follow within a refresh."""
    backend.enabled = enabled
    backend.save(update_fields=["enabled"])
    return backend


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
    ValidationError (gateway/network_policy.py).
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


# What `tf up` sets up so that a fresh install can be tried at once: accounts (name, tier) and
# the model that the simulated backends serve.
DEMO_ACCOUNTS = (
    ("acme-research", "premium"),
    ("northwind-apps", "interactive"),
    ("hobbyist", "free"),
)
DEMO_MODEL = "llama-3.1-8b-instruct"
DEMO_KEY_NAME = "tf-up"


@dataclass(frozen=True)
class DemoKey:
    account: str
    tier: str
    # Shown once to the caller; not stored anywhere.
    plaintext: str


def demo_seed(*, backend_urls: dict[str, str]) -> list[DemoKey]:
    """Default tiers, demo accounts and backends, and a new key per demo account. Re-runnable.

    Keys are stored only as hashes, so handing one out means issuing a new one; the demo
    account's earlier demo keys are revoked so that live keys nobody holds do not pile up.
    """
    tiers_ensure_defaults()
    with transaction.atomic():
        for name, url in backend_urls.items():
            backend_register(
                name=name,
                base_url=url,
                upstream_model=DEMO_MODEL,
                public_models=[DEMO_MODEL],
                telemetry_url=f"{url.rstrip('/')}/dcgm/metrics",
                supports_priority=True,
            )
        return [_demo_key_reissue(name=name, tier_slug=tier) for name, tier in DEMO_ACCOUNTS]


def _demo_key_reissue(*, name: str, tier_slug: str) -> DemoKey:
    account = Account.objects.filter(name=name).first()
    if account is None:
        account = account_create(name=name, tier_slug=tier_slug)
    earlier = ApiKey.objects.filter(account=account, name=DEMO_KEY_NAME, revoked_at__isnull=True)
    for key_id in earlier.values_list("key_id", flat=True):
        api_key_revoke(key_id=key_id)
    issued = api_key_issue(account=account, name=DEMO_KEY_NAME)
    return DemoKey(account=account.name, tier=account.tier.slug, plaintext=issued.plaintext)
