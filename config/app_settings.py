"""The apps' own settings, typed and checked once, when the settings load.

config/settings.py builds each group (`GATEWAY`, `METERING`, `BILLING`, `STRIPE`) from the
environment with `from_env`; every field names its variable, its default and what it allows,
here and nowhere else. A value that is not allowed (a word where a number belongs, a negative
timeout, an unknown GATEWAY_ADMISSION) raises ImproperlyConfigured naming the variable and what
it allows, which manage.py prints as one line, like a missing SECRET_KEY. App code reads
attributes, `settings.GATEWAY.lease_seconds`, with no default of its own.

Tests may still override a group with a dict of its upper-case keys,
`override_settings(GATEWAY={**settings.GATEWAY, "LEASE_SECONDS": 1.0})`: a group unpacks like a
mapping, and such a dict is turned back into the group, and checked, as it is put in place.
"""

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Self, TypeVar

import environ
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

# A value as the environment gives it (text) or as Python code does (a test's override) -> the
# field's value; raises ValueError saying what is allowed.
Check = Callable[[object], Any]
T = TypeVar("T")


def whole(*, minimum: int) -> Callable[[object], int]:
    allowed = f"a whole number of at least {minimum}"

    def check(value: object) -> int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError(allowed) from None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(allowed)
        return value

    return check


def number(*, minimum: float = 0.0, inclusive: bool = True) -> Callable[[object], float]:
    """A finite number of at least (or, not inclusive, greater than) `minimum`."""
    allowed = f"a number {'of at least' if inclusive else 'greater than'} {minimum:g}"

    def check(value: object) -> float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(allowed) from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(allowed)
        value = float(value)
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise ValueError(allowed)
        return value

    return check


_TRUE = ("true", "yes", "y", "on", "ok", "1")
_FALSE = ("false", "no", "n", "off", "0", "")


def flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in (*_TRUE, *_FALSE):
        return value.strip().lower() in _TRUE
    raise ValueError("true or false")


def text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("text")
    return value


def one_of(*choices: str) -> Callable[[object], str]:
    allowed = f"one of {', '.join(choices)}"

    def check(value: object) -> str:
        if value not in choices:
            raise ValueError(allowed)
        return str(value)

    return check


def currency_code(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z]{3}", value):
        raise ValueError("a three-letter currency code in capitals (ISO 4217), such as USD")
    return value


def http_url_or_empty(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"(https?://\S+)?", value):
        raise ValueError("empty or an http(s) URL")
    return value


def postgres_url_or_empty(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"((postgres|postgresql)://\S+)?", value):
        raise ValueError("empty or a postgres:// URL")
    return value


def path(value: object) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise ValueError("a path")
    return Path(value)


def networks(value: object) -> tuple[str, ...]:
    """Comma-separated networks (CIDRs, or single addresses), as ipaddress.ip_network reads
    them: host bits set (10.0.0.1/8) are refused."""
    allowed = "comma-separated networks such as 10.20.0.0/16,fd00::/8"
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ValueError(allowed)
    for item in value:
        try:
            ipaddress.ip_network(item)
        except ValueError as exc:
            raise ValueError(f"{allowed} ({exc})") from None
    return tuple(value)


def setting(variable: str, check: Check, default: object = MISSING) -> Any:
    """A field read from `variable`, its value passed through `check`."""
    metadata = {"variable": variable, "check": check}
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def checked(variable: str, check: Check, value: object) -> Any:
    """`check(value)`, or ImproperlyConfigured naming the variable and what it allows."""
    try:
        return check(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{variable} must be {exc}, not {value!r}") from None


def read(env: environ.Env, variable: str, check: Callable[[object], T], *, default: T) -> T:
    """One plain setting (not in a group): the variable's value checked, else the default."""
    if variable not in env:
        return default
    value: T = checked(variable, check, env.str(variable))
    return value


class _Group:
    """What the groups share: built from the environment, checked, readable as a mapping of
    upper-case keys (for tests' `{**settings.GATEWAY, ...}`)."""

    def __post_init__(self) -> None:
        for f in self._fields():
            value = checked(f.metadata["variable"], f.metadata["check"], getattr(self, f.name))
            object.__setattr__(self, f.name, value)

    @classmethod
    def _fields(cls) -> tuple[Field[Any], ...]:
        return fields(cls)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: environ.Env, **defaults: object) -> Self:
        """The variables set in `env`, and for the others `defaults`, else the fields' own."""
        values: dict[str, Any] = dict(defaults)
        for f in cls._fields():
            if f.metadata["variable"] in env:
                values[f.name] = env.str(f.metadata["variable"])
        return cls(**values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Self:
        """From upper-case keys, as `{**group, "KEY": value}` gives them."""
        names = {f.name.upper(): f.name for f in cls._fields()}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ImproperlyConfigured(f"{cls.__name__} has no {', '.join(unknown)}")
        return cls(**{names[key]: value for key, value in values.items()})

    def keys(self) -> list[str]:
        return [f.name.upper() for f in self._fields()]

    def __getitem__(self, key: str) -> object:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key.lower())


@dataclass(frozen=True, kw_only=True)
class GatewaySettings(_Group):
    """Read once at process start by gateway.app, never at import time."""

    # Largest request body accepted; larger ones get 413 before being read in full.
    max_body_bytes: int = setting("GATEWAY_MAX_BODY_BYTES", whole(minimum=1), 4 * 1024 * 1024)
    # Production refuses a Redis without AOF (in-flight usage would vanish with it) unless this
    # says the loss is accepted (docs/architecture.md, "Redis: what each failure loses").
    allow_volatile_redis: bool = setting("GATEWAY_ALLOW_VOLATILE_REDIS", flag, False)
    # All of a request's header names and values; more is a 431, on every path.
    max_header_bytes: int = setting("GATEWAY_MAX_HEADER_BYTES", whole(minimum=1), 32 * 1024)
    # How long a key lookup is trusted; a revoked key stops working within this many seconds.
    key_cache_seconds: float = setting("GATEWAY_KEY_CACHE_SECONDS", number(), 5.0)
    # While PostgreSQL is unreachable, a key looked up within this many seconds is served from
    # the cache without waiting; past it the key gets a 503 (fails closed).
    key_stale_seconds: float = setting("GATEWAY_KEY_STALE_SECONDS", number(), 300.0)
    # How often the backend list is re-read from PostgreSQL.
    backends_refresh_seconds: float = setting(
        "GATEWAY_BACKENDS_REFRESH_SECONDS", number(inclusive=False), 2.0
    )
    # A backend that fails a connection is skipped for this long by this process.
    backend_eject_seconds: float = setting("GATEWAY_BACKEND_EJECT_SECONDS", number(), 5.0)
    backend_connect_timeout: float = setting(
        "GATEWAY_BACKEND_CONNECT_TIMEOUT", number(inclusive=False), 2.0
    )
    # No byte from the backend for this long fails the request (504, or an error event).
    backend_read_timeout: float = setting(
        "GATEWAY_BACKEND_READ_TIMEOUT", number(inclusive=False), 120.0
    )
    max_attempts: int = setting("GATEWAY_MAX_ATTEMPTS", whole(minimum=1), 3)
    # Redis connections per gateway process; every request makes two short calls.
    redis_max_connections: int = setting("GATEWAY_REDIS_MAX_CONNECTIONS", whole(minimum=1), 64)
    # In-flight lease: a request whose gateway stops renewing it for this long is reaped.
    lease_seconds: float = setting("GATEWAY_LEASE_SECONDS", number(inclusive=False), 60.0)
    reaper_interval_seconds: float = setting(
        "GATEWAY_REAPER_INTERVAL_SECONDS", number(inclusive=False), 5.0
    )
    # How often a gateway renews its requests' leases and reports how far each has streamed
    # (one Redis call per usage shard, not one per chunk): a gateway that dies leaves its
    # requests recorded with the tokens and the time of its last report, so this bounds what
    # goes unbilled.
    progress_seconds: float = setting("GATEWAY_PROGRESS_SECONDS", number(inclusive=False), 1.0)
    # "priority" (tiers in order, fair within a tier) or "fifo" (one line, first come first
    # served), the baseline the overload benchmark compares against.
    admission: str = setting("GATEWAY_ADMISSION", one_of("priority", "fifo"), "priority")
    # Tiers that fail open while Redis is unreachable are served under this per-process cap
    # and metered through a local spool, replayed into PostgreSQL (gateway/spool.py).
    fail_open_concurrency: int = setting("GATEWAY_FAIL_OPEN_CONCURRENCY", whole(minimum=0), 8)
    fail_open_requests_per_minute: int = setting(
        "GATEWAY_FAIL_OPEN_REQUESTS_PER_MINUTE", whole(minimum=0), 600
    )
    # When set, GET /metrics requires `Authorization: Bearer <token>` (Prometheus' bearer_token).
    metrics_token: str = setting("GATEWAY_METRICS_TOKEN", text, "")
    # How often each gateway re-reads the price books in force (spend caps).
    prices_refresh_seconds: float = setting(
        "GATEWAY_PRICES_REFRESH_SECONDS", number(inclusive=False), 5.0
    )
    # The default is under TF_VAR_DIR, which config/settings.py gives. (`setting` is a
    # dataclasses.field, which ruff does not see.)
    spool_dir: Path = setting("GATEWAY_SPOOL_DIR", path)  # noqa: RUF009
    # Networks backends may be registered in although not public (fleet/network_policy.py):
    # the GPU subnet in production; loopback and private ranges for a local instance (its
    # simulators, a GPU box on the LAN). Link-local (cloud metadata) only when named here.
    # The default depends on TF_PROFILE, which config/settings.py gives.
    backend_allowed_networks: tuple[str, ...] = setting(
        "GATEWAY_BACKEND_ALLOWED_NETWORKS", networks
    )


@dataclass(frozen=True, kw_only=True)
class MeteringSettings(_Group):
    batch_size: int = setting("METERING_BATCH_SIZE", whole(minimum=1), 2000)
    # Usage streams (and in-flight journals) the requests are spread over, each on a slot of
    # its own: on a Redis Cluster, one per primary or more, so that metering grows with the
    # primaries. The same on every gateway and meter (metering/events.py, journal_shards).
    shards: int = setting("METERING_SHARDS", whole(minimum=1), 1)
    # Entries unacknowledged this long (a meter consumer died) are claimed by another consumer.
    claim_idle_seconds: float = setting(
        "METERING_CLAIM_IDLE_SECONDS", number(inclusive=False), 30.0
    )
    # Energy (docs/energy.md): how often each backend's DCGM exporter and vLLM /metrics are
    # scraped, and how long one scrape may take.
    telemetry_seconds: float = setting("METERING_TELEMETRY_SECONDS", number(inclusive=False), 5.0)
    telemetry_timeout_seconds: float = setting(
        "METERING_TELEMETRY_TIMEOUT_SECONDS", number(inclusive=False), 2.0
    )
    attribution_seconds: float = setting(
        "METERING_ATTRIBUTION_SECONDS", number(inclusive=False), 30.0
    )
    # An interval is attributed once every request active in it has its usage record, or
    # after this long (a request still running then is left out and the interval says so).
    attribution_max_lag_seconds: float = setting(
        "METERING_ATTRIBUTION_MAX_LAG_SECONDS", number(), 6 * 3600.0
    )
    calibration_seconds: float = setting(
        "METERING_CALIBRATION_SECONDS", number(inclusive=False), 3600.0
    )
    # The most tokens one request can read (prompt, cached) and write (completion, reasoning),
    # whatever the model: the meter quarantines a record that claims more for review, unbilled
    # (docs/architecture.md, "Bad data is not an outage"). Above today's longest context windows
    # (1M) and the gateway's own completion ceiling (gateway.request_schema.MAX_TOKENS_CEILING).
    max_prompt_tokens: int = setting("METERING_MAX_PROMPT_TOKENS", whole(minimum=1), 2_000_000)
    max_completion_tokens: int = setting(
        "METERING_MAX_COMPLETION_TOKENS", whole(minimum=1), 1_048_576
    )


@dataclass(frozen=True, kw_only=True)
class BillingSettings(_Group):
    # A month closes this long after it ends (usage that arrives later is billed on the next
    # close), and margins are rebuilt this far back.
    grace_seconds: float = setting("BILLING_GRACE_SECONDS", number(), 2 * 3600.0)
    # Connections a rebuild of many days of rollups (the first run, a correction) works with
    # at once, a few days each: PostgreSQL runs no INSERT ... SELECT in parallel by itself.
    rebuild_workers: int = setting("BILLING_REBUILD_WORKERS", whole(minimum=1), 2)
    # The currency price books, invoices and spend caps are in unless a row says otherwise.
    currency: str = setting("BILLING_CURRENCY", currency_code, "USD")


@dataclass(frozen=True, kw_only=True)
class StripeSettings(_Group):
    """docs/billing.md, "Stripe". Without an API key nothing is pushed to Stripe."""

    api_key: str = setting("STRIPE_API_KEY", text, "")
    webhook_secret: str = setting("STRIPE_WEBHOOK_SECRET", text, "")
    # Points the official library at a Stripe-compatible test server; empty: api.stripe.com.
    api_base: str = setting("STRIPE_API_BASE", http_url_or_empty, "")


# The settings that hold a group, and the group's class.
GROUPS: dict[str, type[_Group]] = {
    "GATEWAY": GatewaySettings,
    "METERING": MeteringSettings,
    "BILLING": BillingSettings,
    "STRIPE": StripeSettings,
}


def _override_checked(*, setting: str, value: object, enter: bool, **kwargs: object) -> None:
    """A test's override of a group given as a dict becomes the group (and is checked)."""
    group = GROUPS.get(setting)
    if enter and group is not None and isinstance(value, Mapping):
        from django.conf import settings

        setattr(settings, setting, group.from_mapping(value))


setting_changed.connect(_override_checked, dispatch_uid="config.app_settings.override_checked")
